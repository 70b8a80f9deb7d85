// Package vmm launches and finds Firecracker-API VMMs through
// firecracker-go-sdk v1.0.0. The same code drives real Firecracker and
// banger-vmm (banger's QEMU-backed VMM).
//
// Survival rules (the product's central promise):
//   - ForwardSignals is an empty, non-nil slice, so signals sent to the
//     launching process are never relayed to the VMM.
//   - The VMM runs in its own session (Setsid) and is started with a
//     context that is never cancelled: the SDK SIGKILLs the VMM when
//     NewMachine's context ends and SIGTERMs it when Start's context ends.
//   - Its stdout/stderr go to a file, never a pipe to us.
//   - A pidfile is written beside the API socket; a restarted supervisor
//     finds the VMM through it (Find) and checks its identity.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/buildinfo"
	"github.com/banger-dev/banger/internal/sysexec"
	firecracker "github.com/firecracker-microvm/firecracker-go-sdk"
	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"
	"github.com/sirupsen/logrus"
)

// GuestCID is every guest's vsock context id: each VM's vsock is its own
// (host side: a Unix socket per VM), so they need not differ.
const GuestCID = 3

// Spec is everything needed to boot one VM.
type Spec struct {
	ID        string // Firecracker --id: 1-64 of [A-Za-z0-9-]
	Binary    string // firecracker or banger-vmm
	APISock   string
	PIDFile   string
	SerialLog string
	// Serial, when set, is SerialLog already open for appending (the root
	// helper opens it through its directory handle).
	Serial     *os.File
	Kernel     string // uncompressed ELF vmlinux
	Initrd     string // optional
	BootArgs   string
	RootDrive  string
	ExtraDrive []string // vdb, vdc, ...
	// ReadOnlyDrive follow ExtraDrive, attached read-only.
	ReadOnlyDrive []string
	Tap           string
	MAC           string
	VCPU          int64
	MemMiB        int64
	// VsockUDS, if set, gives the guest a vsock device whose host side is
	// this Unix socket (Firecracker's hybrid vsock; banger-vmm carries it
	// over virtio-serial). banger's guest agent answers on it.
	VsockUDS string
	// ForwardSignals is for tests that prove why it must stay empty: nil
	// means "use banger's setting" (no forwarding).
	ForwardSignals []os.Signal
	// Restore, when set, starts the VMM from a snapshot (PUT
	// /snapshot/load, resumed) instead of booting: the machine, drives,
	// tap and vsock are the snapshot's, at the paths it recorded.
	Restore *Snapshot
	// Dir is the VMM's working directory. Relative drive, vsock and
	// snapshot paths resolve against it, which is what makes a snapshot
	// loadable by another VM: Firecracker's rule is that "host resources
	// need to be accessible at the same relative paths" to the process
	// that loads it (docs/snapshots.md).
	Dir string
}

// resolve names path as the VMM will see it (relative to Dir).
func (s Spec) resolve(path string) string {
	if path == "" || filepath.IsAbs(path) || s.Dir == "" {
		return path
	}
	return filepath.Join(s.Dir, path)
}

// check does what the SDK's validation would, with relative paths
// resolved against Dir (the SDK would resolve them against ours).
func (s Spec) check() error {
	if _, err := os.Stat(s.APISock); err == nil {
		return fmt.Errorf("socket %s already exists", s.APISock)
	}
	var need []string
	if s.Restore != nil {
		need = []string{s.Restore.SnapshotPath, s.Restore.MemPath}
	} else {
		if s.VCPU < 1 || s.MemMiB < 1 {
			return fmt.Errorf("machine needs a nonzero vCPU count and memory")
		}
		need = append([]string{s.Kernel, s.Initrd, s.RootDrive}, s.ExtraDrive...)
		need = append(need, s.ReadOnlyDrive...)
	}
	for _, p := range need {
		if p == "" {
			continue
		}
		if _, err := os.Stat(s.resolve(p)); err != nil {
			return err
		}
	}
	return nil
}

// Snapshot names a snapshot's two files.
type Snapshot struct {
	SnapshotPath string // the VMM's record of the machine
	MemPath      string // guest memory and device state
}

