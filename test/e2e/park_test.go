package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/vmm"
	"golang.org/x/crypto/ssh"
)

// TestVMParkWakeSurvivesDaemonKill ([P9]): a marker in /dev/shm (memory
// only) survives `vm park` (snapshot to disk, VMM gone), a SIGKILL of the
// daemon, and the wake that `vm exec` does by itself; boot_id is unchanged.
// Parking a stopped VM is refused with one line.
func TestVMParkWakeSurvivesDaemonKill(t *testing.T) {
	v := newVMEnv(t)
	v.must("vm", "create", "--name", "pk")
	boot := strings.TrimSpace(v.must("vm", "exec", "pk", "--", "sh", "-c", "echo parked-marker > /dev/shm/m && cat /proc/sys/kernel/random/boot_id"))
	vmmPID := v.show("pk").Runtime.PID

	t0 := time.Now()
	out := v.must("vm", "park", "pk")
	parkTime := time.Since(t0)
	if !strings.HasPrefix(out, "pk parked (snapshot ") {
		t.Fatalf("vm park printed %q", out)
	}
	var vms []api.VM
	if err := json.Unmarshal([]byte(v.must("vm", "list", "--json")), &vms); err != nil || len(vms) != 1 {
		t.Fatalf("vm list: %v %+v", err, vms)
	}
	if vms[0].State != api.StateParked || vms[0].Runtime.SnapshotBytes <= 0 || vms[0].Runtime.PID != 0 {
		t.Fatalf("after park: state %s, snapshot %d bytes, pid %d", vms[0].State, vms[0].Runtime.SnapshotBytes, vms[0].Runtime.PID)
	}
	if vmm.Alive(vmmPID) {
		t.Fatalf("the VMM (pid %d) still runs after park: a parked VM holds no memory", vmmPID)
	}
	dir := v.show("pk").Runtime.Dir
	for _, f := range []string{"vm.snap", "vm.mem"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("snapshot file %s: %v", f, err)
		}
	}

	// The daemon dies; the next CLI starts another, which keeps the VM parked.
	pid := v.daemonPID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100 && vmm.Alive(pid); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if st := v.state("pk"); st != api.StateParked {
		t.Fatalf("after the daemon's restart the VM is %s, want parked", st)
	}

	// Parked for a while: the guest's clock stands still meanwhile.
	time.Sleep(4 * time.Second)

	// vm exec wakes it: same memory, same boot, and the host's clock.
	t1 := time.Now()
	got := strings.Fields(v.must("vm", "exec", "pk", "--", "sh", "-c", "cat /dev/shm/m /proc/sys/kernel/random/boot_id; date +%s"))
	wakeTime := time.Since(t1)
	if len(got) != 3 || got[0] != "parked-marker" || got[1] != boot {
		t.Fatalf("after wake: %q; want the marker and boot_id %s", got, boot)
	}
	if guest, err := strconv.ParseInt(got[2], 10, 64); err != nil || guest < time.Now().Unix()-2 || guest > time.Now().Unix()+1 {
		t.Fatalf("the woken guest's clock says %s, the host's %d: it was not stepped", got[2], time.Now().Unix())
	}
	if st := v.state("pk"); st != api.StateRunning {
		t.Fatalf("after wake the VM is %s", st)
	}
	if _, err := os.Stat(filepath.Join(dir, "vm.mem")); !os.IsNotExist(err) {
		t.Fatalf("the snapshot outlived the wake (it is stale once the disks move on): %v", err)
	}
	t.Logf("park %v, wake + exec %v (tiny, TCG)", parkTime.Round(time.Millisecond), wakeTime.Round(time.Millisecond))

	// Pause and resume keep the guest; a stopped VM cannot be parked.
	v.must("vm", "pause", "pk")
	if st := v.state("pk"); st != api.StatePaused {
		t.Fatalf("after pause: %s", st)
	}
	v.must("vm", "resume", "pk")

	// --cold: a parked VM's disks boot; its memory (and snapshot) is gone.
	v.must("vm", "park", "pk")
	v.must("vm", "resume", "--cold", "pk")
	if got := v.bootID("pk"); got == boot {
		t.Fatal("vm resume --cold did not boot the VM afresh")
	}
	if r := v.banger("vm", "exec", "pk", "--", "test", "-e", "/dev/shm/m"); r.code == 0 {
		t.Fatal("the memory-only marker survived a cold resume")
	}
	if _, err := os.Stat(filepath.Join(dir, "vm.mem")); !os.IsNotExist(err) {
		t.Fatalf("the snapshot outlived a cold resume: %v", err)
	}
	v.must("vm", "stop", "pk")
	r := v.banger("vm", "park", "pk")
	if r.code != 2 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || !strings.Contains(r.stderr, "only a running VM can be parked") {
		t.Fatalf("park of a stopped VM: exit %d %q", r.code, r.stderr)
	}
	if st := v.state("pk"); st != api.StateStopped {
		t.Fatalf("a refused park changed the VM: %s", st)
	}
}

