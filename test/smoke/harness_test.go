//go:build smoke

// Package smoke is banger's end-to-end suite: banger installed for real into
// systemd running as PID 1 of a namespace each scenario creates (with its own
// network namespace holding the bridge, taps and guests), real guests, and
// locally built releases signed with a fresh ECDSA P-256 key, served over
// HTTP inside that namespace. Run it with 'make smoke'; see README.md.
package smoke

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guestbuild"
	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/internal/testutil/sdharness"
	"golang.org/x/sys/unix"
)

var (
	flagList     = flag.Bool("smoke.list", false, "list the scenarios and exit")
	flagScenario = flag.String("smoke.scenario", "", "comma-separated scenario names to run (default: all)")
	flagJobs     = flag.Int("smoke.jobs", 3, "scenarios run in parallel (each boots at most a couple of guests)")
)

const (
	baseVersion   = "v0.smoke.base"
	goodVersion   = "v0.smoke.0"
	brokenVersion = "v0.smoke.broken-bangerd"
	owner         = "bangersmoke"
)

// artifacts built once for the whole run.
var art struct {
	root      string // 0755 temp dir bound into every namespace at /mnt/smoke
	bin       string // base build (installed by each scenario)
	faults    map[string]string
	releases  string // banger-release output: manifest.json + <version>/...
	pubKey    string
	coverDirs []string
	guestKey  string
	mu        sync.Mutex
}

