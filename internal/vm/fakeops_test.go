package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/privops"
	"github.com/banger-dev/banger/internal/vmdir"
)

// fakeOps is a root helper without root: it keeps the taps, NAT rules and
// VMMs it was asked for, makes VM directories on disk, and runs each VMM as
// a real idle process whose command line names the VM's API socket (so
// vmm.Running finds it through the pidfile, as it finds a real one). A
// method named in fail returns that error instead of acting.
type fakeOps struct {
	vmsDir  string
	vmmBin  string // this test binary, under a VMM's name (vmm.Identify checks it)
	fail    map[string]error
	console string // what each launched guest prints on its serial console

	mu    sync.Mutex
	calls []string
	taps  map[string]bool
	nats  map[string]bool // by guest IP
	vmms  map[string]*fakeVMM
}

type fakeVMM struct {
	cmd  *exec.Cmd
	done chan struct{}
}

var _ privops.Ops = (*fakeOps)(nil)

func newFakeOps(t *testing.T, vmsDir string) *fakeOps {
	f := &fakeOps{vmsDir: vmsDir, vmmBin: vmmNamedTestBinary(t),
		fail: map[string]error{}, taps: map[string]bool{}, nats: map[string]bool{}, vmms: map[string]*fakeVMM{}}
	t.Cleanup(func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, v := range f.vmms {
			_ = v.cmd.Process.Kill()
			<-v.done
		}
	})
	return f
}

// call records a call and returns the error it is to fail with, if any.
func (f *fakeOps) call(method string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, method)
	return f.fail[method]
}

// seen returns the calls to the named methods, in order.
func (f *fakeOps) seen(methods ...string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		if slices.Contains(methods, c) {
			out = append(out, c)
		}
	}
	return out
}

// leftovers lists what the fake root helper still holds: VM directories
// on disk, taps, NAT rules and VMM processes that are alive.
func (f *fakeOps) leftovers() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	entries, _ := os.ReadDir(f.vmsDir)
	for _, e := range entries {
		out = append(out, "dir "+e.Name())
	}
	for t := range f.taps {
		out = append(out, "tap "+t)
	}
	for ip := range f.nats {
		out = append(out, "nat "+ip)
	}
	for id, v := range f.vmms {
		select {
		case <-v.done:
		default:
			out = append(out, fmt.Sprintf("vmm %s (pid %d)", id, v.cmd.Process.Pid))
		}
	}
	sort.Strings(out)
	return out
}

func (f *fakeOps) EnsureBridge(ctx context.Context, r privops.BridgeReq) error {
	return f.call("EnsureBridge")
}