// TestDevboxParkWakeCycles: the dev box (2 GiB, systemd, Docker) parks and
// wakes, boots cold, and parks and wakes again. BenchmarkParkWake once found
// a wake right after a park failing on a tap still held by the old VMM's
// QEMU (parking SIGKILLed the VMM, leaving QEMU dying behind it; it is
// SIGTERMed now, and banger-vmm waits for QEMU); the race is timing-bound and
// did not show in this test's runs, which guard the path itself.
func TestDevboxParkWakeCycles(t *testing.T) {
	v := newDevboxEnv(t)
	v.must("vm", "create", "--name", "cyc")
	for i := 0; i < 2; i++ {
		boot := v.bootID("cyc")
		v.must("vm", "park", "cyc")
		if got := v.bootID("cyc"); got != boot {
			t.Fatalf("cycle %d: boot_id %s, want %s", i, got, boot)
		}
		if i == 0 { // a cold boot between cycles, as BenchmarkParkWake does
			v.must("vm", "stop", "cyc")
			v.must("vm", "start", "cyc")
		}
	}

	// A fork of it ([P10]'s fast identity): OpenSSH 9.2 serves the host
	// keys banger made on the host, from its files, without a reload; the
	// fork's keys are its own, named for it, and are the ones banger pinned
	// (vm exec checks them).
	var fr api.VMForkResult
	if err := json.Unmarshal([]byte(v.must("vm", "fork", "cyc", "--name", "kid", "--json")), &fr); err != nil || len(fr.Forks) != 1 {
		t.Fatalf("vm fork --json: %v", err)
	}
	keys := pinnedKeys(t, filepath.Join(v.home, ".local", "state", "banger", "ssh", "known_hosts"))
	parent, kid := keys[fr.Source.IP], keys[fr.Forks[0].IP]
	if len(kid) != 2 || len(parent) != 2 {
		t.Fatalf("pinned keys: parent %v, fork %v", parent, kid)
	}
	for _, k := range kid {
		if slices.Contains(parent, k) {
			t.Errorf("the fork serves its parent's host key %s", k)
		}
	}
	out := v.must("vm", "exec", "kid", "--", "sh", "-c",
		"cat /etc/ssh/ssh_host_ed25519_key.pub; stat -c %a /etc/ssh/ssh_host_ed25519_key; journalctl -q -b -u ssh.service --grep SIGHUP --no-pager | wc -l")
	f := strings.Fields(out)
	if len(f) != 5 || f[2] != "root@kid" || f[3] != "600" || f[4] != "0" {
		t.Errorf("the fork's ed25519 key file, mode and sshd reloads: %q (want root@kid, 600, 0 reloads)", out)
	}
	if pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(out)); err != nil || !slices.Contains(kid, ssh.FingerprintSHA256(pub)) {
		t.Errorf("the fork's key file holds %q, not a pinned key (%v)", out, err)
	}
}
