package privops

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/dnsroute"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/safepath"
	"github.com/banger-dev/banger/internal/securefs"
	"github.com/banger-dev/banger/internal/vmdir"
	"github.com/banger-dev/banger/internal/vmm"
	"golang.org/x/sys/unix"
)

// Local performs the operations in this process, after validation. The root
// helper serves it on its socket; a dev setup running as root uses it
// directly.
type Local struct {
	Policy Policy
	// NetNS is the network namespace to act in ("" = the current one).
	NetNS string

	lendMu sync.Mutex // one tap name lent at a time (RestoreVMM)
}

var _ Ops = (*Local)(nil)

func (l *Local) net() (*hostnet.Net, error) { return hostnet.Open(l.NetNS) }

// withNet runs f with a Net bound to the helper's namespace.
func (l *Local) withNet(f func(n *hostnet.Net) error) error {
	n, err := l.net()
	if err != nil {
		return err
	}
	defer n.Close()
	return f(n)
}

// EnsureBridge implements Ops.
func (l *Local) EnsureBridge(ctx context.Context, r BridgeReq) error {
	gw, err := l.Policy.ValidateBridge(r)
	if err != nil {
		return err
	}
	n, err := l.net()
	if err != nil {
		return err
	}
	defer n.Close()
	if err := n.EnsureBridge(r.Name, gw); err != nil {
		return err
	}
	// Guests without --nat must not be routed out of the bridge; each tap
	// sends only as its pinned guest.
	if err := n.IsolateBridge(r.Name); err != nil {
		return err
	}
	// The host is closed to guests but for the listed gateway ports.
	if err := n.RestrictHostInput(r.Name, gw.Addr(), r.HostPorts, r.HostPorts); err != nil {
		return err
	}
	if err := n.EnableForwarding(); err != nil {
		return err
	}
	l.routeDNS(ctx, r)
	return nil
}

// routeDNS routes the host's .vm lookups to the daemon's DNS server where
// systemd-resolved runs (not for a bridge in another namespace: the host's
// resolver does not see it). Best effort: DNS routing never stops a VM.
func (l *Local) routeDNS(ctx context.Context, r BridgeReq) {
	if r.DNS == "" || l.NetNS != "" {
		return
	}
	idx := 0
	if ifc, err := net.InterfaceByName(r.Name); err == nil {
		idx = ifc.Index
	}
	if routed, err := dnsroute.Route(ctx, r.Name, idx, r.DNS); err != nil {
		logging.From(ctx).Warn(".vm lookups not routed to banger's DNS", "bridge", r.Name, "error", err)
	} else if routed {
		logging.From(ctx).Debug(".vm lookups routed", "bridge", r.Name, "dns", r.DNS)
	}
}

// CreateTap implements Ops.
func (l *Local) CreateTap(ctx context.Context, r TapReq) error {
	if err := l.Policy.ValidateTap(r); err != nil {
		return err
	}
	if r.Bridge == "" {
		return bad("tap %s: bridge required", r.Name)
	}
	mac, err := net.ParseMAC(r.MAC)
	if err != nil {
		return bad("mac %q: %v", r.MAC, err)
	}
	ip, _ := netip.ParseAddr(r.GuestIP)
	l.lendMu.Lock()
	defer l.lendMu.Unlock()
	return l.withNet(func(n *hostnet.Net) error {
		// A helper that died while the name was lent left the tap aside.
		if err := takeBack(n, r.Name); err != nil {
			return err
		}
		if err := n.CreateTap(r.Name, r.Bridge, l.Policy.OwnerUID, l.Policy.OwnerGID); err != nil {
			return err
		}
		return n.PinTap(r.Name, mac, ip)
	})
}

// DeleteTap implements Ops.
func (l *Local) DeleteTap(ctx context.Context, r TapReq) error {
	if err := l.Policy.ValidateTap(TapReq{Name: r.Name}); err != nil {
		return err
	}
	return l.withNet(func(n *hostnet.Net) error { return n.DeleteTap(r.Name) })
}

