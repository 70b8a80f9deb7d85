package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

// TestAutoParkIdleVM ([P9] auto_park_after): with auto_park_after = "4s",
// a VM with an SSH session open (a 12 s 'vm exec') keeps running past the
// idle period; once the session ends the daemon parks it by itself (one
// line in its log); 'vm exec' wakes it with its memory (a /dev/shm marker).
func TestAutoParkIdleVM(t *testing.T) {
	v := newVMEnv(t)
	cfg, err := os.ReadFile(v.configFile())
	if err != nil {
		t.Fatal(err)
	}
	// A top-level key: before newVMEnv's [vm_defaults] table.
	if err := os.WriteFile(v.configFile(), append([]byte("auto_park_after = \"4s\"\n"), cfg...), 0o600); err != nil {
		t.Fatal(err)
	}
	v.must("vm", "create", "--name", "ap")

	// A session, in the background: the CLI's own SSH connection.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", v.ns, filepath.Join(v.bin, "banger"),
		"vm", "exec", "ap", "--", "sh", "-c", "echo auto-parked-marker > /dev/shm/m; sleep 12")
	cmd.Env = v.environ()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	// Twice the idle period into the session, the VM still runs.
	time.Sleep(time.Until(t0.Add(8 * time.Second)))
	if st := v.state("ap"); st != api.StateRunning {
		t.Fatalf("8 s into a 12 s 'vm exec' the VM is %s, want running (a session is activity)", st)
	}
	if err := <-done; err != nil {
		t.Fatalf("the 'vm exec' session ended with %v (the VM was parked under it?): %s", err, out.String())
	}
	sessionEnd := time.Now()
	if took := sessionEnd.Sub(t0); took < 12*time.Second {
		t.Fatalf("the 12 s session returned after %v: %s", took, out.String())
	}

	// No session now: parked by the daemon within the idle period and a
	// few questions to the agent.
	var parkedAfter time.Duration
	for deadline := time.Now().Add(40 * time.Second); ; {
		if st := v.state("ap"); st == api.StateParked {
			parkedAfter = time.Since(sessionEnd)
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("40 s after the last session the VM is %s, want parked (auto_park_after = 4s)", st)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("auto-parked %.1f s after the session ended", parkedAfter.Seconds())
	if vm := v.show("ap"); vm.Runtime.PID != 0 || vm.Runtime.SnapshotBytes <= 0 {
		t.Fatalf("auto-parked VM: pid %d, snapshot %d bytes", vm.Runtime.PID, vm.Runtime.SnapshotBytes)
	}
	logb, _ := os.ReadFile(filepath.Join(v.home, ".local", "state", "banger", "bangerd.log"))
	if n := strings.Count(string(logb), "vm auto-parked"); n != 1 || !strings.Contains(string(logb), `"idle":`) {
		t.Fatalf("the daemon's log has %d auto-park lines (want 1, with the idle time)", n)
	}

	// 'vm exec' wakes it: the same memory.
	if got := strings.TrimSpace(v.must("vm", "exec", "ap", "--", "cat", "/dev/shm/m")); got != "auto-parked-marker" {
		t.Fatalf("after the wake /dev/shm/m is %q", got)
	}
	if st := v.state("ap"); st != api.StateRunning {
		t.Fatalf("after the wake the VM is %s", st)
	}
}
