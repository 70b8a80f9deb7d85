package sdharness

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// killmodeHelper is a stand-in for banger's root helper (the test binary re-executed by a unit
// with SDHARNESS_TEST_HELPER=killmode). On start it adopts the child recorded in
// $SDH_STATE.pid if that is still a live "sleep", else it forks `sleep infinity` (a VM monitor
// stand-in) and records it. It then idles until SIGTERM/SIGINT/SIGHUP; with SDH_IGNORE_TERM=1
// it ignores SIGTERM (a hung helper). Events are appended to $SDH_STATE.events and printed.
func killmodeHelper() {
	state := os.Getenv("SDH_STATE")
	ignoreTerm := os.Getenv("SDH_IGNORE_TERM") == "1"
	event := func(format string, a ...any) {
		msg := fmt.Sprintf(format, a...) + "\n"
		fmt.Print(msg)
		if f, err := os.OpenFile(state+".events", os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			f.WriteString(msg)
			f.Close()
		}
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)

	adopted := false
	if b, err := os.ReadFile(state + ".pid"); err == nil {
		if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); pid > 0 && liveSleep(pid) {
			event("ADOPT %d helper=%d", pid, os.Getpid())
			adopted = true
		}
	}
	if !adopted {
		cmd := exec.Command("sleep", "infinity")
		if err := cmd.Start(); err != nil {
			event("FAIL %v", err)
			os.Exit(1)
		}
		os.WriteFile(state+".pid", []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
		event("SPAWN %d helper=%d", cmd.Process.Pid, os.Getpid())
		go cmd.Wait()
	}
	for s := range sigs {
		if s == syscall.SIGTERM && ignoreTerm {
			event("IGNORE %v helper=%d", s, os.Getpid())
			continue
		}
		event("EXIT %v helper=%d", s, os.Getpid())
		os.Exit(0)
	}
}

func liveSleep(pid int) bool {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && strings.TrimSpace(string(comm)) == "sleep" && processState(pid) != "Z"
}

// kmUnit drives one helper unit inside s.
type kmUnit struct {
	t    *testing.T
	s    *System
	unit string
}

const kmBin = "/usr/local/bin/sdh-killmode-helper"

func newKMUnit(t *testing.T, s *System, unit, serviceExtra string, ignoreTerm bool) *kmUnit {
	t.Helper()
	ign := "0"
	if ignoreTerm {
		ign = "1"
	}
	text := fmt.Sprintf(`[Unit]
Description=sdharness killmode helper %[1]s

[Service]
Type=simple
Environment=SDHARNESS_TEST_HELPER=killmode SDH_STATE=/run/sdh-km/%[1]s SDH_IGNORE_TERM=%[2]s
ExecStart=%[3]s
%[4]s
`, unit, ign, kmBin, serviceExtra)
	if err := s.InstallUnit(unit, text); err != nil {
		t.Fatal(err)
	}
	k := &kmUnit{t: t, s: s, unit: unit}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("journal of %s:\n%s", unit, s.Journal(ctxT(t, 10*time.Second), unit))
			ev, _ := s.ReadFile("/run/sdh-km/" + unit + ".events")
			t.Logf("events:\n%s", ev)
		}
		// Kill whatever the scenario left (survivors, hung helpers), so scenarios stay independent.
		s.Systemctl(ctxT(t, 10*time.Second), "kill", "--kill-whom=all", "--signal=SIGKILL", unit)
		s.Systemctl(ctxT(t, 10*time.Second), "stop", unit)
		s.Systemctl(ctxT(t, 10*time.Second), "reset-failed", unit)
	})
	return k
}

// events returns the (SPAWN|ADOPT) lines so far.
func (k *kmUnit) starts() []string {
	b, _ := k.s.ReadFile("/run/sdh-km/" + k.unit + ".events")
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "SPAWN ") || strings.HasPrefix(l, "ADOPT ") {
			out = append(out, l)
		}
	}
	return out
}