// ListTaps implements Ops.
func (l *Local) ListTaps(ctx context.Context) ([]string, error) {
	n, err := l.net()
	if err != nil {
		return nil, err
	}
	defer n.Close()
	return n.ListLinks(TapPrefix)
}

// AddNAT implements Ops.
func (l *Local) AddNAT(ctx context.Context, r NATReq) error {
	a, err := l.Policy.ValidateNAT(r)
	if err != nil {
		return err
	}
	return l.withNet(func(n *hostnet.Net) error { return n.AddNAT(a, r.Tap) })
}

// RemoveNAT implements Ops.
func (l *Local) RemoveNAT(ctx context.Context, r NATReq) error {
	a, err := l.Policy.ValidateNAT(r)
	if err != nil {
		return err
	}
	return l.withNet(func(n *hostnet.Net) error { return n.RemoveNAT(a, r.Tap) })
}

// ownerUIDs are the owners whose files root may read on the owner's behalf.
func (l *Local) ownerUIDs() []int { return []int{l.Policy.OwnerUID} }

// vms opens the VM tree, creating it if missing, after checking that only
// root can change it (securefs.CheckRootOnly): everything below it may then
// be named to an external program.
func (l *Local) vms() (*os.File, error) {
	dir := l.Policy.VMsDir
	if dir == "" || !filepath.IsAbs(dir) || filepath.Clean(dir) != dir {
		return nil, errdefs.New(errdefs.OperationFailed, "the helper's vms dir %q is not an absolute, clean path", dir)
	}
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		// 0755 whatever the umask (the helper's is 077): the owner's
		// daemon lists it and reaches the files handed to it.
		if err := os.Chmod(dir, 0o755); err != nil {
			return nil, err
		}
	}
	if err := securefs.CheckRootOnly(dir); err != nil {
		return nil, errdefs.New(errdefs.OperationFailed, "vms dir %s is not root-only (%v): VM disks must live where only root can write; fix the ownership or use another state dir", dir, err)
	}
	return securefs.OpenNoFollow(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
}