func TestMain(m *testing.M) {
	flag.Parse()
	if *flagList {
		for _, s := range scenarios {
			fmt.Println(s.name)
		}
		os.Exit(0)
	}
	if os.Geteuid() != 0 {
		fmt.Println("smoke: needs root; skipping")
		os.Exit(0)
	}
	start := time.Now()
	code, err := setup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "smoke setup:", err)
		os.Exit(1)
	}
	_ = code
	rc := m.Run()
	reportCoverage()
	fmt.Printf("smoke: total wall time %s\n", time.Since(start).Round(time.Second))
	os.RemoveAll(art.root)
	os.Exit(rc)
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func run(dir string, env []string, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

func build(out, version, fault string, cover bool) error {
	pkg := "github.com/banger-dev/banger/internal/buildinfo"
	ld := fmt.Sprintf("-X %s.Version=%s -X %s.Commit=5m0ke00000000000000000000000000000000000 -X %s.BuiltAt=2026-11-25T00:00:00Z -X github.com/banger-dev/banger/internal/agent.Version=%s", pkg, version, pkg, pkg, version)
	if fault != "" {
		ld += fmt.Sprintf(" -X %s.SmokeFault=%s", pkg, fault)
	}
	for _, b := range []string{"banger", "bangerd", "banger-vmm", "banger-agent"} {
		args := []string{"build", "-trimpath", "-ldflags", ld, "-o", filepath.Join(out, b)}
		if cover && b != "banger-agent" { // the agent runs in guests, where no coverage is collected
			args = append(args, "-cover", "-coverpkg=github.com/banger-dev/banger/...")
		}
		if err := run(repoRoot(), []string{"CGO_ENABLED=0"}, "go", append(args, "./cmd/"+b)...); err != nil {
			return err
		}
	}
	return nil
}

func setup() (int, error) {
	root, err := os.MkdirTemp("", "banger-smoke-")
	if err != nil {
		return 0, err
	}
	os.Chmod(root, 0o755)
	art.root = root
	art.bin = filepath.Join(root, "base")
	art.faults = map[string]string{}
	t0 := time.Now()
	if err := build(art.bin, baseVersion, "", true); err != nil {
		return 0, err
	}
	for _, f := range []string{"forward-signals", "no-rollback-restart"} {
		d := filepath.Join(root, "fault-"+f)
		if err := build(d, baseVersion, f, true); err != nil {
			return 0, err
		}
		art.faults[f] = d
	}
	// The owner's attack on the update's staging ([P7] item 2).
	if err := run(repoRoot(), []string{"CGO_ENABLED=0"}, "go", "build", "-o", filepath.Join(root, "attacker"), "./test/smoke/attacker"); err != nil {
		return 0, err
	}
	// Releases, signed with a fresh key made by openssl.
	rel := filepath.Join(root, "release-tool")
	if err := run(repoRoot(), nil, "go", "build", "-o", rel, "./cmd/banger-release"); err != nil {
		return 0, err
	}
	art.releases = filepath.Join(root, "releases")
	key := filepath.Join(root, "release.pem")
	art.pubKey = filepath.Join(root, "release.pub")
	if err := run(root, nil, rel, "--keygen", key, "--pub", art.pubKey); err != nil {
		return 0, err
	}
	good := filepath.Join(root, "good")
	if err := build(good, goodVersion, "", true); err != nil {
		return 0, err
	}
	broken := filepath.Join(root, "broken")
	if err := build(broken, brokenVersion, "broken-daemon", true); err != nil {
		return 0, err
	}
	base := "http://127.0.0.1:8080/"
	if err := run(root, nil, rel, "--version", brokenVersion, "--prebuilt", broken, "--out", art.releases, "--key", key, "--base-url", base); err != nil {
		return 0, err
	}
	if err := run(root, nil, rel, "--version", goodVersion, "--prebuilt", good, "--out", art.releases, "--key", key, "--base-url", base, "--latest"); err != nil {
		return 0, err
	}
	if err := makeVariants(key); err != nil {
		return 0, err
	}
	// Guest artifacts, built outside any namespace (packages come from the
	// Debian archive); each scenario copies them into its system's cache.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	a, err := guestbuild.Ensure(ctx, guestbuild.Options{CacheDir: guestCache()})
	if err != nil {
		return 0, err
	}
	art.guestKey = a.Key
	if err := downloadResolved(); err != nil {
		return 0, err
	}
	fmt.Printf("smoke: setup (builds, releases, guest) took %s\n", time.Since(t0).Round(time.Second))
	return 0, nil
}

func guestCache() string { return filepath.Join(testutil.CacheDir(), "smoke") }

// resolvedDeb is the systemd-resolved package of the host's systemd
// version, for the scenario that installs it inside its system (never on
// the host, whose resolv.conf it would take over).
func resolvedDeb() string {
	v, _ := exec.Command("dpkg-query", "-W", "-f", "${Version}", "systemd").Output()
	return filepath.Join(guestCache(), "debs", "systemd-resolved_"+strings.ReplaceAll(string(v), ":", "%3a")+"_amd64.deb")
}

// downloadResolved fetches resolvedDeb from the Debian archive once.
func downloadResolved() error {
	deb := resolvedDeb()
	if _, err := os.Stat(deb); err == nil {
		return nil
	}
	v, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", "systemd").Output()
	if err != nil {
		return fmt.Errorf("systemd's version: %v", err)
	}
	if err := os.MkdirAll(filepath.Dir(deb), 0o755); err != nil {
		return err
	}
	return run(filepath.Dir(deb), nil, "apt-get", "download", "systemd-resolved="+string(v))
}

// host is one scenario's machine: systemd as PID 1 of fresh namespaces.
type host struct {
	t     *testing.T
	sys   *sdharness.System
	cover string // host dir collecting this scenario's coverage
}

// newHost starts systemd, creates the owner user, seeds the guest cache and
// installs banger from binDir with 'banger system install'.
func newHost(t *testing.T, binDir string) *host {
	t.Helper()
	return newHostPrep(t, binDir, nil)
}

// newHostPrep is newHost with prep run in the system before banger is
// installed.
func newHostPrep(t *testing.T, binDir string, prep func(h *host)) *host {
	t.Helper()
	name := strings.ToLower(regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(strings.TrimPrefix(t.Name(), "TestSmoke/"), "-"))
	if len(name) > 40 {
		name = name[:40]
	}
	sys := sdharness.Start(t, sdharness.Options{
		Name: fmt.Sprintf("%s-%d", strings.Trim(name, "-"), time.Now().UnixNano()%100000),
		Binds: []sdharness.Bind{
			{Host: art.root, Inside: "/mnt/smoke", ReadOnly: true},
			{Host: guestCache(), Inside: "/mnt/guestcache", ReadOnly: true},
		},
	})
	h := &host{t: t, sys: sys}
	cover, _ := os.MkdirTemp(art.root, "cover-")
	os.Chmod(cover, 0o755)
	h.cover = cover
	art.mu.Lock()
	art.coverDirs = append(art.coverDirs, cover)
	art.mu.Unlock()
	h.sh("useradd --create-home --shell /bin/sh " + owner)
	// The guest cache as a real install has it: the owner's (its daemon
	// reads it), and root's own build cache (where 'system install' and
	// 'update' build as root before copying into the owner's).
	h.sh("mkdir -p /var/cache/banger /var/lib/banger-cover && chmod 0777 /var/lib/banger-cover && cp -a /mnt/guestcache/guest /var/cache/banger/ && chown -R " + owner + ": /var/cache/banger")
	h.sh("mkdir -p -m 0700 /var/cache/banger-root && cp -a /mnt/guestcache/guest /var/cache/banger-root/")
	h.sh("ip link set lo up")
	// Coverage of the services: a test-side drop-in, not part of banger's units.
	for _, u := range []string{"bangerd.service", "bangerd-root.service"} {
		h.write("/etc/systemd/system/"+u+".d/smoke-cover.conf", "[Service]\nEnvironment=GOCOVERDIR=/var/lib/banger-cover\nReadWritePaths=/var/lib/banger-cover\n")
	}
	// A small-VM config.
	h.write("/etc/banger/config.toml", "default_image = \"tiny\"\nstart = \"cold\"\n\n[vm_defaults]\nvcpu = 1\nmemory_mib = 256\ndisk_size = \"128M\"\n")
	if prep != nil {
		prep(h)
	}
	inside := "/mnt/smoke/" + mustRel(binDir)
	h.must(inside+"/banger", "system", "install", "--owner", owner, "--no-image") // the guest cache is seeded above
	t.Cleanup(func() {
		if t.Failed() {
			h.dumpDiagnostics()
		}
		h.collectCoverage()
	})
	return h
}

func mustRel(p string) string {
	r, err := filepath.Rel(art.root, p)
	if err != nil {
		panic(err)
	}
	return r
}

func (h *host) write(path, text string) {
	h.t.Helper()
	if err := h.sys.WriteFile(path, []byte(text), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

type res struct {
	out, err string
	code     int
}

// exec runs argv inside the system as root, with coverage collection on.
func (h *host) exec(timeout time.Duration, argv ...string) res {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := append([]string{"env", "GOCOVERDIR=/var/lib/banger-cover", "NO_COLOR=1"}, argv...)
	so, se, code, err := h.sys.Exec(ctx, full...)
	if err != nil {
		h.t.Fatalf("%v: %v", argv, err)
	}
	return res{out: so, err: se, code: code}
}

func (h *host) sh(script string) string {
	h.t.Helper()
	r := h.exec(2*time.Minute, "sh", "-c", script)
	if r.code != 0 {
		h.t.Fatalf("sh %q: exit %d\n%s%s", script, r.code, r.out, r.err)
	}
	return r.out
}

// banger runs the installed CLI as root inside the system.
func (h *host) banger(args ...string) res {
	return h.exec(5*time.Minute, append([]string{"/usr/local/bin/banger"}, args...)...)
}

func (h *host) must(argv ...string) string {
	h.t.Helper()
	r := h.exec(5*time.Minute, argv...)
	if r.code != 0 {
		h.t.Fatalf("%s: exit %d\nstdout: %s\nstderr: %s", strings.Join(argv, " "), r.code, r.out, r.err)
	}
	return r.out
}

func (h *host) mustBanger(args ...string) string {
	h.t.Helper()
	return h.must(append([]string{"/usr/local/bin/banger"}, args...)...)
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func (h *host) bootID(vm string) (string, error) {
	r := h.banger("vm", "exec", vm, "--", "cat", "/proc/sys/kernel/random/boot_id")
	id := strings.TrimSpace(r.out)
	if r.code != 0 || !uuidRE.MatchString(id) {
		return "", fmt.Errorf("boot_id of %s: exit %d %q %s", vm, r.code, id, strings.TrimSpace(r.err))
	}
	return id, nil
}

func (h *host) mustBootID(vm string) string {
	h.t.Helper()
	id, err := h.bootID(vm)
	if err != nil {
		h.t.Fatal(err)
	}
	return id
}

func (h *host) vmState(vm string) string {
	h.t.Helper()
	r := h.banger("vm", "list", "--json")
	var vms []api.VM
	json.Unmarshal([]byte(r.out), &vms)
	for _, v := range vms {
		if v.Name == vm {
			return v.State
		}
	}
	return "absent(" + strings.TrimSpace(r.err) + ")"
}

// keepsAlive reports whether vm still answers SSH with boot_id want and is
// listed as running.
func (h *host) keepsAlive(vm, want string) error {
	got, err := h.bootID(vm)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("boot_id changed: %s → %s (the guest was rebooted)", want, got)
	}
	if s := h.vmState(vm); s != "running" {
		return fmt.Errorf("vm list says %s", s)
	}
	return nil
}

// snapshot is the host state an aborted update must leave byte for byte.
func (h *host) snapshot() map[string]string {
	h.t.Helper()
	out := map[string]string{}
	for _, p := range []string{"/usr/local/bin/banger", "/usr/local/bin/bangerd", "/usr/local/lib/banger/banger-vmm",
		"/etc/banger/install.toml", "/etc/systemd/system/bangerd.service", "/etc/systemd/system/bangerd-root.service"} {
		b, err := h.sys.ReadFile(p)
		if err != nil {
			out[p] = "ERR " + err.Error()
			continue
		}
		out[p] = string(b)
	}
	for _, p := range []string{"/usr/local/bin/banger.previous", "/usr/local/bin/bangerd.previous", "/usr/local/lib/banger/banger-vmm.previous"} {
		if _, err := h.sys.ReadFile(p); err == nil {
			out[p] = "exists"
		}
	}
	return out
}

func (h *host) assertUnchanged(before map[string]string) {
	h.t.Helper()
	after := h.snapshot()
	for k, v := range before {
		if after[k] != v {
			h.t.Errorf("%s changed", k)
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			h.t.Errorf("%s appeared", k)
		}
	}
}

// serveReleases serves the release tree on 127.0.0.1:8080 inside the
// system's network namespace (a listener created on a thread that joined
// it), for the scenario's lifetime.
func (h *host) serveReleases() {
	h.t.Helper()
	ln, err := listenInNetNS(h.sys.NetNSPath(), "127.0.0.1:8080")
	if err != nil {
		h.t.Fatal(err)
	}
	srv := &http.Server{Handler: http.FileServer(http.Dir(art.releases))}
	go srv.Serve(ln)
	h.t.Cleanup(func() { srv.Close() })
}

func listenInNetNS(nsPath, addr string) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		fd, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer unix.Close(fd)
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			ch <- result{err: err}
			return
		}
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			ch <- result{err: err}
			return
		}
		ln, err := net.Listen("tcp", addr)
		ch <- result{ln, err}
	}()
	r := <-ch
	return r.ln, r.err
}

