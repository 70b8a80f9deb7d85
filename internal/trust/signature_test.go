package trust

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/testutil"
)

var testBlob = []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef  banger-v1.2.3-linux-amd64.tar.gz\n")

func TestOpenSSLSignedBlobVerifies(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	sig := k.Sign(t, testBlob)
	if err := Verify(testBlob, sig, k.PubPEM, "blob"); err != nil {
		t.Fatalf("openssl-signed blob refused: %v", err)
	}
	// cosign and `base64` without -w0 end the file with a newline.
	if err := Verify(testBlob, append(append([]byte{}, sig...), '\n'), k.PubPEM, "blob"); err != nil {
		t.Fatalf("signature with trailing newline refused: %v", err)
	}
}

func TestOneChangedByteRefused(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	sig := k.Sign(t, testBlob)
	for _, i := range []int{0, len(testBlob) / 2, len(testBlob) - 1} {
		tampered := append([]byte{}, testBlob...)
		tampered[i] ^= 0x01
		err := Verify(tampered, sig, k.PubPEM, "blob")
		if !errors.Is(err, ErrBadSignature) {
			t.Fatalf("byte %d changed: err = %v, want ErrBadSignature", i, err)
		}
		if !strings.Contains(err.Error(), "does not verify with the release key") {
			t.Errorf("message %q", err)
		}
	}
}

func TestSignatureByAnotherKeyRefused(t *testing.T) {
	signer, other := testutil.NewOpenSSLKey(t, "prime256v1"), testutil.NewOpenSSLKey(t, "prime256v1")
	sig := signer.Sign(t, testBlob)
	if err := Verify(testBlob, sig, other.PubPEM, "blob"); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("err = %v, want ErrBadSignature", err)
	}
}