// vmDir opens (or, with create, makes) the directory of VM id: root's,
// mode 0711, so the owner can reach the files handed to it and change none.
func (l *Local) vmDir(id string, create bool) (*os.File, string, error) {
	vms, err := l.vms()
	if err != nil {
		return nil, "", err
	}
	defer vms.Close()
	var d *os.File
	if create {
		d, err = securefs.MkdirBeneath(vms, id, 0o711)
	} else {
		d, err = securefs.OpenBeneath(vms, id, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	}
	if err != nil {
		return nil, "", err
	}
	st, err := securefs.Stat(d)
	if err == nil && (int(st.Uid) != os.Geteuid() || st.Mode&0o022 != 0) {
		err = fmt.Errorf("vm dir %s is not root-only (uid %d, mode %04o)", d.Name(), st.Uid, st.Mode&0o7777)
	}
	if err != nil {
		d.Close()
		return nil, "", err
	}
	return d, filepath.Join(l.Policy.VMsDir, id), nil
}

// cloneInto copies the owner's file src (opened safely) to name in dir.
func (l *Local) cloneInto(dir *os.File, name, src string) (disk.CloneMethod, error) {
	in, err := securefs.OpenOwned(src, l.ownerUIDs()...)
	if err != nil {
		return "", bad("%v", err)
	}
	defer in.Close()
	if err := securefs.RemoveBeneath(dir, name); err != nil {
		return "", err
	}
	out, err := securefs.CreateBeneath(dir, name, unix.O_RDWR, 0o600)
	if err != nil {
		return "", err
	}
	method, err := disk.CloneFile(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = securefs.RemoveBeneath(dir, name)
		return "", err
	}
	return method, nil
}

// PrepareDisks implements Ops. It works in the VM's root-only directory
// only; on failure nothing it created is left.
func (l *Local) PrepareDisks(ctx context.Context, r DisksReq) (resp DisksResp, err error) {
	if err := l.Policy.ValidateDisks(r); err != nil {
		return resp, err
	}
	d, path, err := l.vmDir(r.ID, true)
	if err != nil {
		return resp, err
	}
	defer d.Close()
	for _, n := range []string{vmdir.RootfsName, vmdir.WorkDiskName, vmdir.ToolsDiskName} {
		if _, err := os.Lstat(filepath.Join(path, n)); err == nil {
			return resp, errdefs.New(errdefs.AlreadyExists, "vm %s already has %s", r.ID, n)
		}
	}
	var made []string
	defer func() {
		if err != nil {
			for _, n := range made {
				_ = securefs.RemoveBeneath(d, n)
			}
		}
	}()
	made = append(made, vmdir.RootfsName)
	method, err := l.cloneInto(d, vmdir.RootfsName, r.BaseRootfs)
	if err != nil {
		return resp, fmt.Errorf("clone root disk: %w", err)
	}
	// The seed is built inside the VM's root-only directory.
	seedName := "seed-" + randHex()
	seed, err := securefs.MkdirBeneath(d, seedName, 0o700)
	if err != nil {
		return resp, err
	}
	seed.Close()
	defer securefs.RemoveBeneath(d, seedName)
	seedPath := filepath.Join(path, seedName)
	if r.WorkSeed != "" {
		in, err := securefs.OpenOwned(r.WorkSeed, l.ownerUIDs()...)
		if err != nil {
			return resp, bad("work seed: %v", err)
		}
		err = extractSeed(in, seedPath)
		in.Close()
		if err != nil {
			return resp, fmt.Errorf("work seed %s: %w", r.WorkSeed, err)
		}
	}
	if err := os.MkdirAll(filepath.Join(seedPath, ".ssh"), 0o700); err != nil {
		return resp, err
	}
	key := r.AuthorizedKey
	if key[len(key)-1] != '\n' {
		key += "\n"
	}
	if err := os.WriteFile(filepath.Join(seedPath, ".ssh", "authorized_keys"), []byte(key), 0o600); err != nil {
		return resp, err
	}
	made = append(made, vmdir.WorkDiskName)
	if err := disk.MakeWorkDisk(ctx, filepath.Join(path, vmdir.WorkDiskName), r.WorkDiskBytes, seedPath); err != nil {
		return resp, fmt.Errorf("make work disk: %w", err)
	}
	if r.ToolsSource != "" {
		made = append(made, vmdir.ToolsDiskName)
		if _, err := l.cloneInto(d, vmdir.ToolsDiskName, r.ToolsSource); err != nil {
			return resp, fmt.Errorf("tools disk: %w", err)
		}
	}
	if method != disk.Reflink {
		logging.From(ctx).Warn("root disk is a sparse copy: create costs O(image size); put the state dir and the vms dir on one XFS/btrfs for reflinks", "vm_dir", path)
	}
	return DisksResp{CloneMethod: string(method)}, nil
}

func randHex() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// RemoveVMDir implements Ops: the VM's directory and all it holds, through
// the VM tree's handle (never a followed link).
func (l *Local) RemoveVMDir(ctx context.Context, r VMReq) error {
	if err := l.Policy.ValidateVM(r); err != nil {
		return err
	}
	vms, err := l.vms()
	if err != nil {
		return err
	}
	defer vms.Close()
	return securefs.RemoveBeneath(vms, r.ID)
}

// vmmBinary is the helper's VMM, after checking that only root can change it.
func (l *Local) vmmBinary() (string, error) {
	b := l.Policy.VMMBinary
	if b == "" {
		return "", errdefs.New(errdefs.OperationFailed, "the root helper has no VMM: set firecracker_bin in the config or install banger-vmm beside bangerd")
	}
	if err := securefs.CheckRootOnly(b); err != nil {
		return "", errdefs.New(errdefs.OperationFailed, "vmm binary %s: %v; it and every directory above it must be root's and writable by root alone", b, err)
	}
	if err := safepath.RegularFile(b); err != nil {
		return "", errdefs.New(errdefs.OperationFailed, "vmm binary: %v", err)
	}
	return b, nil
}

// running reports whether the VM's pidfile names its live VMM.
func running(dir vmdir.Dir) (int, bool) { return vmm.Running(dir.PIDFile(), dir.APISock()) }

// LaunchVMM implements Ops.
func (l *Local) LaunchVMM(ctx context.Context, r LaunchReq) (LaunchResp, error) {
	if err := l.Policy.ValidateLaunch(r); err != nil {
		return LaunchResp{}, err
	}
	bin, d, dir, err := l.beforeVMM(r.ID)
	if err != nil {
		return LaunchResp{}, err
	}
	defer d.Close()
	// The VMM opens only root-only paths: the owner's kernel and initrd
	// are copied in from handles opened without following links.
	if _, err := l.cloneInto(d, vmdir.KernelName, r.Kernel); err != nil {
		return LaunchResp{}, fmt.Errorf("kernel: %w", err)
	}
	initrd := ""
	if r.Initrd != "" {
		if _, err := l.cloneInto(d, vmdir.InitrdName, r.Initrd); err != nil {
			return LaunchResp{}, fmt.Errorf("initrd: %w", err)
		}
		initrd = dir.Initrd()
	} else if err := securefs.RemoveBeneath(d, vmdir.InitrdName); err != nil {
		return LaunchResp{}, err
	}
	// A boot makes any snapshot stale.
	if err := removeSnapshot(d); err != nil {
		return LaunchResp{}, err
	}
	serial, err := l.openSerial(d)
	if err != nil {
		return LaunchResp{}, err
	}
	defer serial.Close()
	var ro []string
	if _, err := os.Lstat(dir.ToolsDisk()); err == nil {
		ro = append(ro, vmdir.ToolsDiskName)
	}
	// Disks and vsock by names relative to the VM's directory (the VMM's
	// working directory): its snapshots then load in any VM directory
	// laid out alike, which is how a fork gets its own (docs/snapshots.md).
	if err := writeLayout(d); err != nil {
		return LaunchResp{}, err
	}
	pid, err := vmm.Launch(vmm.Spec{
		ID: r.ID, Binary: bin, APISock: dir.APISock(), PIDFile: dir.PIDFile(), SerialLog: dir.SerialLog(), Serial: serial,
		Kernel: dir.Kernel(), Initrd: initrd, BootArgs: r.BootArgs, RootDrive: vmdir.RootfsName, ExtraDrive: []string{vmdir.WorkDiskName},
		Tap: r.Tap, MAC: r.MAC, VCPU: r.VCPU, MemMiB: r.MemMiB, VsockUDS: vmdir.AgentSockName, ReadOnlyDrive: ro, Dir: dir.Path(),
	})
	if err != nil {
		return LaunchResp{}, err
	}
	l.afterVMM(ctx, d)
	logging.From(ctx).Info("vmm launched", "vm_id", r.ID, "pid", pid, "binary", bin)
	return LaunchResp{PID: pid, Binary: bin, Kind: l.Policy.VMMKind}, nil
}

// beforeVMM is what launching a VMM for VM id starts with: the helper's
// checked VMM binary and the VM's directory (a handle the caller closes),
// after checking that no VMM runs for it and that it has a root disk, and
// removing what a VMM that died without cleanup left.
func (l *Local) beforeVMM(id string) (bin string, d *os.File, dir vmdir.Dir, err error) {
	if bin, err = l.vmmBinary(); err != nil {
		return "", nil, "", err
	}
	d, path, err := l.vmDir(id, false)
	if err != nil {
		return "", nil, "", err
	}
	dir = vmdir.Dir(path)
	fail := func(err error) (string, *os.File, vmdir.Dir, error) {
		d.Close()
		return "", nil, "", err
	}
	if pid, ok := running(dir); ok {
		return fail(errdefs.New(errdefs.BadRequest, "vm %s already runs (vmm pid %d)", id, pid))
	}
	if err := removeRuntime(d); err != nil {
		return fail(err)
	}
	if _, err := os.Lstat(dir.Rootfs()); err != nil {
		return fail(errdefs.New(errdefs.BadRequest, "vm %s has no root disk; create it again", id))
	}
	return bin, d, dir, nil
}

// openSerial opens the VM's serial log for the VMM's stdout. The log is
// the owner's (it reads and trims it) and 0600; the helper has no
// CAP_DAC_OVERRIDE, so it takes the file back while it opens it (the
// directory is root-only: nobody can swap the file meanwhile).
func (l *Local) openSerial(d *os.File) (*os.File, error) {
	if os.Geteuid() == 0 {
		if err := securefs.ChownBeneath(d, vmdir.SerialLogName, 0, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return nil, err
		}
	}
	serial, err := securefs.OpenBeneath(d, vmdir.SerialLogName, unix.O_WRONLY|unix.O_CREAT|unix.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	if st, err := securefs.Stat(serial); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		serial.Close()
		return nil, fmt.Errorf("serial log %s is not a regular file", serial.Name())
	}
	// The owner reads its guest's console.
	if err := l.chownFile(serial); err != nil {
		serial.Close()
		return nil, err
	}
	return serial, nil
}

// afterVMM hands the agent socket to the owner: the daemon talks to its
// guest's agent; the API socket stays root's.
func (l *Local) afterVMM(ctx context.Context, d *os.File) {
	if l.Policy.OwnerUID != 0 && os.Geteuid() == 0 {
		if err := securefs.ChownBeneath(d, vmdir.AgentSockName, l.Policy.OwnerUID, l.Policy.OwnerGID); err != nil && !errors.Is(err, unix.ENOENT) {
			logging.From(ctx).Warn("agent socket not handed to the owner", "error", err)
		}
	}
}

// removeSnapshot removes a VM's snapshot files, if any.
func removeSnapshot(d *os.File) error {
	for _, n := range []string{vmdir.SnapshotName, vmdir.SnapshotMemName} {
		if err := securefs.RemoveBeneath(d, n); err != nil {
			return err
		}
	}
	return nil
}

// PauseVMM implements Ops.
func (l *Local) PauseVMM(ctx context.Context, r PauseReq) error {
	if err := l.Policy.ValidateVM(VMReq{ID: r.ID}); err != nil {
		return err
	}
	dir := l.dirOf(r.ID)
	if _, ok := running(dir); !ok {
		return errdefs.New(errdefs.BadRequest, "vm %s is not running", r.ID)
	}
	return vmm.SetPaused(ctx, dir.APISock(), r.Paused)
}

// SnapshotVMM implements Ops: a full snapshot of the running VM into its
// directory (the VMM writes both files there; the VM stays paused).
func (l *Local) SnapshotVMM(ctx context.Context, r VMReq) (SnapshotResp, error) {
	if err := l.Policy.ValidateVM(r); err != nil {
		return SnapshotResp{}, err
	}
	d, path, err := l.vmDir(r.ID, false)
	if err != nil {
		return SnapshotResp{}, err
	}
	defer d.Close()
	dir := vmdir.Dir(path)
	if _, ok := running(dir); !ok {
		return SnapshotResp{}, errdefs.New(errdefs.BadRequest, "vm %s is not running", r.ID)
	}
	if err := removeSnapshot(d); err != nil {
		return SnapshotResp{}, err
	}
	if err := vmm.CreateSnapshot(ctx, dir.APISock(), vmm.Snapshot{SnapshotPath: dir.Snapshot(), MemPath: dir.SnapshotMem()}); err != nil {
		_ = removeSnapshot(d)
		return SnapshotResp{}, errdefs.Wrap(errdefs.OperationFailed, fmt.Errorf("snapshot: %w", err))
	}
	var total int64
	for _, n := range []string{vmdir.SnapshotName, vmdir.SnapshotMemName} {
		f, err := securefs.OpenBeneath(d, n, unix.O_RDONLY, 0)
		if err != nil {
			return SnapshotResp{}, err
		}
		st, err := securefs.Stat(f)
		f.Close()
		if err != nil {
			return SnapshotResp{}, err
		}
		total += st.Blocks * 512
	}
	logging.From(ctx).Info("vm snapshot written", "vm_id", r.ID, "bytes", total)
	return SnapshotResp{Bytes: total}, nil
}

// RestoreVMM implements Ops: a new VMM that loads the VM's snapshot and
// resumes it (the machine, disks, tap and vsock are the snapshot's, all in
// the VM's root-only directory).
func (l *Local) RestoreVMM(ctx context.Context, r RestoreReq) (LaunchResp, error) {
	if err := l.Policy.ValidateRestore(r); err != nil {
		return LaunchResp{}, err
	}
	bin, d, dir, err := l.beforeVMM(r.ID)
	if err != nil {
		return LaunchResp{}, err
	}
	defer d.Close()
	for _, n := range []string{vmdir.SnapshotName, vmdir.SnapshotMemName} {
		f, err := securefs.OpenBeneath(d, n, unix.O_RDONLY, 0)
		if err != nil {
			return LaunchResp{}, errdefs.New(errdefs.BadRequest, "vm %s has no snapshot to restore (%s: %v)", r.ID, n, err)
		}
		f.Close()
	}
	serial, err := l.openSerial(d)
	if err != nil {
		return LaunchResp{}, err
	}
	defer serial.Close()
	spec := vmm.Spec{
		ID: r.ID, Binary: bin, APISock: dir.APISock(), PIDFile: dir.PIDFile(), SerialLog: dir.SerialLog(), Serial: serial,
		Restore: &vmm.Snapshot{SnapshotPath: dir.Snapshot(), MemPath: dir.SnapshotMem()}, Dir: dir.Path(),
	}
	if j := r.Lend; j != nil {
		l.lendMu.Lock()
		defer l.lendMu.Unlock()
		if err := l.withNet(func(n *hostnet.Net) error { return lendName(n, j, l.Policy.OwnerUID, l.Policy.OwnerGID) }); err != nil {
			l.giveBack(ctx, j, false)
			return LaunchResp{}, errdefs.Wrap(errdefs.OperationFailed, fmt.Errorf("restore: lend tap name %s: %w", j.PinnedTap, err))
		}
	}
	pid, err := vmm.Launch(spec)
	if j := r.Lend; j != nil {
		if gerr := l.giveBack(ctx, j, err == nil); err == nil && gerr != nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			err = fmt.Errorf("the fork's tap: %w", gerr)
		}
	}
	if err != nil {
		return LaunchResp{}, errdefs.Wrap(errdefs.OperationFailed, fmt.Errorf("restore: %w", err))
	}
	l.afterVMM(ctx, d)
	logging.From(ctx).Info("vmm restored from snapshot", "vm_id", r.ID, "pid", pid, "binary", bin)
	return LaunchResp{PID: pid, Binary: bin, Kind: l.Policy.VMMKind}, nil
}

