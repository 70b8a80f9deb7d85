// Package privops is banger's one door to root: a fixed list of typed
// operations, each with a request type that is validated before anything is
// done.
//
// Security design:
//   - The owner daemon never runs privileged code itself. It holds an Ops:
//     a Client that talks to the root helper (bangerd --root-helper) over a
//     Unix socket, or, in a dev setup where everything already runs as root,
//     Local in-process. Both run the same Validate and the same code.
//   - Interface names must start with banger's prefixes (bridge "banger",
//     taps "bgtap"), so a compromised daemon cannot touch eth0 or docker0.
//   - Paths must be absolute, clean and strictly under banger's own
//     directories; every existing component is Lstat'ed and a symlink
//     anywhere is refused (internal/safepath).
//   - The VMM binary must be a regular file; processes are started by argv,
//     never through a shell.
//   - Processes are signalled only through their pidfile, after checking
//     that the pid really is the VMM for that API socket.
package privops

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"syscall"

	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/safepath"
)

// Prefixes of the interfaces banger owns.
const (
	BridgePrefix = "banger"
	TapPrefix    = "bgtap"
)

// Ops is every privileged operation.
type Ops interface {
	EnsureBridge(ctx context.Context, r BridgeReq) error
	CreateTap(ctx context.Context, r TapReq) error
	DeleteTap(ctx context.Context, r TapReq) error
	ListTaps(ctx context.Context) ([]string, error)
	AddNAT(ctx context.Context, r NATReq) error
	RemoveNAT(ctx context.Context, r NATReq) error
	PrepareDisks(ctx context.Context, r DisksReq) (DisksResp, error)
	RemoveVMDir(ctx context.Context, r VMDirReq) error
	LaunchVMM(ctx context.Context, r LaunchReq) (LaunchResp, error)
	KillVMM(ctx context.Context, r KillReq) error
}

// Policy is what the validator allows.
type Policy struct {
	// Roots are banger's own directories (state and cache).
	Roots []string
	// VMsDir is where VM directories live (under a root).
	VMsDir string
	// OwnerUID/GID own the files and taps made for the daemon.
	OwnerUID, OwnerGID int
}

// BridgeReq creates the bridge if missing and gives it the gateway address.
type BridgeReq struct {
	Name    string `json:"name"`
	Gateway string `json:"gateway"` // e.g. 172.30.0.1/24
}

// TapReq names a tap (and its bridge, for creation).
type TapReq struct {
	Name   string `json:"name"`
	Bridge string `json:"bridge,omitempty"`
}

// NATReq scopes NAT to one guest /32 and its tap.
type NATReq struct {
	GuestIP string `json:"guest_ip"`
	Tap     string `json:"tap"`
}

// DisksReq prepares a VM's disks: a copy-on-write root over the image's
// base and a fresh ext4 work disk holding AuthorizedKey.
type DisksReq struct {
	VMDir         string `json:"vm_dir"`
	BaseRootfs    string `json:"base_rootfs"`
	Rootfs        string `json:"rootfs"`
	WorkDisk      string `json:"work_disk"`
	WorkDiskBytes int64  `json:"work_disk_bytes"`
	AuthorizedKey string `json:"authorized_key"`
	WorkSeed      string `json:"work_seed,omitempty"` // tar of the image's /root, copied into the work disk
	// ToolsSource is banger's tools disk (the guest agent), copied to
	// ToolsDisk in the VM dir; both empty when there is none.
	ToolsSource string `json:"tools_source,omitempty"`
	ToolsDisk   string `json:"tools_disk,omitempty"`
}

// DisksResp says how the root disk was made.
type DisksResp struct {
	CloneMethod string `json:"clone_method"`
}

// VMDirReq names a VM directory.
type VMDirReq struct {
	VMDir string `json:"vm_dir"`
}

// LaunchReq boots a VMM.
type LaunchReq struct {
	ID        string   `json:"id"`
	Binary    string   `json:"binary"`
	APISock   string   `json:"api_sock"`
	PIDFile   string   `json:"pid_file"`
	SerialLog string   `json:"serial_log"`
	Kernel    string   `json:"kernel"`
	Initrd    string   `json:"initrd,omitempty"`
	BootArgs  string   `json:"boot_args"`
	Rootfs    string   `json:"rootfs"`
	Drives    []string `json:"drives,omitempty"`
	Tap       string   `json:"tap"`
	MAC       string   `json:"mac"`
	VCPU      int64    `json:"vcpu"`
	MemMiB    int64    `json:"mem_mib"`
	VsockUDS  string   `json:"vsock_uds,omitempty"` // the guest agent's socket, in the VM dir
	ROdrives  []string `json:"ro_drives,omitempty"` // read-only drives after Drives (the tools disk)
}

// LaunchResp is the VMM's pid.
type LaunchResp struct {
	PID int `json:"pid"`
}

// KillReq signals the VMM recorded in PIDFile, if it still is that VMM.
type KillReq struct {
	PIDFile string `json:"pid_file"`
	APISock string `json:"api_sock"`
	Signal  string `json:"signal"` // KILL (default), TERM, INT
}

