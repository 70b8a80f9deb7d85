// Package privops is banger's one door to root: a fixed list of typed
// operations, each with a request type that is validated before anything is
// done.
//
// Security design (docs/security.md has the whole threat model):
//   - The owner daemon never runs privileged code itself. It holds an Ops:
//     a Client that talks to the root helper (bangerd --root-helper) over a
//     Unix socket, or, in a dev setup where everything already runs as root,
//     Local in-process. Both run the same Validate and the same code.
//   - Interface names must start with banger's prefixes (bridge "banger",
//     taps "bgtap"), so a compromised daemon cannot touch eth0 or docker0.
//   - No request names a program. The VMM binary is the helper's own choice
//     (Policy.VMMBinary), and it, like every directory above it, must be
//     root's and writable by nobody else before each launch.
//   - VM directories live in a root-only tree (Policy.VMsDir: every
//     component root-owned, writable by root alone). A request names a VM
//     by its id; the helper derives every file name in the VM directory
//     itself, works through directory handles there, and hands the owner
//     only what it must read (serial log, agent socket). The VMM's API
//     socket stays root's: the owner reaches the VMM only through the typed
//     operations below (status, Ctrl-Alt-Del, kill).
//   - Files the owner supplies (image base, kernel, initrd, work seed,
//     tools disk) are opened once, with no symlink in any component
//     (openat2), must be regular files owned by the owner, and are copied
//     into the VM directory from that open handle; the VMM only ever opens
//     root-only paths.
//   - Processes are started by argv, never through a shell, and signalled
//     only after checking that the pid really is the VMM of that VM.
package privops

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"syscall"

	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/safepath"
)

// Prefixes of the interfaces banger owns.
const (
	BridgePrefix = "banger"
	TapPrefix    = "bgtap"
	// AsidePrefix names a tap while its name is lent (RestoreReq.Lend):
	// bgtapXXXXXXXX waits as bgasdXXXXXXXX.
	AsidePrefix = "bgasd"
)

// asideName is where tap waits while its name is lent.
func asideName(tap string) string { return AsidePrefix + strings.TrimPrefix(tap, TapPrefix) }

// Ops is every privileged operation.
type Ops interface {
	EnsureBridge(ctx context.Context, r BridgeReq) error
	CreateTap(ctx context.Context, r TapReq) error
	DeleteTap(ctx context.Context, r TapReq) error
	ListTaps(ctx context.Context) ([]string, error)
	AddNAT(ctx context.Context, r NATReq) error
	RemoveNAT(ctx context.Context, r NATReq) error
	PrepareDisks(ctx context.Context, r DisksReq) (DisksResp, error)
	RemoveVMDir(ctx context.Context, r VMReq) error
	LaunchVMM(ctx context.Context, r LaunchReq) (LaunchResp, error)
	KillVMM(ctx context.Context, r KillReq) error
	// StatusVMM says whether the VM's VMM runs and answers its API.
	StatusVMM(ctx context.Context, r VMReq) (VMMStatus, error)
	// CtrlAltDel asks the VM's guest to reboot (which ends the VMM).
	CtrlAltDel(ctx context.Context, r VMReq) error
	// ClearRuntime removes a stopped VM's API socket, pidfile and agent
	// socket (nothing while its VMM runs).
	ClearRuntime(ctx context.Context, r VMReq) error
	// ReleaseRootfs hands a stopped VM's root disk to the owner (its file,
	// mode 0600, in the VM's root-only directory) so the daemon can make an
	// image of it (a derived image's build VM); refused while the VMM runs.
	ReleaseRootfs(ctx context.Context, r VMReq) error
	// PauseVMM pauses or resumes a running VM's vCPUs (PATCH /vm).
	PauseVMM(ctx context.Context, r PauseReq) error
	// SnapshotVMM pauses a running VM and writes a full snapshot of it
	// into its directory (vm.snap, vm.mem); the VM stays paused.
	SnapshotVMM(ctx context.Context, r VMReq) (SnapshotResp, error)
	// RestoreVMM starts a new VMM from the VM's snapshot, resumed.
	RestoreVMM(ctx context.Context, r RestoreReq) (LaunchResp, error)
	// ForkDisks gives forks of a parked VM their disks and its snapshot,
	// so that each can be restored from it (RestoreReq with Lend).
	ForkDisks(ctx context.Context, r ForkReq) (ForkResp, error)
	// DiscardSnapshot removes the VM's snapshot files.
	DiscardSnapshot(ctx context.Context, r VMReq) error
}