func TestMalformedSignatureRefused(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	good := k.Sign(t, testBlob)
	der, err := base64.StdEncoding.DecodeString(string(good))
	if err != nil {
		t.Fatal(err)
	}
	b64 := func(b []byte) []byte { return []byte(base64.StdEncoding.EncodeToString(b)) }
	cases := map[string][]byte{
		"empty":            {},
		"whitespace":       []byte(" \n"),
		"not base64":       []byte("!!!not base64!!!"),
		"base64 url alpha": []byte(strings.NewReplacer("+", "-", "/", "_").Replace(string(good)) + "-_"),
		"truncated base64": good[:len(good)-3],
		"truncated DER":    b64(der[:len(der)-4]),
		"DER plus garbage": b64(append(append([]byte{}, der...), 0x00, 0x01)),
		"raw DER":          der,
		"random bytes":     b64([]byte("this is not an ASN.1 sequence at all")),
		"zero r and s":     b64([]byte{0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00}),
	}
	for name, sig := range cases {
		t.Run(name, func(t *testing.T) {
			err := Verify(testBlob, sig, k.PubPEM, "blob")
			if !errors.Is(err, ErrMalformedSignature) {
				t.Fatalf("err = %v, want ErrMalformedSignature", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}

func TestGoSignedOpenSSLVerifies(t *testing.T) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(testBlob)
	der, err := ecdsa.SignASN1(rand.Reader, priv, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	dir := t.TempDir()
	for name, data := range map[string][]byte{"pub.pem": pubPEM, "sig.der": der, "blob": testBlob} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := testutil.OpenSSL(t, "dgst", "-sha256", "-verify", filepath.Join(dir, "pub.pem"),
		"-signature", filepath.Join(dir, "sig.der"), filepath.Join(dir, "blob"))
	if strings.TrimSpace(string(out)) != "Verified OK" {
		t.Fatalf("openssl says %q", out)
	}
	// And the Go verifier agrees with itself on the same bytes.
	if err := Verify(testBlob, []byte(base64.StdEncoding.EncodeToString(der)), pubPEM, "blob"); err != nil {
		t.Fatal(err)
	}
	// openssl must refuse the Go signature over a changed blob: the pin works
	// both ways.
	tampered := append([]byte{}, testBlob...)
	tampered[0] ^= 1
	if err := os.WriteFile(filepath.Join(dir, "blob"), tampered, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("openssl", "dgst", "-sha256", "-verify", filepath.Join(dir, "pub.pem"),
		"-signature", filepath.Join(dir, "sig.der"), filepath.Join(dir, "blob"))
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("openssl verified a tampered blob: %s", out)
	}
}

// TestEmbeddedKeyPlaceholderRefused pins the placeholder handling: while the
// committed release-key.pub carries the marker line, every verification with
// the embedded key is refused with "release key not configured".
func TestEmbeddedKeyPlaceholderRefused(t *testing.T) {
	embedded := ReleasePublicKey()
	if !IsPlaceholderKey(embedded) {
		// A real key has been committed: it must be a usable P-256 key.
		if err := CheckKey(embedded); err != nil {
			t.Fatalf("committed release key is not usable: %v", err)
		}
		t.Skip("a real release key is committed; placeholder refusal is covered by TestPlaceholderKeyRefused")
	}
	if !strings.HasPrefix(string(embedded), PlaceholderMarker+"\n") {
		t.Errorf("placeholder file should start with the marker line %q", PlaceholderMarker)
	}
	err := CheckKey(embedded)
	if !errors.Is(err, ErrKeyNotConfigured) || !strings.Contains(err.Error(), "release key not configured") {
		t.Fatalf("CheckKey(embedded) = %v, want release key not configured", err)
	}
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	sig := k.Sign(t, testBlob)
	err = Verify(testBlob, sig, embedded, "blob")
	if !errors.Is(err, ErrKeyNotConfigured) || !strings.Contains(err.Error(), "release key not configured") {
		t.Fatalf("Verify with the placeholder = %v, want release key not configured", err)
	}
	if _, err := KeyFingerprint(embedded); !errors.Is(err, ErrKeyNotConfigured) {
		t.Fatalf("KeyFingerprint(placeholder) = %v", err)
	}
}

func TestPlaceholderKeyRefused(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	sig := k.Sign(t, testBlob)
	// The marker wins even when a real, matching key follows it.
	marked := append([]byte(PlaceholderMarker+"\n"), k.PubPEM...)
	if err := Verify(testBlob, sig, marked, "blob"); !errors.Is(err, ErrKeyNotConfigured) {
		t.Fatalf("marked key: err = %v, want ErrKeyNotConfigured", err)
	}
	if err := Verify(testBlob, sig, []byte("  \n"), "blob"); !errors.Is(err, ErrKeyNotConfigured) {
		t.Fatalf("empty key: err = %v, want ErrKeyNotConfigured", err)
	}
}

func TestNonP256KeysRefused(t *testing.T) {
	p384 := testutil.NewOpenSSLKey(t, "secp384r1")
	p256 := testutil.NewOpenSSLKey(t, "prime256v1")
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaDER, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaDER})
	privPEM, err := os.ReadFile(p256.Priv)
	if err != nil {
		t.Fatal(err)
	}
	sig := p256.Sign(t, testBlob)
	cases := map[string][]byte{
		"P-384":            p384.PubPEM,
		"RSA":              rsaPEM,
		"private key":      privPEM,
		"not PEM":          []byte("hello"),
		"broken PEM":       []byte("-----BEGIN PUBLIC KEY-----\nAAAA\n"),
		"bad DER":          pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1, 2, 3}}),
		"two blocks":       append(append([]byte{}, p256.PubPEM...), p256.PubPEM...),
		"text before PEM":  append([]byte("note\n"), p256.PubPEM...),
		"wrong block type": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rsaDER}),
	}
	for name, key := range cases {
		t.Run(name, func(t *testing.T) {
			err := Verify(testBlob, sig, key, "blob")
			if !errors.Is(err, ErrBadKey) {
				t.Fatalf("err = %v, want ErrBadKey", err)
			}
		})
	}
	fp, err := KeyFingerprint(p256.PubPEM)
	if err != nil || !strings.HasPrefix(fp, "sha256:") || len(fp) != len("sha256:")+16 {
		t.Fatalf("KeyFingerprint = %q, %v", fp, err)
	}
}
