package sysinstall

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/buildinfo"
	"github.com/banger-dev/banger/internal/client"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/sysexec"
)

// Binaries installed, and where: name → directory key ("bin" or "lib").
var Binaries = []struct{ Name, Dir string }{
	{"banger-agent", "lib"}, // goes onto VMs' tools disks
	{"banger-vmm", "lib"},
	{"bangerd", "bin"},
	{"banger", "bin"}, // the CLI last: an interrupted swap leaves the old CLI able to repair
}

// Path is where binary name is installed.
func (l Layout) Path(name string) string {
	for _, b := range Binaries {
		if b.Name == name && b.Dir == "lib" {
			return filepath.Join(l.LibDir, name)
		}
	}
	return filepath.Join(l.BinDir, name)
}

// Systemd runs systemctl.
type Systemd interface {
	Systemctl(ctx context.Context, args ...string) error
}

// ExecSystemd runs the real systemctl.
type ExecSystemd struct{}

// Systemctl implements Systemd.
func (ExecSystemd) Systemctl(ctx context.Context, args ...string) error {
	_, err := sysexec.Run(ctx, sysexec.Cmd{Path: "systemctl", Args: args})
	return err
}

// Installer performs system install, restart and uninstall.
type Installer struct {
	Layout  Layout
	Systemd Systemd
	Units   UnitOptions
	Out     io.Writer
}

func (in *Installer) say(format string, a ...any) {
	if in.Out != nil {
		fmt.Fprintf(in.Out, format+"\n", a...)
	}
}

// backup records a file's previous state so a failed install can put it back.
type backup struct {
	path    string
	data    []byte
	mode    os.FileMode
	existed bool
}

func snapshot(path string) (backup, error) {
	b := backup{path: path}
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return b, nil
	}
	if err != nil {
		return b, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return b, err
	}
	return backup{path: path, data: data, mode: fi.Mode().Perm(), existed: true}, nil
}