// PauseReq pauses (Paused) or resumes a VM's vCPUs.
type PauseReq struct {
	ID     string `json:"id"`
	Paused bool   `json:"paused"`
}

// SnapshotResp is the space a snapshot takes.
type SnapshotResp struct {
	Bytes int64 `json:"bytes"`
}

// RestoreReq restores a VM from the snapshot in its directory. Lend, when
// set, lends the VM the name of the tap its snapshot names, which is
// another VM's (a fork's snapshot is its parent's), for the load.
type RestoreReq struct {
	ID   string   `json:"id"`
	Lend *LendReq `json:"lend,omitempty"`
}

// LendReq: the snapshot names PinnedTap; the VM's own tap is Tap, to be
// enslaved to Bridge and pinned to MAC and GuestIP once the VMM holds it
// (hostnet.RenameTap has the steps).
type LendReq struct {
	PinnedTap string `json:"pinned_tap"`
	Tap       string `json:"tap"`
	Bridge    string `json:"bridge"`
	MAC       string `json:"mac"`
	GuestIP   string `json:"guest_ip"`
}

// ForkReq makes the directories of forks (Children, fresh VM ids) of the
// parked VM Src: each gets Src's snapshot and disks as they are now. Src's
// writable disks are frozen and Src goes on with overlays of its own
// (banger-vmm: qcow2 overlays, O(1)); under Firecracker, which reads raw
// disks only, the children get copies (reflink where the filesystem can).
type ForkReq struct {
	Src      string   `json:"src"`
	Children []string `json:"children"`
}

// ForkResp says how the forks' disks were made.
type ForkResp struct {
	Method string `json:"method"` // qcow2-overlay, reflink or sparse-copy
}

// MaxForks bounds the children of one ForkReq.
const MaxForks = 16

// Policy is what the validator allows.
type Policy struct {
	// Roots are banger's own directories (state and cache): files the
	// owner supplies must lie below one of them.
	Roots []string
	// VMsDir is where VM directories live: a root-only tree (see
	// securefs.CheckRootOnly), created by the helper.
	VMsDir string
	// OwnerUID/GID own the files and taps made for the daemon.
	OwnerUID, OwnerGID int
	// VMMBinary is the VMM the helper runs (its own choice, never the
	// request's) and VMMKind what it is ("firecracker" or "banger-vmm").
	VMMBinary, VMMKind string
}

// BridgeReq creates the bridge if missing and gives it the gateway address.
type BridgeReq struct {
	Name    string `json:"name"`
	Gateway string `json:"gateway"` // e.g. 172.30.0.1/24
	// HostPorts are the ports on the gateway address guests may reach on
	// the host (TCP and UDP: the daemon's DNS when it listens there);
	// everything else on the host is closed to guests.
	HostPorts []uint16 `json:"host_ports,omitempty"`
	// DNS is the daemon's .vm DNS server (IP:port, on loopback or the
	// gateway address): where the host runs systemd-resolved, its .vm
	// lookups are routed there through the bridge (internal/dnsroute).
	DNS string `json:"dns,omitempty"`
}

// TapReq names a tap; for creation also its bridge and the guest's MAC and
// IPv4 address, to which the tap is pinned (it can send as nothing else).
type TapReq struct {
	Name    string `json:"name"`
	Bridge  string `json:"bridge,omitempty"`
	MAC     string `json:"mac,omitempty"`
	GuestIP string `json:"guest_ip,omitempty"`
}

// NATReq scopes NAT to one guest /32 and its tap.
type NATReq struct {
	GuestIP string `json:"guest_ip"`
	Tap     string `json:"tap"`
}

// DisksReq prepares a VM's disks in its directory (VMsDir/<ID>, created
// root-only): a copy-on-write root over the image's base (rootfs.ext4), a
// fresh ext4 work disk holding AuthorizedKey (work.ext4) and a copy of the
// tools disk (tools.ext4).
type DisksReq struct {
	ID            string `json:"id"`
	BaseRootfs    string `json:"base_rootfs"`
	WorkDiskBytes int64  `json:"work_disk_bytes"`
	AuthorizedKey string `json:"authorized_key"`
	WorkSeed      string `json:"work_seed,omitempty"` // tar of the image's /root, copied into the work disk
	// ToolsSource is banger's tools disk (the guest agent); empty when
	// there is none.
	ToolsSource string `json:"tools_source,omitempty"`
}

// DisksResp says how the root disk was made.
type DisksResp struct {
	CloneMethod string `json:"clone_method"`
}

