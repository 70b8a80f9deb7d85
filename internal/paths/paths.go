// Package paths is the one place that decides where banger keeps things:
// XDG directories in user mode, FHS directories in system mode.
//
// User mode:   config ~/.config/banger, state ~/.local/state/banger,
//
//	cache ~/.cache/banger, runtime $XDG_RUNTIME_DIR/banger (or a private
//	/tmp/banger-runtime-<uid> fallback).
//
// System mode: /etc/banger, /var/lib/banger, /var/cache/banger, /run/banger
// and /run/banger-root (the root helper's socket directory).
//
// System mode is chosen by --system or by the presence of the install
// metadata file written by `banger system install`.
package paths

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// Mode says which family of directories is in use.
type Mode string

// The two modes.
const (
	User   Mode = "user"
	System Mode = "system"
)

// InstallMetaPath is where `banger system install` records the install.
// BANGER_INSTALL_META overrides it (tests only).
func InstallMetaPath() string {
	if p := os.Getenv("BANGER_INSTALL_META"); p != "" {
		return p
	}
	return "/etc/banger/install.toml"
}

// Layout names every top-level directory and well-known file.
type Layout struct {
	Mode       Mode   `json:"mode"`
	ConfigDir  string `json:"config_dir"`
	StateDir   string `json:"state_dir"`
	CacheDir   string `json:"cache_dir"`
	RuntimeDir string `json:"runtime_dir"`
	// HelperRuntimeDir holds the root helper's socket.
	HelperRuntimeDir string `json:"helper_runtime_dir"`
}

// ConfigFile is the TOML config file for this mode.
func (l Layout) ConfigFile() string { return filepath.Join(l.ConfigDir, "config.toml") }

// DBPath is the SQLite database.
func (l Layout) DBPath() string { return filepath.Join(l.StateDir, "banger.db") }

// SocketPath is the owner daemon's RPC socket.
func (l Layout) SocketPath() string { return filepath.Join(l.RuntimeDir, "bangerd.sock") }

// HelperSocketPath is the root helper's socket.
func (l Layout) HelperSocketPath() string {
	return filepath.Join(l.HelperRuntimeDir, "bangerd-root.sock")
}

// DaemonLogPath is where an auto-started user-mode daemon writes its log.
func (l Layout) DaemonLogPath() string { return filepath.Join(l.StateDir, "bangerd.log") }

// VMsDir holds one directory per VM. It is root's tree (the VMM, which
// runs as root, opens the disks in it by name), so in system mode it lies
// outside the owner's state dir: /var/lib/banger-vms. In user mode (where
// the daemon itself is root, or nothing privileged runs) it is <state>/vms.
func (l Layout) VMsDir() string {
	if l.Mode == System {
		return SystemVMsDir
	}
	return filepath.Join(l.StateDir, "vms")
}

// SystemVMsDir is the root-only VM tree of a system install.
const SystemVMsDir = "/var/lib/banger-vms"

// SystemRootCacheDir is where root builds guests in a system install (a
// root-only place; the results are copied into the owner's cache).
const SystemRootCacheDir = "/var/cache/banger-root"

// ImagesDir holds image root filesystems.
func (l Layout) ImagesDir() string { return filepath.Join(l.StateDir, "images") }

// KernelsDir holds kernels.
func (l Layout) KernelsDir() string { return filepath.Join(l.StateDir, "kernels") }

// SSHDir holds banger's SSH key and known_hosts.
func (l Layout) SSHDir() string { return filepath.Join(l.StateDir, "ssh") }

// SystemLayout is the FHS layout.
func SystemLayout() Layout {
	return Layout{
		Mode:             System,
		ConfigDir:        "/etc/banger",
		StateDir:         "/var/lib/banger",
		CacheDir:         "/var/cache/banger",
		RuntimeDir:       "/run/banger",
		HelperRuntimeDir: "/run/banger-root",
	}
}

// UserLayout is the XDG layout for the current user, from the environment.
func UserLayout() (Layout, error) {
	home := os.Getenv("HOME")
	if home == "" {
		h, err := os.UserHomeDir()
		if err != nil {
			return Layout{}, fmt.Errorf("cannot find the home directory: %w", err)
		}
		home = h
	}
	xdg := func(env, def string) string {
		if v := os.Getenv(env); v != "" && filepath.IsAbs(v) {
			return v
		}
		return filepath.Join(home, def)
	}
	var runtime string
	if v := os.Getenv("XDG_RUNTIME_DIR"); v != "" && filepath.IsAbs(v) {
		runtime = filepath.Join(v, "banger")
	} else {
		runtime = filepath.Join(os.TempDir(), "banger-runtime-"+strconv.Itoa(os.Geteuid()))
	}
	return Layout{
		Mode:             User,
		ConfigDir:        filepath.Join(xdg("XDG_CONFIG_HOME", ".config"), "banger"),
		StateDir:         filepath.Join(xdg("XDG_STATE_HOME", ".local/state"), "banger"),
		CacheDir:         filepath.Join(xdg("XDG_CACHE_HOME", ".cache"), "banger"),
		RuntimeDir:       runtime,
		HelperRuntimeDir: runtime,
	}, nil
}

// Resolve picks the layout: system mode when asked, or when banger is
// installed as a system service; user mode otherwise.
func Resolve(system bool) (Layout, error) {
	if system || Installed() {
		return SystemLayout(), nil
	}
	return UserLayout()
}

// Installed reports whether the install metadata file exists.
func Installed() bool {
	_, err := os.Stat(InstallMetaPath())
	return err == nil
}

// ErrUnsafeDir is wrapped by EnsurePrivateDir's refusals.
var ErrUnsafeDir = errors.New("unsafe directory")

// EnsurePrivateDir creates dir (mode 0700, parents as needed) if it is
// missing, then refuses it unless it is a real directory (not a symlink),
// owned by the calling user, and not accessible to group or others.
func EnsurePrivateDir(dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(dir), err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	return CheckPrivateDir(dir)
}

// CheckPrivateDir validates an existing directory as EnsurePrivateDir does.
func CheckPrivateDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("runtime dir %s: %w", dir, err)
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return fmt.Errorf("%w: %s is a symlink; remove it and retry", ErrUnsafeDir, dir)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: %s is not a directory", ErrUnsafeDir, dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%w: %s is owned by uid %d, not by you (uid %d)", ErrUnsafeDir, dir, st.Uid, os.Geteuid())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %04o; it must not be accessible to group or others (chmod 700 %s)", ErrUnsafeDir, dir, perm, dir)
	}
	return nil
}