// DiscardSnapshot implements Ops.
func (l *Local) DiscardSnapshot(ctx context.Context, r VMReq) error {
	if err := l.Policy.ValidateVM(r); err != nil {
		return err
	}
	d, err := l.existingVMDir(r.ID)
	if d == nil {
		return err
	}
	defer d.Close()
	return removeSnapshot(d)
}

// existingVMDir opens the VM's directory; a VM without one is (nil, nil).
func (l *Local) existingVMDir(id string) (*os.File, error) {
	d, _, err := l.vmDir(id, false)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return d, err
}

// removeRuntime removes what a VMM leaves in its VM's directory: the API
// socket, the pidfile and the agent socket.
func removeRuntime(d *os.File) error {
	for _, n := range []string{vmdir.APISockName, vmdir.PIDFileName, vmdir.AgentSockName} {
		if err := securefs.RemoveBeneath(d, n); err != nil {
			return err
		}
	}
	return nil
}

func (l *Local) chownFile(f *os.File) error {
	if os.Geteuid() != 0 || l.Policy.OwnerUID == 0 {
		return nil
	}
	return f.Chown(l.Policy.OwnerUID, l.Policy.OwnerGID)
}

func (l *Local) dirOf(id string) vmdir.Dir { return vmdir.New(l.Policy.VMsDir, id) }