// VMReq names a VM (its directory is VMsDir/<ID>).
type VMReq struct {
	ID string `json:"id"`
}

// LaunchReq boots the helper's VMM for the VM ID. The disks are the ones
// PrepareDisks made; the kernel and initrd are the owner's files, copied
// into the VM directory first.
type LaunchReq struct {
	ID       string `json:"id"`
	Kernel   string `json:"kernel"`
	Initrd   string `json:"initrd,omitempty"`
	BootArgs string `json:"boot_args"`
	Tap      string `json:"tap"`
	MAC      string `json:"mac"`
	VCPU     int64  `json:"vcpu"`
	MemMiB   int64  `json:"mem_mib"`
}

// LaunchResp is the VMM's pid, and which VMM the helper ran.
type LaunchResp struct {
	PID    int    `json:"pid"`
	Binary string `json:"binary"`
	Kind   string `json:"kind"`
}

// KillReq signals the VM's VMM, if the pid in its pidfile still is that VMM.
type KillReq struct {
	ID     string `json:"id"`
	Signal string `json:"signal"` // KILL (default), TERM, INT, QUIT
}

// VMMStatus is what the helper sees of a VM's VMM: its pid when the pidfile
// names a live process that is this VM's VMM and whose API answers.
type VMMStatus struct {
	PID    int    `json:"pid,omitempty"`
	State  string `json:"state,omitempty"` // the API's instance state
	Reason string `json:"reason,omitempty"`
}

// Signals a KillReq may name.
var Signals = map[string]syscall.Signal{"": syscall.SIGKILL, "KILL": syscall.SIGKILL, "TERM": syscall.SIGTERM, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT}

var (
	idRE  = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)
	macRE = regexp.MustCompile(`^02(:[0-9a-f]{2}){5}$`)
)

func bad(format string, a ...any) error { return errdefs.New(errdefs.BadRequest, format, a...) }

// under validates a path argument.
func (p Policy) under(what, path string, roots ...string) error {
	if len(roots) == 0 {
		roots = p.Roots
	}
	if err := safepath.Under(path, roots...); err != nil {
		return bad("%s: %v", what, err)
	}
	return nil
}

func (p Policy) file(what, path string) error {
	if err := p.under(what, path); err != nil {
		return err
	}
	if err := safepath.RegularFile(path); err != nil {
		return bad("%s: %v", what, err)
	}
	return nil
}

func iface(name string, prefix string) error {
	if err := safepath.IfaceName(name, prefix); err != nil {
		return bad("%v", err)
	}
	return nil
}

func privateV4(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() || !a.IsPrivate() {
		return netip.Addr{}, bad("%q is not a private IPv4 address", s)
	}
	return a, nil
}

// ValidateBridge checks a BridgeReq.
func (p Policy) ValidateBridge(r BridgeReq) (netip.Prefix, error) {
	if err := iface(r.Name, BridgePrefix); err != nil {
		return netip.Prefix{}, err
	}
	gw, err := netip.ParsePrefix(r.Gateway)
	if err != nil || !gw.Addr().Is4() || !gw.Addr().IsPrivate() || gw.Bits() < 8 || gw.Bits() > 30 {
		return netip.Prefix{}, bad("gateway %q must be a private IPv4 address with a prefix, like 172.30.0.1/24", r.Gateway)
	}
	if len(r.HostPorts) > 16 {
		return netip.Prefix{}, bad("at most 16 host ports")
	}
	for _, p := range r.HostPorts {
		if p == 0 {
			return netip.Prefix{}, bad("host port 0")
		}
	}
	if r.DNS != "" {
		ap, err := netip.ParseAddrPort(r.DNS)
		if err != nil || ap.Port() == 0 || !(ap.Addr().IsLoopback() || ap.Addr() == gw.Addr()) {
			return netip.Prefix{}, bad("dns %q must be IP:port on loopback or the gateway %s", r.DNS, gw.Addr())
		}
	}
	return gw, nil
}

// ValidateTap checks a TapReq (Bridge only when set).
func (p Policy) ValidateTap(r TapReq) error {
	if err := iface(r.Name, TapPrefix); err != nil {
		return err
	}
	if r.Bridge != "" {
		if err := iface(r.Bridge, BridgePrefix); err != nil {
			return err
		}
		if !macRE.MatchString(r.MAC) {
			return bad("mac %q must be a locally administered address 02:xx:xx:xx:xx:xx", r.MAC)
		}
		if _, err := privateV4(r.GuestIP); err != nil {
			return err
		}
	}
	return nil
}