func (h *host) updateArgs(extra ...string) []string {
	return append([]string{"update", "--manifest-url", "http://127.0.0.1:8080/manifest.json", "--pubkey-file", "/mnt/smoke/release.pub"}, extra...)
}

func (h *host) dumpDiagnostics() {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h.t.Logf("==== journal (bangerd, bangerd-root)\n%s", tail(h.sys.Journal(ctx, "bangerd.service", "bangerd-root.service"), 6000))
	so, _, _, _ := h.sys.Exec(ctx, "sh", "-c", "for f in /var/lib/banger-vms/*/serial.log; do echo \"== $f\"; tail -c 3000 \"$f\"; done")
	h.t.Logf("==== guest serial logs\n%s", so)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// collectCoverage stops the services (so they flush their counters) and
// copies the scenario's coverage files out.
func (h *host) collectCoverage() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h.sys.Systemctl(ctx, "stop", "bangerd.service", "bangerd-root.service")
	root := h.sys.Root()
	ents, _ := os.ReadDir(filepath.Join(root, "var/lib/banger-cover"))
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(root, "var/lib/banger-cover", e.Name()))
		if err == nil {
			os.WriteFile(filepath.Join(h.cover, e.Name()), b, 0o644)
		}
	}
	// Kill any VMM the scenario left (they outlive the units by design).
	h.sys.Exec(ctx, "sh", "-c", "pkill -9 -f banger-vmm; pkill -9 qemu-system; true")
}

func reportCoverage() {
	var dirs []string
	for _, d := range art.coverDirs {
		if ents, _ := os.ReadDir(d); len(ents) > 0 {
			dirs = append(dirs, d)
		}
	}
	if len(dirs) == 0 {
		fmt.Println("smoke: no coverage data collected")
		return
	}
	out, err := exec.Command("go", "tool", "covdata", "percent", "-i", strings.Join(dirs, ",")).CombinedOutput()
	if err != nil {
		fmt.Printf("smoke: covdata: %v\n%s", err, out)
		return
	}
	text := regexp.MustCompile(`\s+(github\.com/)`).ReplaceAllString(strings.TrimSpace(string(out)), "\n$1")
	lines := strings.Split(text, "\n")
	sort.Strings(lines)
	fmt.Println("smoke: coverage of what the scenarios exercised (per package):")
	for _, l := range lines {
		fmt.Println("  " + strings.TrimSpace(l))
	}
}