func (f *fakeOps) CreateTap(ctx context.Context, r privops.TapReq) error {
	if err := f.call("CreateTap"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.taps[r.Name] = true
	return nil
}

func (f *fakeOps) DeleteTap(ctx context.Context, r privops.TapReq) error {
	if err := f.call("DeleteTap"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.taps, r.Name)
	return nil
}

func (f *fakeOps) ListTaps(ctx context.Context) ([]string, error) {
	if err := f.call("ListTaps"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for t := range f.taps {
		out = append(out, t)
	}
	return out, nil
}

func (f *fakeOps) AddNAT(ctx context.Context, r privops.NATReq) error {
	if err := f.call("AddNAT"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nats[r.GuestIP] = true
	return nil
}

func (f *fakeOps) RemoveNAT(ctx context.Context, r privops.NATReq) error {
	if err := f.call("RemoveNAT"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.nats, r.GuestIP)
	return nil
}

func (f *fakeOps) PrepareDisks(ctx context.Context, r privops.DisksReq) (privops.DisksResp, error) {
	if err := f.call("PrepareDisks"); err != nil {
		return privops.DisksResp{}, err
	}
	d := vmdir.New(f.vmsDir, r.ID)
	if err := os.MkdirAll(d.Path(), 0o755); err != nil {
		return privops.DisksResp{}, err
	}
	for _, p := range []string{d.Rootfs(), d.WorkDisk()} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			return privops.DisksResp{}, err
		}
	}
	return privops.DisksResp{CloneMethod: "reflink"}, nil
}

func (f *fakeOps) RemoveVMDir(ctx context.Context, r privops.VMReq) error {
	if err := f.call("RemoveVMDir"); err != nil {
		return err
	}
	return os.RemoveAll(vmdir.New(f.vmsDir, r.ID).Path())
}

// fakeVMMEnv makes the test binary the idle process of a fake VMM
// (TestFakeVMMProcess).
const fakeVMMEnv = "BANGER_TEST_FAKE_VMM"

// TestFakeVMMProcess is not a test: it is the process fakeOps runs as a
// VMM, idle until it is killed (or the test binary's timeout ends it).
func TestFakeVMMProcess(t *testing.T) {
	if os.Getenv(fakeVMMEnv) == "" {
		t.Skip("the idle process of fakeOps' VMMs")
	}
	time.Sleep(time.Hour)
}

// vmmNamedTestBinary links (or copies) this test binary to banger-vmm in a
// temporary directory.
func vmmNamedTestBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "banger-vmm")
	if err := os.Link(self, bin); err == nil {
		return bin
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

func (f *fakeOps) LaunchVMM(ctx context.Context, r privops.LaunchReq) (privops.LaunchResp, error) {
	if err := f.call("LaunchVMM"); err != nil {
		return privops.LaunchResp{}, err
	}
	d := vmdir.New(f.vmsDir, r.ID)
	cmd := exec.Command(f.vmmBin, "-test.run=^TestFakeVMMProcess$", "-test.timeout=5m", "--", "--api-sock", d.APISock())
	cmd.Env = append(os.Environ(), fakeVMMEnv+"=1")
	if err := cmd.Start(); err != nil {
		return privops.LaunchResp{}, err
	}
	v := &fakeVMM{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(v.done) }()
	f.mu.Lock()
	f.vmms[r.ID] = v
	f.mu.Unlock()
	if err := os.WriteFile(d.PIDFile(), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		return privops.LaunchResp{}, err
	}
	// The guest boots at once: its console is all there.
	if err := os.WriteFile(d.SerialLog(), []byte(f.console), 0o644); err != nil {
		return privops.LaunchResp{}, err
	}
	return privops.LaunchResp{PID: cmd.Process.Pid, Binary: "/fake/vmm", Kind: "firecracker"}, nil
}

func (f *fakeOps) KillVMM(ctx context.Context, r privops.KillReq) error {
	if err := f.call("KillVMM"); err != nil {
		return err
	}
	f.mu.Lock()
	v := f.vmms[r.ID]
	f.mu.Unlock()
	if v == nil {
		return fmt.Errorf("vm %s has no VMM", r.ID)
	}
	_ = v.cmd.Process.Signal(syscall.SIGKILL)
	<-v.done
	return nil
}

func (f *fakeOps) StatusVMM(ctx context.Context, r privops.VMReq) (privops.VMMStatus, error) {
	if err := f.call("StatusVMM"); err != nil {
		return privops.VMMStatus{}, err
	}
	f.mu.Lock()
	v := f.vmms[r.ID]
	f.mu.Unlock()
	if v == nil {
		return privops.VMMStatus{Reason: "no VMM"}, nil
	}
	select {
	case <-v.done:
		return privops.VMMStatus{Reason: "exited"}, nil
	default:
		return privops.VMMStatus{PID: v.cmd.Process.Pid, State: "Running"}, nil
	}
}

func (f *fakeOps) ClearRuntime(ctx context.Context, r privops.VMReq) error {
	if err := f.call("ClearRuntime"); err != nil {
		return err
	}
	d := vmdir.New(f.vmsDir, r.ID)
	for _, p := range []string{d.PIDFile(), d.APISock(), d.AgentSock()} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// The operations no create reaches.

var errFakeUnused = errors.New("fakeOps: not used by these tests")

func (f *fakeOps) CtrlAltDel(ctx context.Context, r privops.VMReq) error {
	f.call("CtrlAltDel")
	return errFakeUnused
}

func (f *fakeOps) ReleaseRootfs(ctx context.Context, r privops.VMReq) error {
	f.call("ReleaseRootfs")
	return errFakeUnused
}

func (f *fakeOps) PauseVMM(ctx context.Context, r privops.PauseReq) error {
	f.call("PauseVMM")
	return errFakeUnused
}

func (f *fakeOps) SnapshotVMM(ctx context.Context, r privops.VMReq) (privops.SnapshotResp, error) {
	f.call("SnapshotVMM")
	return privops.SnapshotResp{}, errFakeUnused
}

func (f *fakeOps) RestoreVMM(ctx context.Context, r privops.RestoreReq) (privops.LaunchResp, error) {
	f.call("RestoreVMM")
	return privops.LaunchResp{}, errFakeUnused
}

func (f *fakeOps) ForkDisks(ctx context.Context, r privops.ForkReq) (privops.ForkResp, error) {
	f.call("ForkDisks")
	return privops.ForkResp{}, errFakeUnused
}

func (f *fakeOps) DiscardSnapshot(ctx context.Context, r privops.VMReq) error {
	f.call("DiscardSnapshot")
	return errFakeUnused
}
