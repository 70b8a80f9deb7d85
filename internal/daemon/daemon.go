// Package daemon is bangerd's composition root: it parses bangerd's flags,
// resolves paths, loads config, opens the store, builds the services and
// registers their RPC handlers on one rpcserver, then serves until SIGTERM.
// It holds no domain logic of its own.
package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/buildinfo"
	"github.com/banger-dev/banger/internal/client"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/derive"
	"github.com/banger-dev/banger/internal/guestssh"
	"github.com/banger-dev/banger/internal/hostcheck"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/privops"
	"github.com/banger-dev/banger/internal/rpcserver"
	"github.com/banger-dev/banger/internal/safesock"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vm"
	"github.com/banger-dev/banger/internal/vmdns"
	"golang.org/x/sys/unix"
)

// ShutdownGrace bounds how long SIGTERM waits for in-flight calls.
const ShutdownGrace = 20 * time.Second

// Main runs bangerd and returns its exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bangerd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		showVersion = fs.Bool("version", false, "print the version and exit")
		system      = fs.Bool("system", false, "use the system (FHS) paths instead of the user's XDG paths")
		checkMig    = fs.Bool("check-migrations", false, "report whether the database is compatible with this binary (exit 0 compatible, 1 migrations needed, 2 incompatible)")
		rootHelper  = fs.Bool("root-helper", false, "run as the root helper (root only): serve banger's fixed list of privileged operations")
		ownerUID    = fs.Int("owner-uid", -1, "root helper: the owner user's uid allowed to call it (default: from the install metadata, else 0)")
		ownerGID    = fs.Int("owner-gid", -1, "root helper: the owner user's gid")
	)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: bangerd [--system] [--check-migrations | --root-helper] [--version]\n\nbangerd is banger's owner daemon; the banger CLI starts it on demand in user mode,\nand systemd runs it in system mode. With --root-helper it is the root helper.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "bangerd: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, buildinfo.Get().Line("bangerd"))
		return 0
	}
	layout, err := paths.Resolve(*system)
	if err != nil {
		fmt.Fprintf(stderr, "bangerd: %v\n", err)
		return 1
	}
	if *checkMig {
		return checkMigrations(layout, stdout, stderr)
	}
	if *rootHelper {
		return runRootHelper(layout, *ownerUID, *ownerGID, stderr)
	}
	if buildinfo.SmokeFault == "broken-daemon" {
		fmt.Fprintln(stderr, "bangerd: this build is deliberately broken (smoke test fault broken-daemon)")
		return 1
	}
	unix.Umask(0o077)
	d, err := newDaemon(layout, stdout, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "bangerd: %v\n", err)
		return 1
	}
	return d.run()
}

func checkMigrations(layout paths.Layout, stdout, stderr io.Writer) int {
	r, err := store.InspectSchema(context.Background(), layout.DBPath())
	if err != nil {
		fmt.Fprintf(stderr, "bangerd: check migrations: %v\n", err)
		return 2
	}
	fmt.Fprintln(stdout, r.Line())
	return int(r.State)
}

// Daemon is the running owner daemon.
type Daemon struct {
	layout  paths.Layout
	cfg     *config.Loaded
	log     *slog.Logger
	store   *store.Store
	srv     *rpcserver.Server
	started time.Time
	stop    chan struct{}

	ops      privops.Ops
	opsMode  string
	helper   *privops.Client
	images   *image.Service
	vms      *vm.Service
	derive   *derive.Service
	vmm      hostcheck.VMMChoice
	vmmError error
	dnsErr   error // why the .vm DNS server is not serving
}

func newDaemon(layout paths.Layout, stdout, stderr io.Writer) (*Daemon, error) {
	cfg, err := config.Load(layout.ConfigFile())
	if err != nil {
		return nil, err
	}
	if err := paths.EnsurePrivateDir(layout.RuntimeDir); err != nil {
		return nil, fmt.Errorf("refusing to start: %w", err)
	}
	if err := os.MkdirAll(layout.StateDir, 0o700); err != nil {
		return nil, err
	}
	logOut := stderr
	if os.Getenv("BANGER_DAEMON_STDERR_TO_LOG") == "1" {
		logOut = stdout
	}
	log := logging.New(logOut, cfg.LogLevel).With("component", "bangerd")
	st, err := store.Open(layout.DBPath())
	if err != nil {
		return nil, err
	}
	d := &Daemon{
		layout:  layout,
		cfg:     cfg,
		log:     log,
		store:   st,
		started: time.Now(),
		stop:    make(chan struct{}, 1),
	}
	d.srv = rpcserver.New(log, allowedUIDs()...)
	if err := d.wire(); err != nil {
		st.Close()
		return nil, err
	}
	d.register()
	return d, nil
}

