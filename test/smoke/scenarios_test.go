//go:build smoke

package smoke

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

type scenario struct {
	name string
	run  func(t *testing.T)
}

var scenarios = []scenario{
	{"system_install", scSystemInstall},
	{"update_check", scUpdateCheck},
	{"update_to_unknown", scUpdateToUnknown},
	{"update_no_root", scUpdateNoRoot},
	{"update_dry_run", scUpdateDryRun},
	{"update_refusals", scUpdateRefusals},
	{"update_keeps_vm_alive", scUpdateKeepsVMAlive},
	{"update_staging_race", scUpdateStagingRace},
	{"update_rollback_keeps_vm_alive", scUpdateRollbackKeepsVMAlive},
	{"parked_vm_survives_update", scParkedVMSurvivesUpdate},
	{"fork_under_system_helper", scForkUnderSystemHelper},
	{"daemon_admin", scDaemonAdmin},
	{"helper_restart_keeps_vm_alive", scHelperRestartKeepsVMAlive},
	{"daemon_sigkill_keeps_vm_alive", scDaemonSigkillKeepsVMAlive},
	{"helper_sigkill_keeps_vm_alive", scHelperSigkillKeepsVMAlive},
	{"vm_lifecycle", scVMLifecycle},
	{"vm_names_resolve", scVMNamesResolve},
	{"catches_the_bug", scCatchesTheBug},
	{"system_uninstall", scSystemUninstall},
}

func TestSmoke(t *testing.T) {
	want := map[string]bool{}
	for _, n := range strings.Split(*flagScenario, ",") {
		if n = strings.TrimSpace(n); n != "" {
			want[n] = true
		}
	}
	for n := range want {
		found := false
		for _, s := range scenarios {
			found = found || s.name == n
		}
		if !found {
			t.Fatalf("unknown scenario %q (see -smoke.list)", n)
		}
	}
	sem := make(chan struct{}, *flagJobs)
	for _, s := range scenarios {
		if len(want) > 0 && !want[s.name] {
			continue
		}
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			sem <- struct{}{}
			defer func() { <-sem }()
			start := time.Now()
			s.run(t)
			t.Logf("%s took %s", s.name, time.Since(start).Round(100*time.Millisecond))
		})
	}
}