// Launch starts the VMM detached and boots the guest; it returns once
// InstanceStart was accepted. On failure nothing is left running.
func Launch(spec Spec) (pid int, err error) {
	if err := os.MkdirAll(filepath.Dir(spec.APISock), 0o700); err != nil {
		return 0, err
	}
	serial := spec.Serial
	if serial == nil {
		f, err := os.OpenFile(spec.SerialLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		serial = f
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer devnull.Close()

	// The SDK starts and watches the VMM itself: it takes the *exec.Cmd.
	cmd := sysexec.Cmd{
		Path: spec.Binary, Args: []string{"--api-sock", spec.APISock, "--id", spec.ID, "--no-seccomp"},
		Dir: spec.Dir, Stdin: devnull, Stdout: serial, Stderr: serial,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}.ExecCmd()
	if err := spec.check(); err != nil {
		return 0, fmt.Errorf("configure VMM: %w", err)
	}

	drives := firecracker.NewDrivesBuilder(spec.RootDrive)
	for _, d := range spec.ExtraDrive {
		drives = drives.AddDrive(d, false)
	}
	for _, d := range spec.ReadOnlyDrive {
		drives = drives.AddDrive(d, true)
	}
	fwd := spec.ForwardSignals
	if fwd == nil {
		fwd = []os.Signal{}
	}
	if buildinfo.SmokeFault == "forward-signals" {
		fwd = nil // the SDK's default: relay SIGINT, SIGQUIT, SIGTERM, SIGHUP, SIGABRT to the VMM
	}
	cfg := firecracker.Config{
		SocketPath:      spec.APISock,
		KernelImagePath: spec.Kernel,
		InitrdPath:      spec.Initrd,
		KernelArgs:      spec.BootArgs,
		Drives:          drives.Build(),
		MachineCfg: models.MachineConfiguration{
			VcpuCount:  firecracker.Int64(spec.VCPU),
			MemSizeMib: firecracker.Int64(spec.MemMiB),
		},
		VMID:           spec.ID,
		ForwardSignals: fwd,
		// check() did it, with relative paths resolved against spec.Dir.
		DisableValidation: true,
	}
	if spec.Tap != "" {
		cfg.NetworkInterfaces = firecracker.NetworkInterfaces{{
			StaticConfiguration: &firecracker.StaticNetworkConfiguration{MacAddress: spec.MAC, HostDevName: spec.Tap},
		}}
	}
	if spec.VsockUDS != "" {
		cfg.VsockDevices = []firecracker.VsockDevice{{ID: "agent", Path: spec.VsockUDS, CID: GuestCID}}
	}
	logger := logrus.New()
	logger.SetOutput(io.Discard)
	opts := []firecracker.Opt{firecracker.WithProcessRunner(cmd), firecracker.WithLogger(logrus.NewEntry(logger))}
	if r := spec.Restore; r != nil {
		// The snapshot carries the machine; a PUT /vsock after the load
		// would be refused (SDK issue #506), and the drives are the
		// snapshot's.
		cfg = firecracker.Config{SocketPath: spec.APISock, VMID: spec.ID, ForwardSignals: fwd, DisableValidation: true}
		opts = append(opts, firecracker.WithSnapshot(r.MemPath, r.SnapshotPath, func(c *firecracker.SnapshotConfig) { c.ResumeVM = true }))
	}
	// Never cancelled: the VMM must outlive the request that created it.
	life := context.Background()
	m, err := firecracker.NewMachine(life, cfg, opts...)
	if err != nil {
		return 0, fmt.Errorf("configure VMM: %w", err)
	}
	if err := m.Start(life); err != nil {
		if cmd.Process != nil {
			_ = cmd.Process.Kill()
		}
		return 0, fmt.Errorf("start VMM %s: %w", filepath.Base(spec.Binary), err)
	}
	pid, err = m.PID()
	if err != nil {
		return 0, err
	}
	if err := writePIDFile(spec.PIDFile, pid); err != nil {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		return 0, err
	}
	return pid, nil
}

// ErrNotRunning means no live VMM answers for a VM.
var ErrNotRunning = errors.New("vmm not running")

// ReadPID reads a pidfile.
func ReadPID(pidfile string) (int, error) {
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("pidfile %s: bad content %q", pidfile, strings.TrimSpace(string(b)))
	}
	return pid, nil
}

// Find returns the PID of the live VMM serving apiSock, as recorded in
// pidfile, after checking that the process really is that VMM: its command
// line names --api-sock apiSock, its executable is a VMM, and the API socket
// answers. Anything else is ErrNotRunning (with the reason).
func Find(ctx context.Context, pidfile, apiSock string) (int, error) {
	pid, err := ReadPID(pidfile)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrNotRunning, err)
	}
	if err := Identify(pid, apiSock); err != nil {
		return 0, err
	}
	if _, err := Describe(ctx, apiSock); err != nil {
		return 0, fmt.Errorf("%w: pid %d does not answer on %s: %v", ErrNotRunning, pid, apiSock, err)
	}
	return pid, nil
}

