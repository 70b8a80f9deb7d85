// Package testutil holds helpers shared by banger's tests: gates for tests
// that need root or real guests, and repository-wide policy checks.
package testutil

import (
	"os"
	"testing"

	"github.com/banger-dev/banger/internal/sysexec"
)

// RequiresRoot skips t unless it runs as root.
func RequiresRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

// RequiresGuest skips t unless real guests can boot here: root, QEMU, and
// not -short.
func RequiresGuest(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a real guest; skipped with -short")
	}
	RequiresRoot(t)
	if _, err := sysexec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed (make deps)")
	}
}

// CacheDir is where tests keep built guest artifacts between runs.
func CacheDir() string {
	if d := os.Getenv("BANGER_TEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/banger-test"
}
