package fcvmm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	firecracker "github.com/firecracker-microvm/firecracker-go-sdk"
	"github.com/sirupsen/logrus"
)

// restoreVM starts a new banger-vmm through the SDK with WithSnapshot (PUT
// /snapshot/load, resumed), on the same namespace and tap.
func restoreVM(t *testing.T, env *bootEnv, ns *netns, name, snap, mem string) (*bootedVM, error) {
	t.Helper()
	vm, id := newVMMProcess(t, env, ns, t.TempDir(), name)
	cfg := firecracker.Config{SocketPath: vm.sock, VMID: id, LogPath: vm.logPath, LogLevel: "Info", ForwardSignals: []os.Signal{}}
	lg := logrus.New()
	lg.SetOutput(vm.sdkLog)
	ctx := context.Background()
	var err error
	vm.m, err = firecracker.NewMachine(ctx, cfg, firecracker.WithProcessRunner(vm.cmd), firecracker.WithLogger(logrus.NewEntry(lg)),
		firecracker.WithSnapshot(mem, snap, func(c *firecracker.SnapshotConfig) { c.ResumeVM = true }))
	if err != nil {
		t.Fatalf("NewMachine: %v", err)
	}
	vm.killAtEnd(t, name)
	vm.started = time.Now()
	err = ns.do(func() error { return vm.m.Start(ctx) })
	return vm, err
}

// TestBootSnapshotRoundTrip drives banger-vmm's snapshot API only through
// the SDK: CreateSnapshot is refused while the guest runs; PauseVM,
// CreateSnapshot, ResumeVM keep the source running; a new VMM loads the
// snapshot (WithSnapshot) and the guest is the same guest: its /dev/shm
// marker (memory only) and boot_id are there. A truncated memory file and a
// file that is not a banger-vmm snapshot are refused with Firecracker's
// "Load snapshot error" and end that VMM, as a failed load ends Firecracker.
func TestBootSnapshotRoundTrip(t *testing.T) {
	env := bootPrereqs(t)
	ns := newNetns(t)
	src := bootVM(t, env, ns, "snap")
	bootID := src.waitReady(t)
	if out, err := src.ssh(t, "echo only-in-memory > /dev/shm/marker && cat /dev/shm/marker"); err != nil || strings.TrimSpace(out) != "only-in-memory" {
		t.Fatalf("marker: %q %v", out, err)
	}
	ctx := context.Background()
	dir := t.TempDir()
	snap, mem := filepath.Join(dir, "vm.snap"), filepath.Join(dir, "vm.mem")
	if err := src.m.CreateSnapshot(ctx, mem, snap); err == nil || !strings.Contains(err.Error(), "save/restore unavailable while running") {
		t.Fatalf("CreateSnapshot while running: %v", err)
	}
	if err := src.m.PauseVM(ctx); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := src.m.CreateSnapshot(ctx, mem, snap); err != nil {
		t.Fatalf("CreateSnapshot: %v", err)
	}
	st, _ := os.Stat(mem)
	t.Logf("snapshot of a 256 MiB guest: %v, memory file %d MiB", time.Since(t0).Round(time.Millisecond), st.Size()>>20)
	if info, _ := src.m.DescribeInstanceInfo(ctx); info.State == nil || *info.State != "Paused" {
		t.Errorf("state after CreateSnapshot: %v (Firecracker leaves the VM paused)", info.State)
	}
	if err := src.m.ResumeVM(ctx); err != nil {
		t.Fatal(err)
	}
	if out, err := src.ssh(t, "cat /dev/shm/marker"); err != nil || strings.TrimSpace(out) != "only-in-memory" {
		t.Fatalf("the source after the snapshot: %q %v", out, err)
	}
	// End the source: the restored VMM takes its tap and disks.
	q := src.qemuPID()
	src.cmd.Process.Kill()
	src.m.Wait(ctx)
	waitGone(t, q, "the source's QEMU")

	// A memory file that is not the snapshot's: refused, the VMM exits.
	short := filepath.Join(dir, "short.mem")
	b, _ := os.ReadFile(mem)
	os.WriteFile(short, b[:len(b)/2], 0o600)
	bad, err := restoreVM(t, env, ns, "snap-short", snap, short)
	if err == nil || !strings.Contains(err.Error(), "Load snapshot error: Failed to restore from snapshot: Failed to load guest memory") {
		t.Errorf("load with a truncated memory file: %v", err)
	}
	if werr := bad.m.Wait(ctx); werr == nil {
		t.Errorf("the VMM lived on after a failed load")
	}
	if b, _ := os.ReadFile(bad.logPath); !bytes.Contains(b, []byte(fmt.Sprintf("Firecracker exiting with error. exit_code=%d", exitGeneric))) {
		t.Errorf("the VMM did not exit by itself after the failed load; its log:\n%s", b)
	}
	// Not a banger-vmm snapshot.
	foreign := filepath.Join(dir, "foreign.snap")
	os.WriteFile(foreign, []byte("\x00firecracker snapshot v8\x00"), 0o600)
	if _, err := restoreVM(t, env, ns, "snap-foreign", foreign, mem); err == nil || !strings.Contains(err.Error(), "Failed to get snapshot state from file: Failed to load snapshot state from file: not a banger-vmm snapshot file") {
		t.Errorf("load of a foreign snapshot file: %v", err)
	}

	t1 := time.Now()
	r, err := restoreVM(t, env, ns, "snap-restored", snap, mem)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	loaded := time.Since(t1)
	out, err := r.ssh(t, "cat /dev/shm/marker /proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Fatalf("ssh into the restored guest: %v", err)
	}
	t.Logf("restore: load %v, to an ssh answer %v", loaded.Round(time.Millisecond), time.Since(t1).Round(time.Millisecond))
	if lines := strings.Fields(out); len(lines) != 2 || lines[0] != "only-in-memory" || lines[1] != bootID {
		t.Fatalf("restored guest says %q; want the marker and boot_id %s", out, bootID)
	}
	if info, err := r.m.DescribeInstanceInfo(ctx); err != nil || *info.State != "Running" {
		t.Errorf("restored state: %+v %v", info, err)
	}
}
