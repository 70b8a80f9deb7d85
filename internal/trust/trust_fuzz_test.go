package trust

// The fuzz target for the signature verifier: every signature the
// self-updater, the catalog client and the release builder accept goes
// through Verify. scripts/fuzz.sh lists it.

import (
	"bytes"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"math/big"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/testutil"
)

const fzHexA = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// fzOneLine fails unless err's message is a single line: a hostile server
// must not be able to forge extra lines in what the user sees.
func fzOneLine(t *testing.T, err error) {
	t.Helper()
	if strings.ContainsAny(err.Error(), "\n\r") {
		t.Fatalf("error is not one line: %q", err.Error())
	}
}

// FuzzVerifyBlobSignature: with a real key, Verify never panics and
// refuses only with ErrMalformedSignature or ErrBadSignature, in one line. A signature it accepts is over one of the blobs really signed
// here (openssl-made, so an independent implementation), is canonical strict
// base64 of canonical DER with positive r and s (no second encoding of the
// same signature passes), and stops verifying when the blob changes by one
// byte. The embedded key, while it is the placeholder, refuses everything.
func FuzzVerifyBlobSignature(f *testing.F) {
	k := testutil.NewOpenSSLKey(f, "prime256v1")
	signed := map[string]bool{}
	sums := []byte(fzHexA + "  banger-v1.2.3-linux-amd64.tar.gz\n")
	index := []byte(`{"schema":1,"kind":"image","generated_at":"2026-01-02T03:04:05Z","entries":[]}`)
	for _, blob := range [][]byte{sums, index, {}} {
		sig := k.Sign(f, blob)
		signed[string(blob)] = true
		f.Add(blob, sig)
		f.Add(blob, append(append([]byte(" "), sig...), '\n'))
		der, _ := base64.StdEncoding.DecodeString(string(sig))
		f.Add(blob, []byte(base64.StdEncoding.EncodeToString(append(der, 0))))
	}
	f.Add(sums, []byte("MAYCAQACAQA="))
	f.Add(sums, []byte("not base64!"))
	f.Fuzz(func(t *testing.T, blob, sig []byte) {
		if IsPlaceholderKey(ReleasePublicKey()) {
			if err := Verify(blob, sig, ReleasePublicKey(), "blob"); !errors.Is(err, ErrKeyNotConfigured) {
				t.Fatalf("the placeholder key did not refuse: %v", err)
			}
		}
		err := Verify(blob, sig, k.PubPEM, "blob")
		if err != nil {
			if !errors.Is(err, ErrMalformedSignature) && !errors.Is(err, ErrBadSignature) {
				t.Fatalf("refusal of an unexpected class: %v", err)
			}
			fzOneLine(t, err)
			return
		}
		if !signed[string(blob)] {
			t.Fatalf("a signature verified over a blob nobody signed: blob %q sig %q", blob, sig)
		}
		trimmed := bytes.TrimSpace(sig)
		der, err := base64.StdEncoding.Strict().DecodeString(string(trimmed))
		if err != nil {
			t.Fatalf("accepted signature is not strict base64: %v", err)
		}
		if base64.StdEncoding.EncodeToString(der) != string(trimmed) {
			t.Fatalf("accepted a non-canonical base64 encoding %q", trimmed)
		}
		var rs struct{ R, S *big.Int }
		rest, err := asn1.Unmarshal(der, &rs)
		if err != nil || len(rest) != 0 || rs.R.Sign() <= 0 || rs.S.Sign() <= 0 {
			t.Fatalf("accepted DER %x: %v, %d trailing bytes", der, err, len(rest))
		}
		if canon, _ := asn1.Marshal(rs); !bytes.Equal(canon, der) {
			t.Fatalf("accepted a non-canonical DER encoding %x (canonical %x)", der, canon)
		}
		for _, i := range []int{0, len(blob) / 2, len(blob) - 1} {
			if len(blob) == 0 {
				break
			}
			tampered := bytes.Clone(blob)
			tampered[i] ^= 0x01
			if err := Verify(tampered, sig, k.PubPEM, "blob"); !errors.Is(err, ErrBadSignature) {
				t.Fatalf("byte %d changed, still: %v", i, err)
			}
		}
		if err := Verify(append(bytes.Clone(blob), '\n'), sig, k.PubPEM, "blob"); !errors.Is(err, ErrBadSignature) {
			t.Fatalf("blob with a byte appended, still: %v", err)
		}
	})
}