func scSystemInstall(t *testing.T) {
	h := newHost(t, art.bin)
	for unit, want := range map[string]map[string]string{
		"bangerd.service":      {"KillMode": "process", "ActiveState": "active"},
		"bangerd-root.service": {"KillMode": "process", "SendSIGKILL": "no", "ActiveState": "active"},
	} {
		props := []string{}
		for k := range want {
			props = append(props, k)
		}
		got, err := h.sys.Show(t.Context(), unit, props...)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s %s=%q, want %q", unit, k, got[k], v)
			}
		}
	}
	var st struct {
		Healthy bool
		Units   []struct {
			Unit    string
			Active  string
			Answers bool
			Version string
		}
	}
	if err := json.Unmarshal([]byte(h.mustBanger("system", "status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	if !st.Healthy || len(st.Units) != 2 {
		t.Fatalf("system status: %+v", st)
	}
	for _, u := range st.Units {
		if u.Active != "active" || !u.Answers || u.Version != baseVersion {
			t.Errorf("unit %+v", u)
		}
	}
	out := h.mustBanger("system", "status")
	if !strings.Contains(out, "bangerd-root.service") || !strings.Contains(out, "process") {
		t.Errorf("status table: %s", out)
	}
	meta := h.sh("cat /etc/banger/install.toml")
	for _, k := range []string{"owner_user = '" + owner + "'", "version = '" + baseVersion + "'", "installed_at"} {
		if !strings.Contains(meta, k) {
			t.Errorf("install.toml lacks %q:\n%s", k, meta)
		}
	}
	// The daemon runs as the owner, the helper as root.
	if u := strings.TrimSpace(h.sh("ps -o user= -p $(systemctl show -P MainPID bangerd.service)")); u != owner {
		t.Errorf("bangerd runs as %q", u)
	}
	// Without --no-image, install builds the default image as root (tiny here,
	// from root's seeded build cache) and copies it into the owner's cache,
	// emptied here so the copy must happen.
	h.sh("rm -rf /var/cache/banger/guest")
	out = h.must("/mnt/smoke/"+mustRel(art.bin)+"/banger", "system", "install", "--owner", owner)
	if !strings.Contains(out, "default image tiny ready") {
		t.Errorf("install did not build the default image:\n%s", out)
	}
	if u := strings.TrimSpace(h.sh("stat -c %U /var/cache/banger/guest")); u != owner {
		t.Errorf("/var/cache/banger/guest belongs to %q, want %s", u, owner)
	}
	if others := strings.TrimSpace(h.sh("find /var/cache/banger/guest ! -user " + owner)); others != "" {
		t.Errorf("the owner's guest cache holds files it does not own:\n%s", others)
	}
	h.mustBanger("vm", "run", "--rm", "--", "true")

	// [P7] items 3 and 7: the VM tree is root's; the owner reads its
	// console and reaches its agent, but can neither write in the VM dir nor
	// reach the VMM's API socket (after boot Firecracker would let it
	// re-point a drive at any host file).
	h.mustBanger("vm", "create", "--name", "guarded")
	dir := strings.TrimSpace(h.sh("ls -d /var/lib/banger-vms/*/"))
	want := map[string]string{
		"/var/lib/banger-vms": "root 755",
		dir:                   "root 711",
		dir + "api.sock":      "root 700", // a socket: 0777 &^ the helper's umask 077
		dir + "serial.log":    owner + " 600",
		dir + "agent.sock":    owner,
		dir + "rootfs.ext4":   "root 600",
		dir + "kernel":        "root 600",
	}
	for p, w := range want {
		got := strings.TrimSpace(h.sh("stat -c '%U %a' " + p))
		if !strings.HasPrefix(got, w) {
			t.Errorf("%s: %q, want %q", p, got, w)
		}
	}
	asOwner := func(cmd string) res {
		return h.exec(time.Minute, "setpriv", "--reuid="+owner, "--regid="+owner, "--init-groups", "sh", "-c", cmd)
	}
	// connect(2) on a Unix socket needs write permission on it: the same
	// check access(2) makes.
	if r := asOwner("test -w " + dir + "api.sock"); r.code == 0 {
		t.Errorf("the owner may connect to the VMM's API socket")
	}
	if r := asOwner("test -w " + dir + "agent.sock"); r.code != 0 {
		t.Errorf("the owner may not connect to its guest's agent socket")
	}
	if r := asOwner("touch " + dir + "planted || ln -s /etc/shadow " + dir + "seed-x"); r.code == 0 {
		t.Errorf("the owner wrote into the VM dir")
	}
	if r := asOwner("head -c 1 " + dir + "serial.log"); r.code != 0 {
		t.Errorf("the owner cannot read its console: %q", r.err)
	}
	h.mustBanger("vm", "ports", "guarded")
	h.mustBanger("vm", "delete", "guarded")
}

func scUpdateCheck(t *testing.T) {
	h := newHost(t, art.bin)
	h.serveReleases()
	// --check works without root.
	r := h.exec(time.Minute, append([]string{"setpriv", "--reuid=" + owner, "--regid=" + owner, "--init-groups", "/usr/local/bin/banger"}, h.updateArgs("--check")...)...)
	if r.code != 0 || strings.TrimSpace(r.out) != "update available: "+baseVersion+" → "+goodVersion {
		t.Fatalf("check: %d %q %q", r.code, r.out, r.err)
	}
	// Without --to, a version that cannot be ordered against the installed one
	// (and so might be a downgrade) is refused before anything changes.
	before := h.snapshot()
	r = h.banger(h.updateArgs()...)
	if r.code == 0 || !strings.Contains(r.err, "name the version with --to") {
		t.Fatalf("unordered update without --to: %d %q", r.code, r.err)
	}
	h.assertUnchanged(before)
}

func scSystemUninstall(t *testing.T) {
	h := newHost(t, art.bin)
	h.mustBanger("system", "uninstall", "--purge")
	left := h.sh("ls /usr/local/bin/banger /usr/local/bin/bangerd /usr/local/lib/banger /etc/banger/install.toml /etc/systemd/system/bangerd.service /etc/systemd/system/bangerd-root.service /var/lib/banger 2>&1 || true")
	if strings.Count(left, "No such file or directory") != 7 {
		t.Fatalf("left behind after uninstall --purge:\n%s", left)
	}
	if out, _ := h.sys.Systemctl(t.Context(), "is-active", "bangerd.service", "bangerd-root.service"); strings.Contains(out, "active\n") && !strings.Contains(out, "inactive") {
		t.Fatalf("units still active: %s", out)
	}
}

func scUpdateToUnknown(t *testing.T) {
	h := newHost(t, art.bin)
	h.serveReleases()
	before := h.snapshot()
	r := h.banger(h.updateArgs("--to", "v9.9.9")...)
	if r.code == 0 || !strings.Contains(r.err, "v9.9.9") || strings.Count(r.err, "\n") != 1 {
		t.Fatalf("--to v9.9.9: %d %q", r.code, r.err)
	}
	h.assertUnchanged(before)
}

func scUpdateNoRoot(t *testing.T) {
	h := newHost(t, art.bin)
	h.serveReleases()
	before := h.snapshot()
	r := h.exec(time.Minute, append([]string{"setpriv", "--reuid=" + owner, "--regid=" + owner, "--init-groups", "/usr/local/bin/banger"}, h.updateArgs("--to", goodVersion)...)...)
	if r.code == 0 || !strings.Contains(r.err, "needs root") {
		t.Fatalf("no root: %d %q", r.code, r.err)
	}
	h.assertUnchanged(before)
}

func scUpdateDryRun(t *testing.T) {
	h := newHost(t, art.bin)
	h.serveReleases()
	before := h.snapshot()
	out := h.mustBanger(h.updateArgs("--to", goodVersion, "--dry-run")...)
	if !strings.Contains(out, "dry run: "+baseVersion+" → "+goodVersion+" verified and staged; nothing swapped") {
		t.Fatalf("dry run: %s", out)
	}
	h.assertUnchanged(before)
	if v := h.mustBanger("--version"); !strings.Contains(v, baseVersion) {
		t.Fatalf("version after dry run: %s", v)
	}
}

// scUpdateStagingRace is [P7] item 2: while root updates, an owner process
// swaps any staged release it can reach for its own programs. None of them
// may ever run as root, and the installed binaries are the release's.
func scUpdateStagingRace(t *testing.T) {
	h := newHost(t, art.bin)
	h.serveReleases()
	h.sh("systemd-run --quiet --unit=attacker --uid=" + owner + " --gid=" + owner + " /mnt/smoke/attacker /var/cache/banger /var/cache/banger/pwned 90s")
	time.Sleep(300 * time.Millisecond)
	r := h.banger(h.updateArgs("--to", goodVersion)...)
	h.sh("systemctl kill --signal=SIGTERM attacker || true")
	t.Logf("update: exit %d; %s", r.code, strings.TrimSpace(h.sh("journalctl -q -u attacker -o cat || true")))
	if uid := strings.TrimSpace(h.sh("cat /var/cache/banger/pwned 2>/dev/null || true")); uid != "" {
		t.Fatalf("the owner's program ran during the update as uid %s", uid)
	}
	if r.code != 0 {
		t.Fatalf("update: %d %s", r.code, r.err)
	}
	for _, b := range []string{"bangerd", "banger"} {
		if out := h.sh("cmp /usr/local/bin/" + b + " /mnt/smoke/good/" + b + " && echo same || echo differs"); !strings.Contains(out, "same") {
			t.Errorf("installed %s is not the release's: %s", b, out)
		}
	}
}

func scUpdateKeepsVMAlive(t *testing.T) {
	h := newHost(t, art.bin)
	h.serveReleases()
	h.mustBanger("vm", "create", "--name", "alive")
	b := h.mustBootID("alive")
	if v := h.agentVersion("alive"); v != baseVersion {
		t.Fatalf("guest agent of alive: %q, want %s", v, baseVersion)
	}
	out := h.mustBanger(h.updateArgs("--to", goodVersion)...)
	if !strings.Contains(out, "updated "+baseVersion+" → "+goodVersion) {
		t.Fatalf("update: %s", out)
	}
	// The new version refreshed the default image as root (found cached here).
	if !strings.Contains(out, "guest artifacts for tiny ready") {
		t.Fatalf("update did not refresh the default image:\n%s", out)
	}
	if v := h.mustBanger("--version"); !strings.Contains(v, "banger "+goodVersion+" ") {
		t.Fatalf("banger --version after update: %s", v)
	}
	var st api.DaemonStatus
	json.Unmarshal([]byte(h.mustBanger("daemon", "status", "--json")), &st)
	if st.Version != goodVersion {
		t.Fatalf("daemon runs %s", st.Version)
	}
	if err := h.keepsAlive("alive", b); err != nil {
		t.Fatal(err)
	}
	if meta := h.sh("cat /etc/banger/install.toml"); !strings.Contains(meta, "version = '"+goodVersion+"'") || !strings.Contains(meta, "owner_user = '"+owner+"'") {
		t.Fatalf("install.toml not refreshed:\n%s", meta)
	}
	if out := h.sh("ls /usr/local/bin /usr/local/lib/banger"); strings.Contains(out, ".previous") {
		t.Fatalf(".previous files left: %s", out)
	}
	// The update's agent reaches a new VM on its tools disk (no image was
	// rebuilt); the running VM keeps the agent it booted with.
	h.mustBanger("vm", "create", "--name", "fresh")
	if v := h.agentVersion("fresh"); v != goodVersion {
		t.Fatalf("guest agent of a VM made after the update: %q, want %s", v, goodVersion)
	}
	if v := h.agentVersion("alive"); v != baseVersion {
		t.Fatalf("guest agent of alive after the update: %q, want %s", v, baseVersion)
	}
}

// agentVersion asks vm ports (as the owner, through the daemon and the VM's
// agent socket) which agent answers in vm, checking it lists the guest's sshd.
func (h *host) agentVersion(vm string) string {
	h.t.Helper()
	var res []api.VMPorts
	if err := json.Unmarshal([]byte(h.mustBanger("vm", "ports", vm, "--json")), &res); err != nil {
		h.t.Fatal(err)
	}
	if len(res) != 1 || res[0].Error != "" || len(res[0].Listeners) == 0 || res[0].Listeners[0].Port != 22 {
		h.t.Fatalf("vm ports %s: %+v", vm, res)
	}
	return res[0].Agent
}

func scUpdateRollbackKeepsVMAlive(t *testing.T) {
	h := newHost(t, art.bin)
	h.serveReleases()
	h.mustBanger("vm", "create", "--name", "alive")
	b := h.mustBootID("alive")
	before := h.snapshot()
	r := h.banger(h.updateArgs("--to", brokenVersion)...)
	if r.code == 0 || !strings.Contains(r.err, "(rolled back to "+baseVersion+")") {
		t.Fatalf("broken update: %d\n%s\n%s", r.code, r.out, r.err)
	}
	// The .previous binaries are back in place, byte for byte.
	after := h.snapshot()
	for _, p := range []string{"/usr/local/bin/banger", "/usr/local/bin/bangerd", "/usr/local/lib/banger/banger-vmm"} {
		if after[p] != before[p] {
			t.Errorf("%s not restored", p)
		}
	}
	// Restarted, not just restored: the daemon answers with the old version now.
	var st api.DaemonStatus
	if err := json.Unmarshal([]byte(h.mustBanger("daemon", "status", "--json")), &st); err != nil || st.Version != baseVersion {
		t.Fatalf("daemon after rollback: %+v %v", st, err)
	}
	if err := h.keepsAlive("alive", b); err != nil {
		t.Fatal(err)
	}
}

// scParkedVMSurvivesUpdate ([P9]): a parked VM (a snapshot in the root
// helper's VM tree, no VMM) survives an update whose new version fails and
// is rolled back (both units restarted twice); waking it with `vm exec`
// brings back its memory: the /dev/shm marker, the same boot_id.
func scParkedVMSurvivesUpdate(t *testing.T) {
	h := newHost(t, art.bin)
	h.serveReleases()
	h.mustBanger("vm", "create", "--name", "napper")
	b := h.mustBootID("napper")
	h.mustBanger("vm", "exec", "napper", "--", "sh", "-c", "echo survived-the-update > /dev/shm/m")
	if out := h.mustBanger("vm", "park", "napper"); !strings.HasPrefix(out, "napper parked (snapshot ") {
		t.Fatalf("vm park: %q", out)
	}
	r := h.banger(h.updateArgs("--to", brokenVersion)...)
	if r.code == 0 || !strings.Contains(r.err, "(rolled back to "+baseVersion+")") {
		t.Fatalf("broken update: %d\n%s\n%s", r.code, r.out, r.err)
	}
	if s := h.vmState("napper"); s != "parked" {
		t.Fatalf("after the update and its rollback the VM is %s, want parked", s)
	}
	out := strings.Fields(h.mustBanger("vm", "exec", "napper", "--", "sh", "-c", "cat /dev/shm/m /proc/sys/kernel/random/boot_id"))
	if len(out) != 2 || out[0] != "survived-the-update" || out[1] != b {
		t.Fatalf("woken guest says %q; want the marker and boot_id %s", out, b)
	}
	if err := h.keepsAlive("napper", b); err != nil {
		t.Fatal(err)
	}
}

// scForkUnderSystemHelper: vm fork through the installed, confined root
// helper (CAP_NET_ADMIN, CAP_CHOWN, CAP_DAC_READ_SEARCH; no CAP_SYS_ADMIN):
// the fork's VMM runs in a user and network namespace of its own, wired
// from outside; its disks are qcow2 overlays marked with a user xattr. A
// restart of the helper kills neither VM, and the fork parks and wakes.
func scForkUnderSystemHelper(t *testing.T) {
	h := newHost(t, art.bin)
	h.mustBanger("vm", "create", "--name", "mom")
	b := h.mustBootID("mom")
	h.mustBanger("vm", "exec", "mom", "--", "sh", "-c", "echo forked > /dev/shm/m")
	if out := h.mustBanger("vm", "fork", "mom", "--name", "kid"); !strings.HasPrefix(out, "kid running (") {
		t.Fatalf("vm fork: %q", out)
	}
	if _, err := h.sys.Systemctl(t.Context(), "restart", "bangerd-root.service"); err != nil {
		t.Fatal(err)
	}
	waitAnswer(t, h)
	for _, vm := range []string{"mom", "kid"} {
		if err := h.keepsAlive(vm, b); err != nil {
			t.Fatalf("%s after the helper's restart: %v", vm, err)
		}
		out := strings.Fields(h.mustBanger("vm", "exec", vm, "--", "sh", "-c", "cat /dev/shm/m; hostname"))
		if len(out) != 2 || out[0] != "forked" || out[1] != vm {
			t.Fatalf("%s says %q", vm, out)
		}
	}
	h.mustBanger("vm", "park", "kid")
	if out := strings.TrimSpace(h.mustBanger("vm", "exec", "kid", "--", "cat", "/dev/shm/m")); out != "forked" {
		t.Fatalf("the fork after park and wake: %q", out)
	}
	if r := h.banger("vm", "delete", "mom"); r.code != 2 || !strings.Contains(r.err, "kid") {
		t.Fatalf("delete of a fork's parent: %d %q", r.code, r.err)
	}
}

func scDaemonAdmin(t *testing.T) {
	h := newHost(t, art.bin)
	if s := strings.TrimSpace(h.mustBanger("daemon", "socket")); s != "/run/banger/bangerd.sock" {
		t.Fatalf("daemon socket: %q", s)
	}
	r := h.exec(time.Minute, "/usr/local/bin/bangerd", "--check-migrations", "--system")
	if r.code != 0 || !strings.HasPrefix(r.out, "compatible: /var/lib/banger/banger.db") {
		t.Fatalf("check-migrations: %d %q %q", r.code, r.out, r.err)
	}
	h.mustBanger("vm", "create", "--name", "alive")
	b := h.mustBootID("alive")
	pid := vmmPID(t, h, "alive")
	if out := h.mustBanger("daemon", "stop"); !strings.Contains(out, "daemon stopped") {
		t.Fatalf("daemon stop: %s", out)
	}
	if !h.nsPIDAlive(pid) {
		t.Fatal("VMM died with the daemon")
	}
	h.sys.Systemctl(t.Context(), "start", "bangerd.service")
	waitAnswer(t, h)
	if err := h.keepsAlive("alive", b); err != nil {
		t.Fatal(err)
	}
}

func vmmPID(t *testing.T, h *host, vm string) int {
	t.Helper()
	var v api.VM
	json.Unmarshal([]byte(h.mustBanger("vm", "show", vm, "--json")), &v)
	if v.Runtime.PID == 0 {
		t.Fatalf("no VMM pid for %s", vm)
	}
	return v.Runtime.PID
}

func (h *host) nsPIDAlive(pid int) bool {
	r := h.exec(30*time.Second, "kill", "-0", strconv.Itoa(pid))
	return r.code == 0
}

func waitAnswer(t *testing.T, h *host) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if h.banger("daemon", "status").code == 0 {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatal("daemon did not answer within 60s")
}

func scHelperRestartKeepsVMAlive(t *testing.T) {
	h := newHost(t, art.bin)
	h.mustBanger("vm", "create", "--name", "alive")
	b := h.mustBootID("alive")
	steps := [][]string{
		{"restart", "bangerd-root.service"},
		{"restart", "bangerd.service"},
		{"stop", "bangerd-root.service"}, {"start", "bangerd-root.service"},
		{"stop", "bangerd.service"}, {"start", "bangerd.service"},
	}
	// A signal the helper does not act on must not reach the VMM either.
	hupHelper(h)
	if err := h.keepsAlive("alive", b); err != nil {
		t.Fatalf("after SIGHUP to the helper: %v", err)
	}
	for _, st := range steps {
		if _, err := h.sys.Systemctl(t.Context(), st...); err != nil {
			t.Fatalf("systemctl %v: %v", st, err)
		}
		if st[0] == "stop" {
			continue
		}
		waitAnswer(t, h)
		if err := h.keepsAlive("alive", b); err != nil {
			t.Fatalf("after systemctl %s: %v", strings.Join(st, " "), err)
		}
	}
}

// hupHelper sends SIGHUP to the root helper's main process and gives a
// relayed signal time to land.
func hupHelper(h *host) {
	h.t.Helper()
	h.sh("systemctl kill --kill-who=main --signal=SIGHUP bangerd-root.service")
	time.Sleep(2 * time.Second)
}

func (h *host) killMain(unit string) {
	h.t.Helper()
	h.sh(fmt.Sprintf("kill -9 $(systemctl show -P MainPID %s)", unit))
}

func scDaemonSigkillKeepsVMAlive(t *testing.T) {
	h := newHost(t, art.bin)
	h.mustBanger("vm", "create", "--name", "alive")
	b := h.mustBootID("alive")
	h.killMain("bangerd.service")
	time.Sleep(1500 * time.Millisecond) // Restart=on-failure, RestartSec=1
	waitAnswer(t, h)
	if err := h.keepsAlive("alive", b); err != nil {
		t.Fatal(err)
	}
}

func scHelperSigkillKeepsVMAlive(t *testing.T) {
	h := newHost(t, art.bin)
	h.mustBanger("vm", "create", "--name", "alive")
	b := h.mustBootID("alive")
	h.killMain("bangerd-root.service")
	if _, err := h.sys.WaitUnit(t.Context(), "bangerd-root.service", "ActiveState", "active"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	waitAnswer(t, h)
	if err := h.keepsAlive("alive", b); err != nil {
		t.Fatal(err)
	}
	// The new helper serves: a second VM starts.
	h.mustBanger("vm", "create", "--name", "second")
	h.mustBootID("second")
}

func scVMLifecycle(t *testing.T) {
	h := newHost(t, art.bin)
	h.mustBanger("vm", "create", "--name", "life")
	h.mustBanger("vm", "exec", "life", "--", "sh", "-c", "echo persisted > /root/f")
	b1 := h.mustBootID("life")
	h.mustBanger("vm", "stop", "life")
	h.mustBanger("vm", "start", "life")
	if got := strings.TrimSpace(h.mustBanger("vm", "exec", "life", "--", "cat", "/root/f")); got != "persisted" {
		t.Fatalf("/root/f after stop/start: %q", got)
	}
	b2 := h.mustBootID("life")
	h.mustBanger("vm", "restart", "life")
	b3 := h.mustBootID("life")
	if b1 == b2 || b2 == b3 {
		t.Fatalf("boot ids %s %s %s", b1, b2, b3)
	}
	r := h.banger("vm", "run", "--rm", "--", "sh", "-c", "exit 42")
	if r.code != 42 {
		t.Fatalf("vm run exit %d: %s", r.code, r.err)
	}
	if out := h.sh("ls /var/lib/banger-vms | wc -l; ip -o link show | grep -c bgtap || true"); strings.Fields(out)[0] != "1" || strings.Fields(out)[1] != "1" {
		t.Fatalf("after --rm: vm dirs / taps: %q", out)
	}
	h.mustBanger("vm", "create", "--name", "victim")
	h.mustBanger("vm", "kill", "victim")
	if s := h.vmState("victim"); s != "stopped" {
		t.Fatalf("after kill: %s", s)
	}
	out := h.mustBanger("vm", "prune", "-f")
	if !strings.Contains(out, "victim deleted") || strings.Contains(out, "life") {
		t.Fatalf("prune: %s", out)
	}
	if err := h.keepsAlive("life", b3); err != nil {
		t.Fatalf("prune touched a running VM: %v", err)
	}
}

// scCatchesTheBug re-runs the keeps-alive checks with each of banger's three
// survival fixes undone. Each check must FAIL: that is what shows the suite
// would catch the bug coming back.
func scCatchesTheBug(t *testing.T) {
	t.Run("KillMode=control-group", func(t *testing.T) {
		h := newHost(t, art.bin)
		h.sh(`sed -i 's/^KillMode=process/KillMode=control-group/; /^SendSIGKILL=no/d' /etc/systemd/system/bangerd.service /etc/systemd/system/bangerd-root.service && systemctl daemon-reload`)
		h.mustBanger("vm", "create", "--name", "alive")
		b := h.mustBootID("alive")
		h.sys.Systemctl(t.Context(), "restart", "bangerd-root.service")
		waitAnswer(t, h)
		expectCaught(t, h.keepsAlive("alive", b))
	})
	t.Run("signal forwarding on", func(t *testing.T) {
		h := newHost(t, art.faults["forward-signals"])
		h.mustBanger("vm", "create", "--name", "alive")
		b := h.mustBootID("alive")
		// SIGHUP to the helper (which ignores it itself): with forwarding on,
		// the SDK relays it to every VMM. Unlike SIGTERM, this does not race
		// the helper's own fast exit, so the check is deterministic.
		hupHelper(h)
		expectCaught(t, h.keepsAlive("alive", b))
	})
	t.Run("rollback without restart", func(t *testing.T) {
		h := newHost(t, art.faults["no-rollback-restart"])
		h.serveReleases()
		h.mustBanger("vm", "create", "--name", "alive")
		h.mustBootID("alive")
		r := h.banger(h.updateArgs("--to", brokenVersion)...)
		if r.code == 0 {
			t.Fatal("broken update succeeded")
		}
		// The same check update_rollback_keeps_vm_alive makes: the daemon
		// must answer with the old version right after the update returns.
		var st api.DaemonStatus
		dr := h.banger("daemon", "status", "--json")
		err := json.Unmarshal([]byte(dr.out), &st)
		if err == nil && dr.code == 0 && st.Version == baseVersion {
			err = nil
		} else {
			err = fmt.Errorf("daemon not answering after rollback: %s", strings.TrimSpace(dr.err))
		}
		expectCaught(t, err)
	})
}

func expectCaught(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		t.Fatal("the keeps-alive check PASSED with the fix undone: the suite would not catch this regression")
	}
	t.Logf("caught, as expected: %v", err)
}

// scVMNamesResolve ([P12] item 5): with systemd-resolved running in the
// system, the root helper routes .vm to the daemon's DNS server through the
// bridge, so `resolvectl query web.vm` answers the VM's address; after
// 'banger ssh-config --install' (twice: one block) the owner's plain
// `ssh web.vm` runs a command in it, and --uninstall leaves the rest of
// ~/.ssh/config byte for byte; after 'system uninstall' the route is gone.
func scVMNamesResolve(t *testing.T) {
	h := newHostPrep(t, art.bin, func(h *host) {
		h.sh("systemctl start dbus.service && DEBIAN_FRONTEND=noninteractive dpkg -i /mnt/guestcache/debs/" + filepath.Base(resolvedDeb()) +
			" >/dev/null && systemctl start systemd-resolved.service && systemctl is-active systemd-resolved.service")
	})
	h.mustBanger("vm", "create", "--name", "web")
	var v api.VM
	if err := json.Unmarshal([]byte(h.mustBanger("vm", "show", "web", "--json")), &v); err != nil {
		t.Fatal(err)
	}
	if out := h.must("resolvectl", "query", "web.vm"); !strings.Contains(out, v.IP) {
		t.Fatalf("resolvectl query web.vm: %q, want %s", out, v.IP)
	}
	if out := h.must("resolvectl", "domain", "banger0"); !strings.Contains(out, "~vm") {
		t.Fatalf("resolvectl domain banger0: %q", out)
	}

	home := "/home/" + owner
	orig := "Host example.org\n    User me\n# no newline at the end"
	h.sh("mkdir -p -m 0700 " + home + "/.ssh && chown " + owner + ": " + home + "/.ssh")
	h.write(home+"/.ssh/config", orig)
	h.sh("chown " + owner + ": " + home + "/.ssh/config && chmod 0600 " + home + "/.ssh/config")
	asOwner := func(args ...string) string {
		return h.must(append([]string{"runuser", "-u", owner, "--", "env", "HOME=" + home}, args...)...)
	}
	asOwner("/usr/local/bin/banger", "ssh-config", "--install")
	asOwner("/usr/local/bin/banger", "ssh-config", "--install")
	cfg := h.sh("cat " + home + "/.ssh/config")
	if strings.Count(cfg, "# >>> banger ssh-config >>>") != 1 || !strings.HasSuffix(cfg, orig) {
		t.Fatalf("~/.ssh/config after two installs:\n%s", cfg)
	}
	if out := strings.TrimSpace(asOwner("ssh", "-o", "BatchMode=yes", "web.vm", "hostname")); out != "web" {
		t.Fatalf("ssh web.vm hostname: %q", out)
	}
	asOwner("/usr/local/bin/banger", "ssh-config", "--uninstall")
	if got := h.sh("cat " + home + "/.ssh/config"); got != orig {
		t.Fatalf("~/.ssh/config after uninstall: %q, want %q", got, orig)
	}

	h.mustBanger("vm", "delete", "web")
	h.mustBanger("system", "uninstall")
	if out := h.must("resolvectl", "domain", "banger0"); strings.Contains(out, "~vm") {
		t.Fatalf("after uninstall, resolvectl domain banger0: %q", out)
	}
}
