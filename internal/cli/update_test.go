package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestUpdateStagesOnlyWhereOnlyRootWrites is [P7] item 2: the update used to
// stage in /var/cache/banger/updates, a directory the owner owns, where an
// owner process could swap the staged binaries between verification and
// install. It now refuses any work dir another uid could change, and
// stages in a fresh root-only one.
func TestUpdateStagesOnlyWhereOnlyRootWrites(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	base, err := os.MkdirTemp("", "bgupd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	// The old place: a cache the owner owns.
	owned := filepath.Join(base, "cache-banger")
	os.MkdirAll(owned, 0o700)
	os.Chown(owned, 4247, 4247)
	if _, err := updateWorkDir(filepath.Join(owned, "updates")); err == nil || !strings.Contains(err.Error(), "owned by uid 4247") {
		t.Fatalf("an update work dir inside the owner's cache was accepted: %v", err)
	}
	rootOnly := filepath.Join(base, "cache-root")
	w, err := updateWorkDir(rootOnly)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(w)
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 || filepath.Dir(w) != rootOnly {
		t.Fatalf("work dir %s: %v %v", w, fi, err)
	}
	// Another uid cannot replace the stage inside it.
	if err := os.Chmod(w, 0o700); err != nil {
		t.Fatal(err)
	}
	w2, _ := updateWorkDir(rootOnly)
	if w2 == w {
		t.Fatal("two updates share one work dir")
	}
}