// wire builds the services, once.
func (d *Daemon) wire() error {
	ctx := logging.With(context.Background(), d.log)
	d.vmm, d.vmmError = hostcheck.ChooseVMM(d.cfg.FirecrackerBin)
	d.ops, d.helper, d.opsMode = chooseOps(ctx, d.layout, d.vmm)
	d.images = &image.Service{Store: d.store, Layout: d.layout, Log: d.log, Catalog: d.cfg.Catalog, OCI: d.cfg.OCI}
	keyPath := d.cfg.SSHKeyPath
	if keyPath == "" {
		keyPath = filepath.Join(d.layout.SSHDir(), "id_ed25519")
	} else if strings.HasPrefix(keyPath, "~/") {
		home, _ := os.UserHomeDir()
		keyPath = filepath.Join(home, keyPath[2:])
	}
	d.vms = &vm.Service{
		Store: d.store, Images: d.images, Ops: d.ops, Layout: d.layout, Config: d.cfg.Config, Log: d.log,
		VMM: d.vmm, KeyPath: keyPath, KnownHosts: guestssh.OpenKnownHosts(filepath.Join(d.layout.SSHDir(), "known_hosts")),
		GuestDNS: d.cfg.GuestDNS,
	}
	if len(d.vms.GuestDNS) == 0 {
		d.vms.GuestDNS = vmdns.HostResolvers()
	}
	d.derive = &derive.Service{VMs: d.vms, Images: d.images, Layout: d.layout, Config: d.cfg.Config, Log: d.log}
	return d.vms.Init()
}

func (d *Daemon) helperID(ctx context.Context) string {
	if d.helper == nil {
		return ""
	}
	var p api.PingResult
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c := client.New(d.helper.Socket())
	if err := c.Call(pctx, api.MethodPing, nil, &p); err != nil {
		return ""
	}
	return fmt.Sprint(p.PID)
}

// allowedUIDs: the daemon's own user, and root.
func allowedUIDs() []uint32 {
	u := uint32(os.Geteuid())
	if u == 0 {
		return []uint32{0}
	}
	return []uint32{u, 0}
}

func (d *Daemon) run() int {
	defer d.store.Close()
	ln, err := safesock.Listen(d.layout.SocketPath())
	if err != nil {
		fmt.Fprintf(os.Stderr, "bangerd: %v\n", err)
		return 1
	}
	if os.Getenv("BANGER_DAEMON_STDERR_TO_LOG") == "1" {
		// The CLI that started us stops reading stderr once we answer.
		_ = unix.Dup2(1, 2)
	}
	ctx, cancelBG := context.WithCancel(logging.With(context.Background(), d.log))
	defer cancelBG()
	d.log.Info("privileged operations", "mode", d.opsMode)
	if d.vmmError != nil {
		d.log.Warn("no VMM available", "error", d.vmmError)
	} else {
		d.log.Info("vmm", "binary", d.vmm.Binary, "kind", d.vmm.Kind, "why", d.vmm.Reason)
	}
	d.images.CleanStaging()
	if d.cfg.DNSListen != "" {
		dnsSrv := &vmdns.Server{Lookup: d.vms.LookupIP}
		if err := dnsSrv.ListenAndServe(d.cfg.DNSListen); err != nil {
			d.dnsErr = err
			d.log.Warn("the .vm DNS server is off", "listen", d.cfg.DNSListen, "error", err)
		} else {
			d.log.Info(".vm DNS server", "listen", d.cfg.DNSListen)
			defer dnsSrv.Shutdown()
		}
	}
	d.log.Info("guest DNS", "nameservers", strings.Join(d.vms.GuestDNS, ","))
	d.vms.Reconcile(ctx)
	go d.vms.Monitor(ctx, d.helperID)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	serveErr := make(chan error, 1)
	go func() { serveErr <- d.srv.Serve(ln) }()
	d.log.Info("daemon started", "version", buildinfo.Version, "commit", buildinfo.Commit,
		"pid", os.Getpid(), "socket", d.layout.SocketPath(), "mode", string(d.layout.Mode))
	code := 0
	select {
	case s := <-sigs:
		d.log.Info("signal received; shutting down", "signal", s.String())
	case <-d.stop:
		d.log.Info("shutdown requested over RPC")
	case err := <-serveErr:
		d.log.Error("serve failed", "error", err)
		code = 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
	defer cancel()
	d.srv.Shutdown(ctx)
	d.log.Info("daemon stopped")
	return code
}
