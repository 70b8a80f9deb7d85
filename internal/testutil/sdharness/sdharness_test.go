package sdharness

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	// The test binary doubles as the KillMode helper run by units inside an instance.
	if os.Getenv("SDHARNESS_TEST_HELPER") == "killmode" {
		killmodeHelper()
		return
	}
	os.Exit(m.Run())
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// mustExec runs argv inside s and fails t unless it exits 0.
func mustExec(t *testing.T, s *System, argv ...string) string {
	t.Helper()
	out, errOut, code, err := s.Exec(ctxT(t, 30*time.Second), argv...)
	if err != nil || code != 0 {
		t.Fatalf("%q: exit %d, err %v\nstdout: %s\nstderr: %s", argv, code, err, out, errOut)
	}
	return out
}

// footprint is what an instance leaves on the host while it runs.
type footprint struct {
	name, cgroup, stateDir string
	pid                    int
	pidNS, netNS           string
}

func footprintOf(t *testing.T, s *System) footprint {
	t.Helper()
	f := footprint{name: s.Name(), cgroup: s.CgroupDir(), stateDir: s.StateDir(), pid: s.PID()}
	var err error
	if f.pidNS, err = os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", s.PID())); err != nil {
		t.Fatal(err)
	}
	if f.netNS, err = os.Readlink(s.NetNSPath()); err != nil {
		t.Fatal(err)
	}
	return f
}

// requireNothingLeft checks that no cgroup, state dir, mount or process of f remains.
func requireNothingLeft(t *testing.T, f footprint) {
	t.Helper()
	for _, p := range []string{f.cgroup, f.stateDir} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still exists (stat err %v)", p, err)
		}
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", f.pid)); err == nil {
		t.Errorf("pid %d still exists (%s)", f.pid, strings.TrimSpace(string(b)))
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mi), "\n") {
		if strings.Contains(line, f.stateDir) || strings.Contains(line, "sdharness-"+f.name) {
			t.Errorf("host mount left behind: %s", line)
		}
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		for _, ns := range []string{"pid", "net"} {
			l, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", ns))
			if err == nil && (l == f.pidNS || (ns == "net" && l == f.netNS)) {
				comm, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
				t.Errorf("process %s (%s) still in the instance's %s namespace", e.Name(), strings.TrimSpace(string(comm)), ns)
			}
		}
	}
}

