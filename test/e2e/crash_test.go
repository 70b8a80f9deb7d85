package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

// TestDaemonKilledAtEachStageRecovers is [P7] item 10: the daemon is
// SIGKILLed at each stage of create and start (a test fault,
// BANGER_TEST_CRASH_AT: no real part dies at an exact line on demand), then
// a fresh daemon starts. Nothing may leak — rows, disks, taps, NAT rules,
// VMM processes — and a VM that is left must be cleanly stopped (and start
// again) or usable.
func TestDaemonKilledAtEachStageRecovers(t *testing.T) {
	v := newVMEnv(t)
	vmms := func() string {
		out, _ := exec.Command("pgrep", "-af", filepath.Join(v.home, ".local", "state", "banger", "vms")).Output()
		return strings.TrimSpace(string(out))
	}
	for _, point := range []string{"recorded", "disks", "tap", "nat", "launched", "running"} {
		t.Run(point, func(t *testing.T) {
			v.banger("daemon", "stop")
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			cmd := exec.CommandContext(ctx, "ip", "netns", "exec", v.ns, filepath.Join(v.bin, "banger"), "vm", "create", "--name", "c-"+point, "--nat", "--image", "tiny")
			cmd.Env = append(v.environ(), "BANGER_TEST_CRASH_AT="+point)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			cancel()
			if err == nil {
				t.Fatalf("create survived a daemon killed at %s: %s", point, out.String())
			}
			// A fresh daemon (auto-started) reconciles.
			var vms []api.VM
			if err := json.Unmarshal([]byte(v.must("vm", "list", "--json")), &vms); err != nil {
				t.Fatal(err)
			}
			switch {
			case len(vms) == 0:
			case len(vms) == 1 && vms[0].State == api.StateStopped:
				// Cleanly stopped: nothing of it runs, and it starts again.
				if taps := v.taps(); len(taps) != 0 {
					t.Errorf("stopped VM left taps %v", taps)
				}
				if rs := v.ruleset(); strings.Contains(rs, vms[0].IP+" ") || strings.Contains(rs, vms[0].IP+"\n") {
					t.Errorf("stopped VM left rules for %s:\n%s", vms[0].IP, rs)
				}
				if p := vmms(); p != "" {
					t.Errorf("stopped VM left a VMM: %s", p)
				}
				v.must("vm", "start", vms[0].Name)
				v.must("vm", "exec", vms[0].Name, "--", "true")
			case len(vms) == 1 && vms[0].State == api.StateRunning:
				v.must("vm", "exec", vms[0].Name, "--", "true")
			default:
				t.Fatalf("after a crash at %s: %+v", point, vms)
			}
			for _, vm := range vms {
				v.must("vm", "delete", vm.Name)
			}
			if vms := strings.TrimSpace(v.must("vm", "list", "--json")); vms != "[]" {
				t.Errorf("rows left: %s", vms)
			}
			if taps := v.taps(); len(taps) != 0 {
				t.Errorf("taps left: %v", taps)
			}
			if rs := v.ruleset(); strings.Contains(rs, "172.30.0.2") {
				t.Errorf("per-VM rules left:\n%s", rs)
			}
			if dirs := v.vmDirs(); len(dirs) != 0 {
				t.Errorf("VM dirs left: %v", dirs)
			}
			if p := vmms(); p != "" {
				t.Errorf("VMM processes left: %s", p)
			}
			if t.Failed() {
				v.dumpLogs()
			}
		})
	}
}
