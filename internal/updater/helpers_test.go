package updater

import (
	"bytes"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// opensslPath finds openssl; these tests pin the Go verifier to the real tool,
// so its absence is a failure, not a skip.
func opensslPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatalf("openssl not found: these tests cross-check against it (install the openssl package)")
	}
	return p
}

func runOpenSSL(t *testing.T, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(opensslPath(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("openssl %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.Bytes()
}

type testKey struct {
	priv, pub string // paths
	pubPEM    []byte
}

// opensslKey makes a key pair with openssl on the given curve (prime256v1 for
// a release key).
func opensslKey(t *testing.T, curve string) testKey {
	t.Helper()
	dir := t.TempDir()
	k := testKey{priv: filepath.Join(dir, "key.pem"), pub: filepath.Join(dir, "key.pub")}
	runOpenSSL(t, "ecparam", "-name", curve, "-genkey", "-noout", "-out", k.priv)
	runOpenSSL(t, "ec", "-in", k.priv, "-pubout", "-out", k.pub)
	var err error
	if k.pubPEM, err = os.ReadFile(k.pub); err != nil {
		t.Fatal(err)
	}
	return k
}

// opensslSign signs blob the way the release builder and cosign do and
// returns the base64 text of the DER signature.
func opensslSign(t *testing.T, k testKey, blob []byte) []byte {
	t.Helper()
	f := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(f, blob, 0o644); err != nil {
		t.Fatal(err)
	}
	der := runOpenSSL(t, "dgst", "-sha256", "-sign", k.priv, f)
	return []byte(base64.StdEncoding.EncodeToString(der))
}