func TestStartStopLeavesNothing(t *testing.T) {
	t0 := time.Now()
	s := Start(t, Options{Name: "startstop-" + randHex(3)})
	boot := time.Since(t0)
	f := footprintOf(t, s)
	if f.netNS == mustReadlink(t, "/proc/self/ns/net") {
		t.Error("instance shares the host's network namespace")
	}
	if _, err := os.Stat(f.cgroup); err != nil {
		t.Fatalf("cgroup: %v", err)
	}
	if got := strings.TrimSpace(mustExec(t, s, "systemctl", "is-system-running")); got != "running" && got != "degraded" {
		t.Errorf("is-system-running = %q", got)
	}
	if got := strings.TrimSpace(mustExec(t, s, "cat", "/proc/1/comm")); got != "systemd" {
		t.Errorf("PID 1 inside is %q, want systemd", got)
	}
	// systemd's cgroups live in our subtree, not in the host's.
	for _, sub := range []string{"init.scope", "system.slice"} {
		if _, err := os.Stat(filepath.Join(f.cgroup, sub)); err != nil {
			t.Errorf("%s: %v", sub, err)
		}
	}
	t1 := time.Now()
	s.Stop()
	stop := time.Since(t1)
	s.Stop() // idempotent
	requireNothingLeft(t, f)
	t.Logf("boot %.2fs, stop %.2fs", boot.Seconds(), stop.Seconds())
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

func mustReadlink(t *testing.T, p string) string {
	t.Helper()
	l, err := os.Readlink(p)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestIsolation(t *testing.T) {
	hostRW, hostRO := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(hostRO, "artifact"), []byte("from-host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	name := "iso-" + randHex(3)
	s := Start(t, Options{Name: name, NetNS: true, Binds: []Bind{
		{Host: hostRW, Inside: "/var/cache/banger-test"},
		{Host: hostRO, Inside: "/opt/sdh-build", ReadOnly: true},
		{Host: hostRO, Inside: "/tmp/sdh-build", ReadOnly: true}, // below the /tmp tmpfs
	}})
	tag := name

	t.Run("overlay", func(t *testing.T) {
		probe := "/usr/local/bin/sdh-probe-" + tag
		if err := s.WriteFile(probe, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		if got := mustExec(t, s, probe); got != "hi\n" {
			t.Errorf("probe said %q", got)
		}
		if b, err := s.ReadFile(probe); err != nil || !bytes.HasPrefix(b, []byte("#!/bin/sh")) {
			t.Errorf("ReadFile: %q %v", b, err)
		}
		mustExec(t, s, "sh", "-c", "mkdir -p /etc/banger && touch /etc/banger/"+tag+" /var/lib/"+tag+" /var/cache/"+tag)
		for _, p := range []string{probe, "/etc/banger/" + tag, "/var/lib/" + tag, "/var/cache/" + tag} {
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Errorf("%s reached the host (stat err %v)", p, err)
			}
		}
		if got := strings.TrimSpace(mustExec(t, s, "hostname")); got != name {
			t.Errorf("hostname %q, want %q", got, name)
		}
		host, _ := os.ReadFile("/etc/machine-id")
		if got, _ := s.ReadFile("/etc/machine-id"); bytes.Equal(got, host) {
			t.Error("machine-id shared with the host")
		}
	})

	t.Run("symlinks stay inside", func(t *testing.T) {
		mustExec(t, s, "ln", "-sfn", "/root", "/usr/local/sdh-abs")
		mustExec(t, s, "ln", "-sfn", "../../../../../../../..", "/usr/local/sdh-rel")
		abs := "sdh-escape-abs-" + tag
		rel := "sdh-escape-rel-" + tag
		if err := s.WriteFile("/usr/local/sdh-abs/"+abs, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := s.WriteFile("/usr/local/sdh-rel/tmp/"+rel, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		mustExec(t, s, "test", "-f", "/root/"+abs)
		mustExec(t, s, "test", "-f", "/tmp/"+rel)
		for _, p := range []string{"/root/" + abs, "/tmp/" + rel} {
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Errorf("WriteFile escaped to the host: %s (stat err %v)", p, err)
			}
		}
	})

	t.Run("binds", func(t *testing.T) {
		for _, dir := range []string{"/opt/sdh-build", "/tmp/sdh-build"} {
			if got := mustExec(t, s, "cat", dir+"/artifact"); got != "from-host\n" {
				t.Errorf("%s/artifact = %q", dir, got)
			}
			if _, _, code, _ := s.Exec(ctxT(t, 10*time.Second), "touch", dir+"/new"); code == 0 {
				t.Errorf("read-only bind %s is writable", dir)
			}
		}
		mustExec(t, s, "sh", "-c", "echo from-inside > /var/cache/banger-test/out")
		if b, err := os.ReadFile(filepath.Join(hostRW, "out")); err != nil || string(b) != "from-inside\n" {
			t.Errorf("rw bind: host sees %q, %v", b, err)
		}
	})

	t.Run("devices", func(t *testing.T) {
		mustExec(t, s, "sh", "-c", "test -c /dev/null && test -c /dev/zero && test -c /dev/random && test -c /dev/urandom && test -c /dev/net/tun && test -c /dev/pts/ptmx")
		if got := mustExec(t, s, "sh", "-c", "head -c 16 /dev/urandom | wc -c"); strings.TrimSpace(got) != "16" {
			t.Errorf("urandom: %q", got)
		}
		mustExec(t, s, "sh", "-c", "exec 3<>/dev/ptmx") // allocates a pty in the private devpts
		if _, err := os.Stat("/dev/kvm"); err == nil {
			mustExec(t, s, "test", "-c", "/dev/kvm")
		}
	})

	t.Run("network namespace", func(t *testing.T) {
		links := mustExec(t, s, "ip", "-o", "link", "show")
		if n := strings.Count(strings.TrimSpace(links), "\n") + 1; n != 1 || !strings.Contains(links, ": lo:") || !strings.Contains(links, "UP") {
			t.Errorf("want only lo, up; got:\n%s", links)
		}
		inside := strings.TrimSpace(mustExec(t, s, "readlink", "/proc/self/ns/net"))
		if inside != mustReadlink(t, s.NetNSPath()) || inside == mustReadlink(t, "/proc/self/ns/net") {
			t.Errorf("netns inside %s, NetNSPath %s, host %s", inside, mustReadlink(t, s.NetNSPath()), mustReadlink(t, "/proc/self/ns/net"))
		}
		hostFwd, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		mustExec(t, s, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
		if got := mustExec(t, s, "cat", "/proc/sys/net/ipv4/ip_forward"); got != "1\n" {
			t.Errorf("ip_forward inside = %q", got)
		}
		if after, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); !bytes.Equal(after, hostFwd) {
			t.Errorf("host ip_forward changed: %q -> %q", hostFwd, after)
		}
		if _, _, code, _ := s.Exec(ctxT(t, 10*time.Second), "sh", "-c", "cat /proc/sys/kernel/sysrq > /proc/sys/kernel/sysrq"); code == 0 {
			t.Error("/proc/sys/kernel is writable inside")
		}
		tap := "sdhtap" + randHex(2)
		mustExec(t, s, "ip", "tuntap", "add", "dev", tap, "mode", "tap")
		mustExec(t, s, "ip", "addr", "add", "172.31.250.1/24", "dev", tap)
		mustExec(t, s, "ip", "link", "set", tap, "up")
		if _, err := net.InterfaceByName(tap); err == nil {
			t.Errorf("tap %s visible on the host", tap)
		}
	})

	t.Run("exec", func(t *testing.T) {
		if got := mustExec(t, s, "cat", "/proc/self/cgroup"); !strings.Contains(got, "0::/"+execCgroup+"\n") {
			t.Errorf("exec'd process cgroup:\n%s", got)
		}
		if _, _, code, err := s.Exec(ctxT(t, 10*time.Second), "sh", "-c", "exit 7"); code != 7 || err != nil {
			t.Errorf("exit 7: code %d err %v", code, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		t0 := time.Now()
		_, _, code, err := s.Exec(ctx, "sleep", "37.5")
		if err == nil || code != -1 || time.Since(t0) > 5*time.Second {
			t.Errorf("cancelled exec: code %d err %v after %v", code, err, time.Since(t0))
		}
		// Nothing of it may stay in the instance once Exec has returned: not the process, not a
		// zombie (an orphan re-parented to the host's init, outside the instance, lingers until
		// that reaps it and stalls systemd-shutdown at Stop).
		ourNS := mustReadlink(t, fmt.Sprintf("/proc/%d/ns/pid", s.PID()))
		deadline := time.Now().Add(200 * time.Millisecond)
		for {
			left := ""
			ents, _ := os.ReadDir("/proc")
			for _, e := range ents {
				if ns, _ := os.Readlink("/proc/" + e.Name() + "/ns/pid"); ns != ourNS {
					continue
				}
				if comm, _ := os.ReadFile("/proc/" + e.Name() + "/comm"); string(comm) == "sleep\n" {
					left = e.Name() + " state " + processState(atoi(e.Name()))
				}
			}
			if left == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("sleep of the cancelled Exec left in the instance: host pid %s", left)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	// After all of the above, poweroff must still be quick (a stray process or zombie inside
	// makes systemd-shutdown wait for it until Stop's SIGKILL).
	t0 := time.Now()
	s.Stop()
	if d := time.Since(t0); d > 3*time.Second {
		t.Errorf("Stop took %v; poweroff stalled", d)
	}
}

func TestHostNet(t *testing.T) {
	s := Start(t, Options{Name: "hostnet-" + randHex(3), HostNet: true})
	if got, host := mustReadlink(t, s.NetNSPath()), mustReadlink(t, "/proc/self/ns/net"); got != host {
		t.Errorf("netns %s, host %s", got, host)
	}
	// Writes back the current value: harmless even if /proc/sys/net were writable.
	if _, _, code, _ := s.Exec(ctxT(t, 10*time.Second), "sh", "-c", "cat /proc/sys/net/ipv4/ip_forward > /proc/sys/net/ipv4/ip_forward"); code == 0 {
		t.Error("/proc/sys/net is writable with HostNet")
	}
}

// barrier lets n parallel subtests wait for each other.
type barrier struct {
	mu sync.Mutex
	n  int
	ch chan struct{}
}

func newBarrier(n int) *barrier { return &barrier{n: n, ch: make(chan struct{})} }

func (b *barrier) arrive() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.n--; b.n == 0 {
		close(b.ch)
	}
}

func (b *barrier) wait(t *testing.T) {
	select {
	case <-b.ch:
	case <-time.After(60 * time.Second):
		t.Fatal("peer instance never arrived")
	}
}

func TestConcurrentSystems(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("sdharness: needs root")
	}
	type info struct {
		name    string
		pid     int
		netNS   string
		mainPID int // host PID of the probe unit's main process
		fp      footprint
	}
	var (
		mu    sync.Mutex
		infos = map[string]info{}
		up    = newBarrier(2)
		done  = newBarrier(2)
	)
	suffix := randHex(3)
	t.Run("group", func(t *testing.T) {
		for _, n := range []string{"a", "b"} {
			t.Run(n, func(t *testing.T) {
				t.Parallel()
				arrivedUp, arrivedDone := false, false
				defer func() { // let the peer go on if we fail or skip early
					if !arrivedUp {
						up.arrive()
					}
					if !arrivedDone {
						done.arrive()
					}
				}()
				name := "conc-" + n + "-" + suffix
				s := Start(t, Options{Name: name})
				if err := s.WriteFile("/etc/sdh-id", []byte(name), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := s.InstallUnit("probe.service", "[Service]\nType=simple\nExecStart=/bin/sleep infinity\n"); err != nil {
					t.Fatal(err)
				}
				if _, err := s.Systemctl(ctxT(t, 30*time.Second), "start", "probe.service"); err != nil {
					t.Fatal(err)
				}
				m, err := s.Show(ctxT(t, 10*time.Second), "probe.service", "MainPID")
				if err != nil {
					t.Fatal(err)
				}
				nsMain, _ := strconv.Atoi(m["MainPID"])
				hp, err := s.HostPID(nsMain)
				if err != nil {
					t.Fatal(err)
				}
				mu.Lock()
				infos[n] = info{name: name, pid: s.PID(), netNS: mustReadlink(t, s.NetNSPath()), mainPID: hp, fp: footprintOf(t, s)}
				mu.Unlock()
				arrivedUp = true
				up.arrive()
				up.wait(t)

				// Both instances are up now.
				mu.Lock()
				me, peer := infos[n], infos[map[string]string{"a": "b", "b": "a"}[n]]
				mu.Unlock()
				if peer.pid == 0 {
					t.Fatal("peer did not start")
				}
				if me.pid == peer.pid || me.netNS == peer.netNS || me.mainPID == peer.mainPID || me.fp.pidNS == peer.fp.pidNS {
					t.Errorf("instances not distinct: %+v vs %+v", me, peer)
				}
				if got, _ := s.ReadFile("/etc/sdh-id"); string(got) != name {
					t.Errorf("/etc/sdh-id = %q, want %q (overlays shared?)", got, name)
				}
				if got := strings.TrimSpace(mustExec(t, s, "hostname")); got != name {
					t.Errorf("hostname %q", got)
				}
				cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", me.mainPID))
				if !strings.Contains(string(cg), "/sdharness-"+name+"/system.slice/probe.service") {
					t.Errorf("probe main pid %d cgroup %q", me.mainPID, cg)
				}
				if _, err := s.HostPID(999999); err == nil {
					t.Error("HostPID(999999) succeeded")
				}
				arrivedDone = true
				done.arrive()
				done.wait(t) // stay up until the peer's checks are done
			})
		}
	})
	for _, in := range infos {
		requireNothingLeft(t, in.fp)
	}
}

func TestUnitRuns(t *testing.T) {
	s := Start(t, Options{Name: "unit-" + randHex(3)})
	const unit = "sdh-sleep.service"
	if err := s.InstallUnit(unit, "[Unit]\nDescription=sdharness sleep\n\n[Service]\nType=simple\nExecStart=/bin/sleep infinity\n"); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 30*time.Second)
	if _, err := s.Systemctl(ctx, "start", unit); err != nil {
		t.Fatal(err)
	}
	m, err := s.Show(ctx, unit, "ActiveState", "SubState", "MainPID", "ControlGroup", "NoSuchProperty")
	if err != nil {
		t.Fatal(err)
	}
	if m["ActiveState"] != "active" || m["SubState"] != "running" || m["ControlGroup"] != "/system.slice/"+unit {
		t.Errorf("unit state %v", m)
	}
	if _, ok := m["NoSuchProperty"]; !ok {
		t.Error("Show dropped a requested property")
	}
	nsPID, _ := strconv.Atoi(m["MainPID"])
	if nsPID <= 1 {
		t.Fatalf("MainPID %q", m["MainPID"])
	}
	hp, err := s.HostPID(nsPID)
	if err != nil {
		t.Fatal(err)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", hp))
	if err != nil || !bytes.Equal(cmdline, []byte("/bin/sleep\x00infinity\x00")) {
		t.Errorf("host pid %d cmdline %q, %v", hp, cmdline, err)
	}
	cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", hp))
	if !strings.Contains(string(cg), "0::/sdharness-"+s.Name()+"/system.slice/"+unit+"\n") {
		t.Errorf("host pid %d cgroup %q", hp, cg)
	}
	if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", hp)); !strings.Contains(string(st), fmt.Sprintf("\nPPid:\t%d\n", s.PID())) {
		t.Errorf("main pid's parent is not systemd (host pid %d)", s.PID())
	}
	if j := s.Journal(ctx, unit); !strings.Contains(j, "Started "+unit) && !strings.Contains(j, "Started sdharness sleep") {
		t.Errorf("journal has no start line:\n%s", j)
	}
	if _, err := s.Systemctl(ctx, "stop", unit); err != nil {
		t.Fatal(err)
	}
	if st := processState(hp); st != "" && st != "Z" {
		t.Errorf("main pid %d still running (state %s) after stop", hp, st)
	}
}

// processState returns the state letter of host pid (R, S, Z, ...) or "" if it is gone.
func processState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) == 0 {
		return ""
	}
	return f[0]
}