// Running reports the pid recorded in pidfile when it is the live VMM
// serving apiSock (ReadPID, then Identify).
func Running(pidfile, apiSock string) (int, bool) {
	pid, err := ReadPID(pidfile)
	if err != nil {
		return 0, false
	}
	return pid, Identify(pid, apiSock) == nil
}

// Identify checks that pid is a VMM serving apiSock (guards against PID reuse).
func Identify(pid int, apiSock string) error {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return fmt.Errorf("%w: pid %d is gone", ErrNotRunning, pid)
	}
	args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
	found := false
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "--api-sock" && args[i+1] == apiSock {
			found = true
		}
	}
	if !found {
		return fmt.Errorf("%w: pid %d is not the VMM for %s (pid reused?)", ErrNotRunning, pid, apiSock)
	}
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		// Field 3 is the state; Z is a zombie.
		if i := strings.LastIndexByte(string(st), ')'); i > 0 && len(st) > i+2 && st[i+2] == 'Z' {
			return fmt.Errorf("%w: pid %d has exited", ErrNotRunning, pid)
		}
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err == nil {
		base := filepath.Base(strings.TrimSuffix(exe, " (deleted)"))
		if !strings.Contains(base, "firecracker") && !strings.Contains(base, "banger-vmm") {
			return fmt.Errorf("%w: pid %d runs %s, not a VMM", ErrNotRunning, pid, exe)
		}
	}
	return nil
}

// Info is what the VMM's API says about itself.
type Info struct {
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
	AppName    string `json:"app_name"`
}

// Describe asks the VMM at apiSock for GET /.
func Describe(ctx context.Context, apiSock string) (Info, error) {
	logger := logrus.New()
	logger.SetOutput(io.Discard)
	c := firecracker.NewClient(apiSock, logrus.NewEntry(logger), false)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	r, err := c.GetInstanceInfo(ctx)
	if err != nil {
		return Info{}, err
	}
	info := Info{AppName: deref(r.Payload.AppName), VMMVersion: deref(r.Payload.VmmVersion), ID: deref(r.Payload.ID), State: deref(r.Payload.State)}
	return info, nil
}

// SendCtrlAltDel asks the guest to reboot (which ends the VMM).
func SendCtrlAltDel(ctx context.Context, apiSock string) error {
	logger := logrus.New()
	logger.SetOutput(io.Discard)
	c := firecracker.NewClient(apiSock, logrus.NewEntry(logger), false)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := c.CreateSyncAction(ctx, &models.InstanceActionInfo{ActionType: firecracker.String(models.InstanceActionInfoActionTypeSendCtrlAltDel)})
	return err
}

func client(apiSock string) *firecracker.Client {
	logger := logrus.New()
	logger.SetOutput(io.Discard)
	return firecracker.NewClient(apiSock, logrus.NewEntry(logger), false)
}

// SetPaused pauses (PATCH /vm Paused) or resumes the VMM's vCPUs.
func SetPaused(ctx context.Context, apiSock string, paused bool) error {
	state := models.VMStateResumed
	if paused {
		state = models.VMStatePaused
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := client(apiSock).PatchVM(ctx, &models.VM{State: firecracker.String(state)})
	return err
}

// CreateSnapshot pauses the VMM and writes a full snapshot of it (PUT
// /snapshot/create); the VM stays paused.
func CreateSnapshot(ctx context.Context, apiSock string, snap Snapshot) error {
	if err := SetPaused(ctx, apiSock, true); err != nil {
		return fmt.Errorf("pause: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	_, err := client(apiSock).CreateSnapshot(ctx, &models.SnapshotCreateParams{
		SnapshotPath: firecracker.String(snap.SnapshotPath), MemFilePath: firecracker.String(snap.MemPath), SnapshotType: models.SnapshotCreateParamsSnapshotTypeFull,
	})
	return err
}

// Alive reports whether pid exists and is not a zombie.
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	// EPERM: it exists but belongs to another user (a root-launched VMM
	// seen from the owner daemon).
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(st), ')')
	return !(i > 0 && len(st) > i+2 && st[i+2] == 'Z')
}

// WaitExit polls until pid is gone or ctx ends.
func WaitExit(ctx context.Context, pid int) error {
	for {
		if !Alive(pid) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// writePIDFile writes pid to a fresh pidfile (never through a link).
func writePIDFile(path string, pid int) error {
	os.Remove(path)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_NOFOLLOW, 0o644)
	if err != nil {
		return err
	}
	// Readable by the owner's daemon whatever the umask (the helper's is
	// 077): it checks which VMM runs before it asks for anything.
	err = f.Chmod(0o644)
	if err == nil {
		_, err = f.WriteString(strconv.Itoa(pid) + "\n")
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
