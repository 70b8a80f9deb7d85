package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guestbuild"
	"github.com/banger-dev/banger/internal/testutil"
)

// TestDebianBookwormImage boots the built-in debian-bookworm-minimal image (systemd,
// OpenSSH, git; built locally with mmdebstrap) through `vm run`.
func TestDebianBookwormImage(t *testing.T) {
	testutil.RequiresGuest(t)
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		t.Skip("mmdebstrap not installed (apt-get install mmdebstrap): cannot build the debian-bookworm image")
	}
	if os.Geteuid() != 0 {
		t.Skip("building the debian-bookworm image needs root (mmdebstrap --mode=root)")
	}
	// Build (or reuse) the image here, outside the namespace, which has no
	// uplink to the Debian archive; inside it the daemon finds it cached.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	t0 := time.Now()
	art, err := guestbuild.EnsureDebian(ctx, guestOpts())
	if err != nil {
		t.Fatalf("debian-bookworm artifacts: %v", err)
	}
	t.Logf("EnsureDebian %s: %v", art.Key, time.Since(t0))

	v := newVMEnv(t)
	t1 := time.Now()
	out := v.must("vm", "run", "--rm", "--image", "debian-bookworm-minimal", "--", "cat", "/etc/os-release")
	t.Logf("vm run (cat /etc/os-release): %v", time.Since(t1))
	if !strings.Contains(out, "VERSION_CODENAME=bookworm") {
		t.Fatalf("/etc/os-release does not name bookworm:\n%s", out)
	}
	t2 := time.Now()
	v.must("vm", "create", "--name", "deb", "--image", "debian-bookworm-minimal")
	out = v.must("vm", "exec", "deb", "--", "sh", "-c", "test -f /root/.bashrc && test -f /root/.ssh/authorized_keys && git --version")
	t.Logf("vm create + exec (git --version): %v", time.Since(t2))
	if !strings.HasPrefix(out, "git version ") {
		t.Fatalf("git --version printed %q", out)
	}
	// The guest agent (a systemd unit here) lists OpenSSH's sshd.
	var ports []api.VMPorts
	if err := json.Unmarshal([]byte(v.must("vm", "ports", "deb", "--json")), &ports); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range ports[0].Listeners {
		found = found || (l.Port == 22 && l.Process == "sshd" && l.Endpoint == "deb.vm:22")
	}
	if !found {
		t.Fatalf("vm ports deb: %+v", ports)
	}
}
