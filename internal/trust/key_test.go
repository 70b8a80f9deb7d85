package trust

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/testutil"
)

func TestPublicKey(t *testing.T) {
	k := testutil.NewOpenSSLKey(t, "prime256v1")
	if b, err := PublicKey(k.Pub); err != nil || !bytes.Equal(b, k.PubPEM) {
		t.Fatalf("PublicKey(%s) = %q, %v", k.Pub, b, err)
	}
	_, err := PublicKey(filepath.Join(t.TempDir(), "absent.pub"))
	if !errors.Is(err, fs.ErrNotExist) || !strings.HasPrefix(err.Error(), "public key file: ") {
		t.Fatalf("missing file: %v", err)
	}
	p384 := testutil.NewOpenSSLKey(t, "secp384r1")
	if _, err := PublicKey(p384.Pub); !errors.Is(err, ErrBadKey) {
		t.Fatalf("P-384 key file: %v", err)
	}
	placeholder := filepath.Join(t.TempDir(), "placeholder.pub")
	if err := os.WriteFile(placeholder, []byte(PlaceholderMarker+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := PublicKey(placeholder); !errors.Is(err, ErrKeyNotConfigured) {
		t.Fatalf("placeholder file: %v", err)
	}
	// The embedded key: usable, or (in this tree) the placeholder.
	b, err := PublicKey("")
	switch {
	case IsPlaceholderKey(ReleasePublicKey()):
		if !errors.Is(err, ErrKeyNotConfigured) {
			t.Fatalf("embedded placeholder: %v", err)
		}
	case err != nil || !bytes.Equal(b, ReleasePublicKey()):
		t.Fatalf("embedded key: %q, %v", b, err)
	}
}