// ValidateNAT checks a NATReq.
func (p Policy) ValidateNAT(r NATReq) (netip.Addr, error) {
	a, err := privateV4(r.GuestIP)
	if err != nil {
		return a, err
	}
	return a, iface(r.Tap, TapPrefix)
}

// validID checks a VM id.
func validID(id string) error {
	if !idRE.MatchString(id) {
		return bad("vm id %q must be 1-64 of [A-Za-z0-9-]", id)
	}
	return nil
}

// ValidateDisks checks a DisksReq.
func (p Policy) ValidateDisks(r DisksReq) error {
	if err := validID(r.ID); err != nil {
		return err
	}
	if err := p.file("base rootfs", r.BaseRootfs); err != nil {
		return err
	}
	if r.WorkSeed != "" {
		if err := p.file("work seed", r.WorkSeed); err != nil {
			return err
		}
	}
	if r.ToolsSource != "" {
		if err := p.file("tools source", r.ToolsSource); err != nil {
			return err
		}
	}
	if r.WorkDiskBytes < 64<<20 || r.WorkDiskBytes > 2<<40 {
		return bad("work disk size %d is out of range (64 MiB - 2 TiB)", r.WorkDiskBytes)
	}
	if len(r.AuthorizedKey) > 8192 || !authKeyRE.MatchString(r.AuthorizedKey) {
		return bad("authorized key is not one OpenSSH public key line")
	}
	return nil
}

var authKeyRE = regexp.MustCompile(`^ssh-[a-z0-9-]+ [A-Za-z0-9+/=]+( [^\n]*)?\n?$`)

// ValidateVM checks a VMReq.
func (p Policy) ValidateVM(r VMReq) error { return validID(r.ID) }

// ValidateLaunch checks a LaunchReq.
func (p Policy) ValidateLaunch(r LaunchReq) error {
	if err := validID(r.ID); err != nil {
		return err
	}
	if err := p.file("kernel", r.Kernel); err != nil {
		return err
	}
	if r.Initrd != "" {
		if err := p.file("initrd", r.Initrd); err != nil {
			return err
		}
	}
	if err := iface(r.Tap, TapPrefix); err != nil {
		return err
	}
	if !macRE.MatchString(r.MAC) {
		return bad("mac %q must be a locally administered address 02:xx:xx:xx:xx:xx", r.MAC)
	}
	if r.VCPU < 1 || r.VCPU > 32 {
		return bad("vcpu %d is out of range (1-32)", r.VCPU)
	}
	if r.MemMiB < 128 || r.MemMiB > 1<<20 {
		return bad("memory %d MiB is out of range (128 MiB - 1 TiB)", r.MemMiB)
	}
	if len(r.BootArgs) > 2048 || strings.ContainsAny(r.BootArgs, "\x00\n") {
		return bad("boot args must be one line of at most 2048 bytes")
	}
	return nil
}

// ValidateRestore checks a RestoreReq.
func (p Policy) ValidateRestore(r RestoreReq) error {
	if err := validID(r.ID); err != nil {
		return err
	}
	j := r.Lend
	if j == nil {
		return nil
	}
	if err := iface(j.PinnedTap, TapPrefix); err != nil {
		return err
	}
	if j.PinnedTap == j.Tap {
		return bad("a restore lends the snapshot's tap name %s to another VM; it cannot be the VM's own", j.Tap)
	}
	return p.ValidateTap(TapReq{Name: j.Tap, Bridge: j.Bridge, MAC: j.MAC, GuestIP: j.GuestIP})
}

// ValidateFork checks a ForkReq.
func (p Policy) ValidateFork(r ForkReq) error {
	if err := validID(r.Src); err != nil {
		return err
	}
	if len(r.Children) == 0 || len(r.Children) > MaxForks {
		return bad("a fork makes 1-%d VMs, not %d", MaxForks, len(r.Children))
	}
	seen := map[string]bool{r.Src: true}
	for _, c := range r.Children {
		if err := validID(c); err != nil {
			return err
		}
		if seen[c] {
			return bad("vm id %s is named twice in a fork", c)
		}
		seen[c] = true
	}
	return nil
}

// ValidateKill checks a KillReq.
func (p Policy) ValidateKill(r KillReq) (syscall.Signal, error) {
	sig, ok := Signals[r.Signal]
	if !ok {
		return 0, bad("signal %q is not one of KILL, TERM, INT, QUIT", r.Signal)
	}
	return sig, validID(r.ID)
}

func (r LaunchReq) String() string { return fmt.Sprintf("launch %s", r.ID) }