// KillVMM implements Ops. A VMM that is already gone is not an error.
func (l *Local) KillVMM(ctx context.Context, r KillReq) error {
	sig, err := l.Policy.ValidateKill(r)
	if err != nil {
		return err
	}
	dir := l.dirOf(r.ID)
	pid, err := vmm.ReadPID(dir.PIDFile())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := vmm.Identify(pid, dir.APISock()); err != nil {
		if errors.Is(err, vmm.ErrNotRunning) {
			return nil
		}
		return err
	}
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return errdefs.Wrap(errdefs.OperationFailed, fmt.Errorf("signal vmm %d: %w", pid, err))
	}
	logging.From(ctx).Info("vmm signalled", "pid", pid, "signal", sig.String())
	return nil
}

// StatusVMM implements Ops.
func (l *Local) StatusVMM(ctx context.Context, r VMReq) (VMMStatus, error) {
	if err := l.Policy.ValidateVM(r); err != nil {
		return VMMStatus{}, err
	}
	dir := l.dirOf(r.ID)
	pid, err := vmm.Find(ctx, dir.PIDFile(), dir.APISock())
	if err != nil {
		return VMMStatus{Reason: err.Error()}, nil
	}
	st := VMMStatus{PID: pid}
	if info, err := vmm.Describe(ctx, dir.APISock()); err == nil {
		st.State = info.State
	}
	return st, nil
}

