package privops

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/vmm"
)

// Local performs the operations in this process, after validation. The root
// helper serves it on its socket; a dev setup running as root uses it
// directly.
type Local struct {
	Policy Policy
	// NetNS is the network namespace to act in ("" = the current one).
	NetNS string
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
	// Guests without --nat must not be routed out of the bridge.
	if err := n.IsolateBridge(r.Name); err != nil {
		return err
	}
	return n.EnableForwarding()
}

// CreateTap implements Ops.
func (l *Local) CreateTap(ctx context.Context, r TapReq) error {
	if err := l.Policy.ValidateTap(r); err != nil {
		return err
	}
	if r.Bridge == "" {
		return bad("tap %s: bridge required", r.Name)
	}
	return l.withNet(func(n *hostnet.Net) error { return n.CreateTap(r.Name, r.Bridge, l.Policy.OwnerUID, l.Policy.OwnerGID) })
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

// PrepareDisks implements Ops. On failure nothing it created is left.
func (l *Local) PrepareDisks(ctx context.Context, r DisksReq) (resp DisksResp, err error) {
	if err := l.Policy.ValidateDisks(r); err != nil {
		return resp, err
	}
	if err := os.MkdirAll(r.VMDir, 0o700); err != nil {
		return resp, err
	}
	if err := l.chown(r.VMDir); err != nil {
		return resp, err
	}
	method, err := disk.CloneRootfs(r.BaseRootfs, r.Rootfs)
	if err != nil {
		return resp, fmt.Errorf("clone root disk: %w", err)
	}
	defer func() {
		if err != nil {
			os.Remove(r.Rootfs)
		}
	}()
	seed, err := os.MkdirTemp(r.VMDir, "seed-")
	if err != nil {
		return resp, err
	}
	defer os.RemoveAll(seed)
	if r.WorkSeed != "" {
		if err := extractSeed(r.WorkSeed, seed); err != nil {
			return resp, fmt.Errorf("work seed %s: %w", r.WorkSeed, err)
		}
	}
	if err := os.MkdirAll(filepath.Join(seed, ".ssh"), 0o700); err != nil {
		return resp, err
	}
	if err := os.Chmod(seed, 0o700); err != nil {
		return resp, err
	}
	key := r.AuthorizedKey
	if key[len(key)-1] != '\n' {
		key += "\n"
	}
	if err := os.WriteFile(filepath.Join(seed, ".ssh", "authorized_keys"), []byte(key), 0o600); err != nil {
		return resp, err
	}
	if err := disk.MakeWorkDisk(ctx, r.WorkDisk, r.WorkDiskBytes, seed); err != nil {
		return resp, fmt.Errorf("make work disk: %w", err)
	}
	if r.ToolsSource != "" {
		if _, err := disk.CloneRootfs(r.ToolsSource, r.ToolsDisk); err != nil {
			os.Remove(r.WorkDisk)
			return resp, fmt.Errorf("tools disk: %w", err)
		}
	}
	for _, p := range []string{r.Rootfs, r.WorkDisk, r.ToolsDisk} {
		if p == "" {
			continue
		}
		if err := l.chown(p); err != nil {
			os.Remove(r.WorkDisk)
			if r.ToolsDisk != "" {
				os.Remove(r.ToolsDisk)
			}
			return resp, err
		}
	}
	if method != disk.CloneMethod("reflink") {
		logging.From(ctx).Warn("root disk is a sparse copy: create costs O(image size); put the state dir on XFS/btrfs for reflinks", "vm_dir", r.VMDir)
	}
	return DisksResp{CloneMethod: string(method)}, nil
}

func (l *Local) chown(p string) error {
	if os.Geteuid() != 0 || l.Policy.OwnerUID == 0 {
		return nil
	}
	return os.Lchown(p, l.Policy.OwnerUID, l.Policy.OwnerGID)
}

// RemoveVMDir implements Ops.
func (l *Local) RemoveVMDir(ctx context.Context, r VMDirReq) error {
	if err := l.Policy.ValidateVMDir(r); err != nil {
		return err
	}
	return os.RemoveAll(r.VMDir)
}

// LaunchVMM implements Ops.
func (l *Local) LaunchVMM(ctx context.Context, r LaunchReq) (LaunchResp, error) {
	if err := l.Policy.ValidateLaunch(r); err != nil {
		return LaunchResp{}, err
	}
	pid, err := vmm.Launch(vmm.Spec{
		ID: r.ID, Binary: r.Binary, APISock: r.APISock, PIDFile: r.PIDFile, SerialLog: r.SerialLog,
		Kernel: r.Kernel, Initrd: r.Initrd, BootArgs: r.BootArgs, RootDrive: r.Rootfs, ExtraDrive: r.Drives,
		Tap: r.Tap, MAC: r.MAC, VCPU: r.VCPU, MemMiB: r.MemMiB, VsockUDS: r.VsockUDS, ReadOnlyDrive: r.ROdrives,
	})
	if err != nil {
		return LaunchResp{}, err
	}
	// The daemon (the owner) must reach the API socket and read the logs.
	for _, p := range []string{r.APISock, r.PIDFile, r.SerialLog, r.VsockUDS} {
		if p != "" {
			_ = l.chown(p)
		}
	}
	logging.From(ctx).Info("vmm launched", "vm_id", r.ID, "pid", pid, "binary", r.Binary)
	return LaunchResp{PID: pid}, nil
}

// KillVMM implements Ops. A VMM that is already gone is not an error.
func (l *Local) KillVMM(ctx context.Context, r KillReq) error {
	sig, err := l.Policy.ValidateKill(r)
	if err != nil {
		return err
	}
	pid, err := vmm.ReadPID(r.PIDFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := vmm.Identify(pid, r.APISock); err != nil {
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

// extractSeed unpacks a work seed tar into dir: directories and regular
// files only, names that stay inside dir, nothing through a symlink (there
// are none: dir is fresh and no link is ever created).
func extractSeed(tarPath, dir string) error {
	f, err := os.Open(tarPath)
	if err != nil {
		return err
	}
	defer f.Close()
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
