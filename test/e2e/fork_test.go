package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// TestVMForkGivesEachChildItsOwnIdentity ([P9]): a running VM with a marker
// in /dev/shm (memory only) and a workspace file forks into 2 children.
// Both see the marker and the file; the parent keeps running (same boot,
// same memory); parent and children have distinct IPs, MACs, hostnames,
// SSH host keys, machine-ids and /dev/urandom output, and every clock is
// within 2 s of the host's. A fork parks and wakes (in its own network
// namespace again); the parent cannot be deleted while its forks' disks are
// overlays of its own; a stopped VM cannot be forked.
func TestVMForkGivesEachChildItsOwnIdentity(t *testing.T) {
	v := newVMEnv(t)
	v.must("vm", "create", "--name", "src")
	boot := strings.TrimSpace(v.must("vm", "exec", "src", "--", "sh", "-c",
		"echo fork-marker > /dev/shm/m && mkdir -p /root/proj && echo workspace-file > /root/proj/f && sync && cat /proc/sys/kernel/random/boot_id"))

	t0 := time.Now()
	r := v.banger("vm", "fork", "src", "--count", "2", "--json")
	forkTime := time.Since(t0)
	if r.code != 0 {
		t.Fatalf("vm fork: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	var res api.VMForkResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || len(res.Forks) != 2 {
		t.Fatalf("vm fork --json: %v %s", err, r.stdout)
	}
	if res.Source.State != api.StateRunning {
		t.Fatalf("the source is %s after the fork", res.Source.State)
	}
	names := []string{"src"}
	for _, f := range res.Forks {
		if f.State != api.StateRunning || f.Runtime.ForkOf != res.Source.ID || len(f.Runtime.DiskParents) == 0 || f.Runtime.NeedsIdentity {
			t.Fatalf("fork %s: state %s, fork_of %q, disk parents %v, needs identity %v", f.Name, f.State, f.Runtime.ForkOf, f.Runtime.DiskParents, f.Runtime.NeedsIdentity)
		}
		names = append(names, f.Name)
	}
	t.Logf("fork into 2: %v (tiny, TCG), disks: %s", forkTime.Round(time.Millisecond), res.Forks[0].Runtime.CloneMethod)

	type ident struct{ marker, file, boot, host, mid, mac, ip, rnd string }
	seen := map[string]map[string]string{}
	ids := map[string]ident{}
	for _, name := range names {
		out := v.must("vm", "exec", name, "--", "sh", "-c",
			`cat /dev/shm/m /root/proj/f /proc/sys/kernel/random/boot_id; hostname; cat /etc/machine-id 2>/dev/null || echo no-machine-id; cat /sys/class/net/eth0/address; `+
				`ip -4 -o addr show dev eth0 | awk '{print $4}'; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; echo; date +%s`)
		f := strings.Fields(out)
		if len(f) != 9 {
			t.Fatalf("%s: %q", name, out)
		}
		id := ident{marker: f[0], file: f[1], boot: f[2], host: f[3], mid: f[4], mac: f[5], ip: f[6], rnd: f[7]}
		ids[name] = id
		if id.marker != "fork-marker" || id.file != "workspace-file" {
			t.Errorf("%s: marker %q, workspace file %q", name, id.marker, id.file)
		}
		if id.boot != boot {
			t.Errorf("%s: boot_id %s, want the parent's %s (a fork keeps the parent's boot)", name, id.boot, boot)
		}
		if id.host != name {
			t.Errorf("%s: hostname %q", name, id.host)
		}
		if g, err := strconv.ParseInt(f[8], 10, 64); err != nil || g < time.Now().Unix()-2 || g > time.Now().Unix()+1 {
			t.Errorf("%s: clock %s, host %d", name, f[8], time.Now().Unix())
		}
		for k, val := range map[string]string{"hostname": id.host, "machine-id": id.mid, "mac": id.mac, "ip": id.ip, "urandom": id.rnd} {
			if seen[k] == nil {
				seen[k] = map[string]string{}
			}
			if other, dup := seen[k][val]; dup {
				t.Errorf("%s and %s share their %s %s", other, name, k, val)
			}
			seen[k][val] = name
		}
	}
	for _, f := range res.Forks {
		if ip := ids[f.Name].ip; ip != f.IP+"/24" && !strings.HasPrefix(ip, f.IP+"/") {
			t.Errorf("%s: guest address %s, banger's record %s", f.Name, ip, f.IP)
		}
	}
	// SSH host keys: each VM's, as banger pinned them (and as they answered).
	keys := pinnedKeys(t, filepath.Join(v.home, ".local", "state", "banger", "ssh", "known_hosts"))
	fp := map[string]string{}
	for _, vm := range append([]api.VM{res.Source}, res.Forks...) {
		if len(keys[vm.IP]) == 0 {
			t.Fatalf("no host key pinned for %s (%s)", vm.Name, vm.IP)
		}
		for _, k := range keys[vm.IP] {
			if other, dup := fp[k]; dup {
				t.Errorf("%s and %s share the SSH host key %s", other, vm.Name, k)
			}
			fp[k] = vm.Name
		}
	}

	// A fork parks and wakes like any VM (in a network namespace of its own
	// again: its snapshot still names the parent's tap).
	kid := res.Forks[0].Name
	v.must("vm", "park", kid)
	if got := strings.TrimSpace(v.must("vm", "exec", kid, "--", "cat", "/dev/shm/m")); got != "fork-marker" {
		t.Fatalf("fork after park and wake: %q", got)
	}

	// A damaged snapshot: one line, the fork stays parked with its files,
	// and --cold boots its disks.
	v.must("vm", "park", kid)
	mem := filepath.Join(v.show(kid).Runtime.Dir, "vm.mem")
	if fi, err := os.Stat(mem); err != nil || os.Truncate(mem, fi.Size()/2) != nil {
		t.Fatalf("truncate %s: %v", mem, err)
	}
	bad := v.banger("vm", "resume", kid)
	if bad.code == 0 || strings.Count(strings.TrimSpace(bad.stderr), "\n") != 0 || !strings.Contains(bad.stderr, "resume --cold") {
		t.Fatalf("resume from a truncated snapshot: exit %d %q", bad.code, bad.stderr)
	}
	if st := v.state(kid); st != api.StateParked {
		t.Fatalf("after a failed wake the fork is %s, want parked", st)
	}
	if _, err := os.Stat(mem); err != nil {
		t.Fatalf("the failed wake lost the snapshot: %v", err)
	}
	v.must("vm", "resume", "--cold", kid)
	if got := strings.TrimSpace(v.must("vm", "exec", kid, "--", "sh", "-c", "cat /root/proj/f; hostname")); got != "workspace-file\n"+kid {
		t.Fatalf("fork after a cold resume: %q", got)
	}

	// The parent's disks back its forks: it cannot go first.
	del := v.banger("vm", "delete", "src")
	if del.code != 2 || strings.Count(strings.TrimSpace(del.stderr), "\n") != 0 || !strings.Contains(del.stderr, res.Forks[0].Name) || !strings.Contains(del.stderr, res.Forks[1].Name) {
		t.Fatalf("delete of a parent with forks: exit %d %q", del.code, del.stderr)
	}
	if st := v.state("src"); st != api.StateRunning {
		t.Fatalf("the refused delete changed the parent: %s", st)
	}
	// A stopped VM cannot be forked, and nothing is made.
	v.must("vm", "stop", res.Forks[1].Name)
	bad = v.banger("vm", "fork", res.Forks[1].Name)
	if bad.code != 2 || strings.Count(strings.TrimSpace(bad.stderr), "\n") != 0 || !strings.Contains(bad.stderr, "only a running or parked VM can be forked") {
		t.Fatalf("fork of a stopped VM: exit %d %q", bad.code, bad.stderr)
	}
	var vms []api.VM
	json.Unmarshal([]byte(v.must("vm", "list", "--json")), &vms)
	if len(vms) != 3 {
		t.Fatalf("%d VMs after a refused fork, want 3", len(vms))
	}
	// A fork boots cold from its own disks, as itself.
	v.must("vm", "start", res.Forks[1].Name)
	if got := strings.TrimSpace(v.must("vm", "exec", res.Forks[1].Name, "--", "sh", "-c", "cat /root/proj/f; hostname")); got != "workspace-file\n"+res.Forks[1].Name {
		t.Fatalf("cold-booted fork: %q", got)
	}
	for _, f := range res.Forks {
		v.must("vm", "delete", f.Name)
	}
	v.must("vm", "delete", "src")
	if dirs := v.vmDirs(); len(dirs) != 0 {
		t.Fatalf("VM directories left: %v", dirs)
	}
}

// pinnedKeys maps each host in a known_hosts file to its pinned keys'
// SHA256 fingerprints.
func pinnedKeys(t *testing.T, path string) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for len(b) > 0 {
		_, hosts, key, _, rest, err := ssh.ParseKnownHosts(b)
		if err != nil {
			break
		}
		b = rest
		for _, h := range hosts {
			h = strings.TrimSuffix(strings.TrimPrefix(knownhosts.Normalize(h), "["), "]:22")
			out[h] = append(out[h], ssh.FingerprintSHA256(key))
		}
	}
	return out
}