// systemctl runs systemctl verb unit and waits for the helper's n-th start event when
// wantStarts > 0. It returns the verb's error.
func (k *kmUnit) systemctl(verb string, wantStarts int) error {
	k.t.Helper()
	t0 := time.Now()
	_, err := k.s.Systemctl(ctxT(k.t, 30*time.Second), verb, k.unit)
	k.t.Logf("systemctl %s %s: %.2fs err=%v", verb, k.unit, time.Since(t0).Seconds(), err)
	if wantStarts > 0 {
		deadline := time.Now().Add(10 * time.Second)
		for len(k.starts()) < wantStarts {
			if time.Now().After(deadline) {
				k.t.Fatalf("helper start #%d never logged; events %q", wantStarts, k.starts())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return err
}

// lastStart returns the kind (SPAWN/ADOPT), child ns pid and helper ns pid of the last start.
func (k *kmUnit) lastStart() (kind string, child, helper int) {
	k.t.Helper()
	st := k.starts()
	if len(st) == 0 {
		k.t.Fatal("no start event")
	}
	var h string
	if _, err := fmt.Sscanf(st[len(st)-1], "%s %d %s", &kind, &child, &h); err != nil {
		k.t.Fatalf("parse %q: %v", st[len(st)-1], err)
	}
	helper, _ = strconv.Atoi(strings.TrimPrefix(h, "helper="))
	return kind, child, helper
}

// alive reports whether the in-namespace pid is a live (non-zombie) process.
func (k *kmUnit) alive(nsPID int) bool {
	hp, err := k.s.HostPID(nsPID)
	if err != nil {
		return false
	}
	st := processState(hp)
	return st != "" && st != "Z"
}

// gone waits up to 2 s for nsPID to be dead (killed processes are reaped asynchronously).
func (k *kmUnit) gone(nsPID int) bool {
	deadline := time.Now().Add(2 * time.Second)
	for k.alive(nsPID) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

func (k *kmUnit) prop(name string) string {
	m, err := k.s.Show(ctxT(k.t, 10*time.Second), k.unit, name)
	if err != nil {
		k.t.Fatal(err)
	}
	return m[name]
}

// TestKillMode reproduces build-machine.md §5 "KillMode / SendSIGKILL" on the host's real
// systemd: what happens to a long-lived child of a service (banger's VM monitors, children of
// the root helper) on stop and restart.
func TestKillMode(t *testing.T) {
	s := Start(t, Options{Name: "killmode-" + randHex(3)})
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WriteFile(kmBin, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	mustExec(t, s, "mkdir", "-p", "/run/sdh-km")

	// (a) default KillMode=control-group: the whole cgroup gets SIGTERM; the child dies on
	// stop and on restart.
	t.Run("control-group kills the child", func(t *testing.T) {
		k := newKMUnit(t, s, "km-a.service", "TimeoutStopSec=3", false)
		k.systemctl("start", 1)
		kind, c1, _ := k.lastStart()
		if kind != "SPAWN" || !k.alive(c1) {
			t.Fatalf("start: %s %d alive=%v", kind, c1, k.alive(c1))
		}
		k.systemctl("restart", 2)
		if !k.gone(c1) {
			t.Errorf("child %d survived restart", c1)
		}
		kind, c2, _ := k.lastStart()
		if kind != "SPAWN" || c2 == c1 {
			t.Errorf("after restart: %s %d, want a new SPAWN", kind, c2)
		}
		k.systemctl("stop", 0)
		if !k.gone(c2) {
			t.Errorf("child %d survived stop", c2)
		}
		if st := k.prop("ActiveState"); st != "inactive" {
			t.Errorf("ActiveState %s after stop", st)
		}
	})

	// (b) KillMode=process: only the main process is signalled; the child survives stop,
	// re-parented to systemd and still in the unit's cgroup, and is adopted by the next start.
	t.Run("process keeps the child", func(t *testing.T) {
		k := newKMUnit(t, s, "km-b.service", "KillMode=process\nTimeoutStopSec=3", false)
		k.systemctl("start", 1)
		_, c1, h1 := k.lastStart()
		k.systemctl("stop", 0)
		if !k.gone(h1) {
			t.Errorf("helper %d survived stop", h1)
		}
		if !k.alive(c1) {
			t.Fatalf("child %d killed by stop", c1)
		}
		hp, _ := s.HostPID(c1)
		if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", hp)); !strings.Contains(string(st), fmt.Sprintf("\nPPid:\t%d\n", s.PID())) {
			t.Errorf("survivor not re-parented to systemd:\n%s", st)
		}
		if cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", hp)); !strings.Contains(string(cg), "/system.slice/km-b.service\n") {
			t.Errorf("survivor cgroup %q", cg)
		}
		k.systemctl("start", 2)
		if kind, c, _ := k.lastStart(); kind != "ADOPT" || c != c1 {
			t.Errorf("start after stop: %s %d, want ADOPT %d", kind, c, c1)
		}
		k.systemctl("restart", 3)
		if kind, c, _ := k.lastStart(); kind != "ADOPT" || c != c1 || !k.alive(c1) {
			t.Errorf("restart: %s %d (alive %v), want ADOPT %d", kind, c, k.alive(c1), c1)
		}
	})

	// (c) KillMode=process + SendSIGKILL=no (banger's root helper unit): the child survives
	// stop, start, restart, restart.
	t.Run("process+SendSIGKILL=no keeps the child", func(t *testing.T) {
		k := newKMUnit(t, s, "km-c.service", "KillMode=process\nSendSIGKILL=no\nTimeoutStopSec=3", false)
		k.systemctl("start", 1)
		_, c1, _ := k.lastStart()
		k.systemctl("stop", 0)
		if !k.alive(c1) {
			t.Fatalf("child %d killed by stop", c1)
		}
		n := 1
		for _, verb := range []string{"start", "restart", "restart"} {
			n++
			k.systemctl(verb, n)
			kind, c, h := k.lastStart()
			if kind != "ADOPT" || c != c1 || !k.alive(c1) {
				t.Fatalf("%s: %s %d (alive %v), want ADOPT %d", verb, kind, c, k.alive(c1), c1)
			}
			if main := k.prop("MainPID"); main != strconv.Itoa(h) {
				t.Errorf("%s: MainPID %s, helper %d", verb, main, h)
			}
		}
	})

	// (c2) as (c) with a helper that ignores SIGTERM: systemd never SIGKILLs it; stop takes
	// 2 x TimeoutStopSec and leaves the unit failed with the hung helper running, and the next
	// start runs a second helper beside it.
	t.Run("process+SendSIGKILL=no never kills a hung helper", func(t *testing.T) {
		k := newKMUnit(t, s, "km-c2.service", "KillMode=process\nSendSIGKILL=no\nTimeoutStopSec=1", true)
		k.systemctl("start", 1)
		_, c1, h1 := k.lastStart()
		t0 := time.Now()
		k.systemctl("stop", 0)
		took := time.Since(t0)
		if took < 1500*time.Millisecond {
			t.Errorf("stop took %v, want about 2 x TimeoutStopSec", took)
		}
		if !k.alive(h1) || !k.alive(c1) {
			t.Fatalf("after stop: helper %d alive=%v, child %d alive=%v; want both alive", h1, k.alive(h1), c1, k.alive(c1))
		}
		if st, res := k.prop("ActiveState"), k.prop("Result"); st != "failed" || res != "timeout" {
			t.Errorf("after stop: ActiveState=%s Result=%s, want failed/timeout", st, res)
		}
		k.systemctl("start", 2)
		_, _, h2 := k.lastStart()
		if h2 == h1 || !k.alive(h1) || !k.alive(h2) {
			t.Errorf("second start: helpers %d (alive %v) and %d (alive %v), want two live helpers", h1, k.alive(h1), h2, k.alive(h2))
		}
	})

	// (d) KillMode=mixed: SIGTERM to the main process, then SIGKILL to the rest of the cgroup.
	t.Run("mixed kills the child", func(t *testing.T) {
		k := newKMUnit(t, s, "km-d.service", "KillMode=mixed\nTimeoutStopSec=3", false)
		k.systemctl("start", 1)
		_, c1, _ := k.lastStart()
		k.systemctl("stop", 0)
		if !k.gone(c1) {
			t.Errorf("child %d survived stop", c1)
		}
	})
}