// CtrlAltDel implements Ops.
func (l *Local) CtrlAltDel(ctx context.Context, r VMReq) error {
	if err := l.Policy.ValidateVM(r); err != nil {
		return err
	}
	dir := l.dirOf(r.ID)
	if _, ok := running(dir); !ok {
		return nil
	}
	return vmm.SendCtrlAltDel(ctx, dir.APISock())
}

// ClearRuntime implements Ops.
func (l *Local) ClearRuntime(ctx context.Context, r VMReq) error {
	if err := l.Policy.ValidateVM(r); err != nil {
		return err
	}
	d, err := l.existingVMDir(r.ID)
	if d == nil {
		return err
	}
	defer d.Close()
	if pid, ok := running(l.dirOf(r.ID)); ok {
		return errdefs.New(errdefs.BadRequest, "vm %s still runs (vmm pid %d)", r.ID, pid)
	}
	return removeRuntime(d)
}

// ReleaseRootfs implements Ops.
func (l *Local) ReleaseRootfs(ctx context.Context, r VMReq) error {
	if err := l.Policy.ValidateVM(r); err != nil {
		return err
	}
	d, _, err := l.vmDir(r.ID, false)
	if err != nil {
		return err
	}
	defer d.Close()
	if pid, ok := running(l.dirOf(r.ID)); ok {
		return errdefs.New(errdefs.BadRequest, "vm %s still runs (vmm pid %d): stop it before taking its root disk", r.ID, pid)
	}
	f, err := securefs.OpenBeneath(d, vmdir.RootfsName, unix.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return errdefs.New(errdefs.OperationFailed, "vm %s: its root disk is not a regular file", r.ID)
	}
	if format, err := disk.FormatOf(f); err != nil || format != disk.FormatRaw {
		return errdefs.New(errdefs.BadRequest, "vm %s: its root disk is a qcow2 overlay (the VM was forked), not an image; make the image from a VM that was never forked", r.ID)
	}
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if err := l.chownFile(f); err != nil {
		return err
	}
	logging.From(ctx).Info("root disk handed to the owner", "vm_id", r.ID)
	return nil
}

// extractSeed unpacks a work seed tar into dir: directories and regular
// files only, names that stay inside dir, nothing through a symlink (there
// are none: dir is fresh and no link is ever created).
func extractSeed(f io.Reader, dir string) error {
	tr := tar.NewReader(io.LimitReader(f, 64<<20))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean(h.Name)
		if filepath.IsAbs(name) || name == "." || name == ".." || strings.HasPrefix(name, "../") || name == ".ssh/authorized_keys" {
			continue
		}
		p := filepath.Join(dir, name)
		mode := os.FileMode(h.Mode).Perm() &^ 0o022
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, mode|0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			out, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode|0o600)
			if err != nil {
				return err
			}
			if _, err := io.Copy(out, tr); err != nil {
				out.Close()
				return err
			}
			if err := out.Close(); err != nil {
				return err
			}
		}
	}
}