func (b backup) restore() error {
	if !b.existed {
		err := os.Remove(b.path)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	return writeFile(b.path, b.data, b.mode)
}

// Install installs the binaries found in srcDir for owner and starts both
// units, waiting until the daemon answers. On failure every file it wrote
// is put back as it was.
func (in *Installer) Install(ctx context.Context, owner, srcDir string) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("system install needs root; run: sudo banger system install --owner " + owner)
	}
	u, err := user.Lookup(owner)
	if err != nil {
		return fmt.Errorf("unknown --owner %q: %v", owner, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for _, b := range Binaries {
		if fi, err := os.Stat(filepath.Join(srcDir, b.Name)); err != nil || !fi.Mode().IsRegular() {
			return fmt.Errorf("binary %s not found in %s (build with 'make build')", b.Name, srcDir)
		}
	}
	bi := buildinfo.Get()
	meta := Meta{OwnerUser: u.Username, OwnerUID: uid, OwnerGID: gid, OwnerHome: u.HomeDir,
		InstalledAt: time.Now().UTC().Format(time.RFC3339), Version: bi.Version, Commit: bi.Commit, BuiltAt: bi.BuiltAt}
	units := RenderUnits(in.Layout, meta, in.Units)

	var backups []backup
	defer func() {
		if err == nil {
			return
		}
		for i := len(backups) - 1; i >= 0; i-- {
			_ = backups[i].restore()
		}
		_ = in.Systemd.Systemctl(context.Background(), "daemon-reload")
		in.say("install failed; restored the previous files")
	}()
	write := func(path string, data []byte, mode os.FileMode) error {
		b, err := snapshot(path)
		if err != nil {
			return err
		}
		backups = append(backups, b)
		return writeFile(path, data, mode)
	}
	for _, b := range Binaries {
		data, err := os.ReadFile(filepath.Join(srcDir, b.Name))
		if err != nil {
			return err
		}
		dst := in.Layout.Path(b.Name)
		if filepath.Clean(filepath.Join(srcDir, b.Name)) == dst {
			continue
		}
		if err := write(dst, data, 0o755); err != nil {
			return fmt.Errorf("install %s: %w", dst, err)
		}
		in.say("installed %s", dst)
	}
	mb, err := snapshot(in.Layout.MetaPath)
	if err != nil {
		return err
	}
	backups = append(backups, mb)
	if err := WriteMeta(in.Layout.MetaPath, meta); err != nil {
		return err
	}
	in.say("wrote %s (owner %s, uid %d)", in.Layout.MetaPath, meta.OwnerUser, meta.OwnerUID)
	for _, name := range []string{HelperUnit, DaemonUnit} {
		if err := write(filepath.Join(in.Layout.UnitDir, name), []byte(units[name]), 0o644); err != nil {
			return err
		}
	}
	if err := os.MkdirAll("/etc/banger", 0o755); err != nil {
		return err
	}
	// The helper's sandbox names these directories; they must exist, owned
	// by the owner, before either unit starts.
	sl := paths.SystemLayout()
	for _, d := range []string{sl.StateDir, sl.CacheDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
		if err := os.Chown(d, uid, gid); err != nil {
			return err
		}
	}
	// Root's VM tree (the helper's StateDirectory too): root-only, so the
	// VMM may open the disks in it by name (docs/security.md).
	if err := os.MkdirAll(sl.VMsDir(), 0o755); err != nil {
		return err
	}
	if err := os.Chown(sl.VMsDir(), 0, 0); err != nil {
		return err
	}
	if err := os.Chmod(sl.VMsDir(), 0o755); err != nil {
		return err
	}
	for _, args := range [][]string{{"daemon-reload"}, {"enable", HelperUnit, DaemonUnit}, {"restart", HelperUnit}, {"restart", DaemonUnit}} {
		if err := in.Systemd.Systemctl(ctx, args...); err != nil {
			return err
		}
	}
	if err := WaitReady(ctx, 60*time.Second); err != nil {
		return err
	}
	in.say("banger %s installed; both services are running", bi.Version)
	return nil
}

// WaitReady waits until the root helper and the daemon answer on their
// sockets (a Type=simple unit is "active" before its socket is bound).
func WaitReady(ctx context.Context, timeout time.Duration) error {
	l := paths.SystemLayout()
	deadline := time.Now().Add(timeout)
	var last error
	for _, sock := range []string{l.HelperSocketPath(), l.SocketPath()} {
		c := client.New(sock)
		for {
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			var p api.PingResult
			last = c.Call(pctx, api.MethodPing, nil, &p)
			cancel()
			if last == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s did not answer within %s: %v", sock, timeout, last)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// Restart restarts the helper, then the daemon, and waits until both answer.
func (in *Installer) Restart(ctx context.Context) error {
	for _, u := range []string{HelperUnit, DaemonUnit} {
		if err := in.Systemd.Systemctl(ctx, "restart", u); err != nil {
			return err
		}
	}
	return WaitReady(ctx, 60*time.Second)
}

// Uninstall stops and removes the units, the binaries and the install
// metadata; with purge also banger's state, cache and config.
func (in *Installer) Uninstall(ctx context.Context, purge bool) error {
	if os.Geteuid() != 0 {
		return errors.New("system uninstall needs root; run: sudo banger system uninstall")
	}
	var errs []error
	for _, u := range []string{DaemonUnit, HelperUnit} {
		if err := in.Systemd.Systemctl(ctx, "disable", "--now", u); err != nil {
			errs = append(errs, err)
		}
		if err := os.Remove(filepath.Join(in.Layout.UnitDir, u)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	_ = in.Systemd.Systemctl(ctx, "daemon-reload")
	for _, b := range Binaries {
		p := in.Layout.Path(b.Name)
		for _, q := range []string{p, p + ".previous"} {
			if err := os.Remove(q); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	if err := os.Remove(in.Layout.MetaPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if purge {
		l := paths.SystemLayout()
		for _, d := range []string{l.StateDir, l.VMsDir(), l.CacheDir, l.ConfigDir, in.Layout.LibDir} {
			if err := os.RemoveAll(d); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