// Signals a KillReq may name.
var Signals = map[string]syscall.Signal{"": syscall.SIGKILL, "KILL": syscall.SIGKILL, "TERM": syscall.SIGTERM, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT}

var (
	fileNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	idRE       = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)
	macRE      = regexp.MustCompile(`^02(:[0-9a-f]{2}){5}$`)
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
	return gw, nil
}

// ValidateTap checks a TapReq (Bridge only when set).
func (p Policy) ValidateTap(r TapReq) error {
	if err := iface(r.Name, TapPrefix); err != nil {
		return err
	}
	if r.Bridge != "" {
		return iface(r.Bridge, BridgePrefix)
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

// ValidateDisks checks a DisksReq.
func (p Policy) ValidateDisks(r DisksReq) error {
	if err := p.under("vm dir", r.VMDir, p.VMsDir); err != nil {
		return err
	}
	if err := p.file("base rootfs", r.BaseRootfs); err != nil {
		return err
	}
	// The disks are direct children of the VM dir (which may not exist yet).
	for _, wp := range [][2]string{{"rootfs", r.Rootfs}, {"work disk", r.WorkDisk}} {
		what, path := wp[0], wp[1]
		if filepath.Dir(path) != filepath.Clean(r.VMDir) || !fileNameRE.MatchString(filepath.Base(path)) {
			return bad("%s %q must be a file directly inside the vm dir %s", what, path, r.VMDir)
		}
	}
	if r.WorkSeed != "" {
		if err := p.file("work seed", r.WorkSeed); err != nil {
			return err
		}
	}
	if (r.ToolsSource == "") != (r.ToolsDisk == "") {
		return bad("tools source and tools disk go together")
	}
	if r.ToolsSource != "" {
		if err := p.file("tools source", r.ToolsSource); err != nil {
			return err
		}
		if filepath.Dir(r.ToolsDisk) != filepath.Clean(r.VMDir) || !fileNameRE.MatchString(filepath.Base(r.ToolsDisk)) {
			return bad("tools disk %q must be a file directly inside the vm dir %s", r.ToolsDisk, r.VMDir)
		}
	}
	if r.WorkDiskBytes < 64<<20 || r.WorkDiskBytes > 2<<40 {
		return bad("work disk size %d is out of range (64 MiB - 2 TiB)", r.WorkDiskBytes)
	}
	if len(r.AuthorizedKey) > 8192 || !regexp.MustCompile(`^ssh-[a-z0-9-]+ [A-Za-z0-9+/=]+( [^\n]*)?\n?$`).MatchString(r.AuthorizedKey) {
		return bad("authorized key is not one OpenSSH public key line")
	}
	return nil
}

// ValidateVMDir checks a VMDirReq.
func (p Policy) ValidateVMDir(r VMDirReq) error {
	return p.under("vm dir", r.VMDir, p.VMsDir)
}

// ValidateLaunch checks a LaunchReq.
func (p Policy) ValidateLaunch(r LaunchReq) error {
	if !idRE.MatchString(r.ID) {
		return bad("vm id %q must be 1-64 of [A-Za-z0-9-]", r.ID)
	}
	if err := safepath.RegularFile(r.Binary); err != nil {
		return bad("vmm binary: %v", err)
	}
	for _, wp := range [][2]string{{"api socket", r.APISock}, {"pidfile", r.PIDFile}, {"serial log", r.SerialLog}, {"rootfs", r.Rootfs}} {
		what, path := wp[0], wp[1]
		if err := p.under(what, path, p.VMsDir); err != nil {
			return err
		}
	}
	if err := p.file("kernel", r.Kernel); err != nil {
		return err
	}
	if r.Initrd != "" {
		if err := p.file("initrd", r.Initrd); err != nil {
			return err
		}
	}
	for _, d := range r.Drives {
		if err := p.under("drive", d, p.VMsDir); err != nil {
			return err
		}
	}
	if r.VsockUDS != "" {
		if err := p.under("vsock socket", r.VsockUDS, p.VMsDir); err != nil {
			return err
		}
	}
	for _, d := range r.ROdrives {
		if err := p.under("read-only drive", d, p.VMsDir); err != nil {
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
	if len(r.BootArgs) > 2048 {
		return bad("boot args longer than 2048 bytes")
	}
	return nil
}

// ValidateKill checks a KillReq.
func (p Policy) ValidateKill(r KillReq) (syscall.Signal, error) {
	sig, ok := Signals[r.Signal]
	if !ok {
		return 0, bad("signal %q is not one of KILL, TERM, INT, QUIT", r.Signal)
	}
	// In a fixed order, so the error names the first bad path every time.
	for _, wp := range [][2]string{{"pidfile", r.PIDFile}, {"api socket", r.APISock}} {
		what, path := wp[0], wp[1]
		if err := p.under(what, path, p.VMsDir); err != nil {
			return 0, err
		}
	}
	return sig, nil
}

func (r LaunchReq) String() string { return fmt.Sprintf("launch %s (%s)", r.ID, r.Binary) }
