package testutil

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"

	"github.com/banger-dev/banger/internal/sysexec"
)

// OpenSSL runs the openssl tool and returns its stdout. Tests that sign or
// cross-check with it fail (not skip) when it is missing: the whole point is
// that a real, independent implementation agrees.
func OpenSSL(t testing.TB, args ...string) []byte {
	t.Helper()
	p, err := sysexec.LookPath("openssl")
	if err != nil {
		t.Fatalf("openssl not found: this test signs or cross-checks with it (install the openssl package)")
	}
	res, err := sysexec.Run(context.Background(), sysexec.Cmd{Path: p, Args: args})
	if err != nil {
		t.Fatal(err)
	}
	return res.Stdout
}

// OpenSSLKey is an EC key pair made by openssl: file paths and the public PEM.
type OpenSSLKey struct {
	Priv, Pub string
	PubPEM    []byte
}

// NewOpenSSLKey makes a key pair on curve (prime256v1 for a release key).
func NewOpenSSLKey(t testing.TB, curve string) OpenSSLKey {
	t.Helper()
	dir := t.TempDir()
	k := OpenSSLKey{Priv: filepath.Join(dir, "key.pem"), Pub: filepath.Join(dir, "key.pub")}
	OpenSSL(t, "ecparam", "-name", curve, "-genkey", "-noout", "-out", k.Priv)
	OpenSSL(t, "ec", "-in", k.Priv, "-pubout", "-out", k.Pub)
	var err error
	if k.PubPEM, err = os.ReadFile(k.Pub); err != nil {
		t.Fatal(err)
	}
	return k
}

// Sign signs blob the way banger-release and cosign do and returns the
// base64 text of the DER signature.
func (k OpenSSLKey) Sign(t testing.TB, blob []byte) []byte {
	t.Helper()
	f := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(f, blob, 0o644); err != nil {
		t.Fatal(err)
	}
	der := OpenSSL(t, "dgst", "-sha256", "-sign", k.Priv, f)
	return []byte(base64.StdEncoding.EncodeToString(der))
}
