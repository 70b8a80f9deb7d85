// Package vm is the VM service: create, start, stop, restart, kill, delete,
// prune and set, with per-VM locks, a step log that unwinds in reverse on
// failure, a monitor that notices VMMs that exit, and reconcile after a
// daemon or root-helper restart (live VMMs are re-adopted untouched; dead
// ones are cleaned up and marked stopped with the reason).
package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/guestssh"
	"github.com/banger-dev/banger/internal/hostcheck"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/privops"
	"github.com/banger-dev/banger/internal/rpcserver"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vmdir"
	"github.com/banger-dev/banger/internal/vmm"
	"golang.org/x/crypto/ssh"
)

// Timeouts.
var (
	SSHReadyTimeout = 120 * time.Second
	StopTimeout     = 20 * time.Second
)

// Service runs VMs.
type Service struct {
	Store  *store.Store
	Images *image.Service
	Ops    privops.Ops
	Layout paths.Layout
	Config config.Config
	Log    *slog.Logger
	VMM    hostcheck.VMMChoice

	// GuestDNS are the nameservers passed to guests (banger.dns=).
	GuestDNS []string

	KeyPath    string
	signer     ssh.Signer
	authKey    string
	KnownHosts *guestssh.KnownHosts

	mu       sync.Mutex
	locks    map[string]*sync.Mutex
	createMu sync.Mutex
	// opMu: every lifecycle operation holds it shared; Reconcile holds it
	// exclusively, so it never judges a VM that is half made or half
	// started.
	opMu sync.RWMutex

	parkerOnce sync.Once
	parker     *autoParker // auto_park_after's idle clocks (autopark.go)

	tmplMu   sync.Mutex
	building map[string]chan struct{} // warm-start templates being built, by key (warm.go)
}

// Init loads banger's SSH key (creating it if needed).
func (s *Service) Init() error {
	signer, auth, err := guestssh.EnsureKey(s.KeyPath)
	if err != nil {
		return fmt.Errorf("ssh key %s: %w", s.KeyPath, err)
	}
	s.signer, s.authKey = signer, auth
	return nil
}

// lockVM takes the VM's lock (and the shared operation lock).
func (s *Service) lockVM(id string) func() {
	s.opMu.RLock()
	unlock := s.lockVMHeld(id)
	return func() { unlock(); s.opMu.RUnlock() }
}

// lockVMHeld takes only the VM's lock: for callers that already hold opMu.
func (s *Service) lockVMHeld(id string) func() {
	s.mu.Lock()
	if s.locks == nil {
		s.locks = map[string]*sync.Mutex{}
	}
	l := s.locks[id]
	if l == nil {
		l = &sync.Mutex{}
		s.locks[id] = l
	}
	s.mu.Unlock()
	l.Lock()
	return l.Unlock
}

func now() string { return time.Now().UTC().Format(time.RFC3339Nano) }

// ToAPI converts a record for the wire.
func (s *Service) ToAPI(ctx context.Context, r store.VMRecord) api.VM {
	img := r.ImageID
	if im, err := s.Store.GetImage(ctx, r.ImageID); err == nil {
		img = im.Name
	}
	return api.VM{ID: r.ID, Name: r.Name, Image: img, State: r.State, VCPU: r.VCPU, MemoryMiB: r.MemoryMiB,
		DiskBytes: r.DiskBytes, NAT: r.NAT, IP: r.GuestIP, DNSName: r.Name + ".vm", CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt, Runtime: r.Runtime}
}

// steps records what a multi-step operation did, to unwind it in reverse.
type steps struct {
	log   *slog.Logger
	undos []struct {
		name string
		fn   func() error
	}
}

func (st *steps) did(name string, undo func() error) {
	st.undos = append(st.undos, struct {
		name string
		fn   func() error
	}{name, undo})
}

func (st *steps) unwind() {
	for i := len(st.undos) - 1; i >= 0; i-- {
		u := st.undos[i]
		if err := u.fn(); err != nil {
			st.log.Warn("unwind step failed", "step", u.name, "error", err)
		} else {
			st.log.Info("unwound", "step", u.name)
		}
	}
	st.undos = nil
}

// Create validates everything, then records the VM, prepares its disks and
// (unless NoStart) starts it. On failure nothing is left, except a VM whose
// guest booted but never answered SSH: it is kept so 'vm logs' can say why.
func (s *Service) Create(ctx context.Context, p api.VMCreateParams, progress io.Writer) (api.VM, error) {
	return s.create(ctx, p, "", progress, "")
}

// CreateSeeded is Create with workSeed (a tar under banger's own
// directories) as the VM's /root instead of its image's: how a derived
// image's build VM gets its build script and files.
func (s *Service) CreateSeeded(ctx context.Context, p api.VMCreateParams, workSeed string, progress io.Writer) (api.VM, error) {
	return s.create(ctx, p, workSeed, progress, "")
}

// resources are a VM's vCPUs, memory and work disk size: the flags given,
// else vm_defaults.
func (s *Service) resources(vcpuP, memP *int, diskP *string) (vcpu, mem int, diskBytes int64, err error) {
	vcpu, mem = s.Config.VMDefaults.VCPU, s.Config.VMDefaults.MemoryMiB
	if vcpuP != nil {
		vcpu = *vcpuP
	}
	if memP != nil {
		mem = *memP
	}
	if vcpu < 1 || vcpu > 32 {
		return 0, 0, 0, errdefs.BadRequestf("invalid --vcpu %d: must be 1-32", vcpu)
	}
	if mem < 128 {
		return 0, 0, 0, errdefs.BadRequestf("invalid --memory %d MiB: at least 128 MiB is needed", mem)
	}
	diskStr := s.Config.VMDefaults.DiskSize
	if diskP != nil {
		diskStr = *diskP
	}
	diskBytes, err = config.ParseSize(diskStr)
	if err != nil || diskBytes < 64<<20 {
		return 0, 0, 0, errdefs.BadRequestf("invalid --disk-size %q: use a size like 512M or 2G (at least 64M)", diskStr)
	}
	return vcpu, mem, diskBytes, nil
}

// create makes a VM: from a warm-start template of its shape when there
// is one (warm.go), else by a boot, after which the template is made in the
// background. template, when set, is the key of the template being built:
// this VM is it (booted cold, hidden).
func (s *Service) create(ctx context.Context, p api.VMCreateParams, workSeed string, progress io.Writer, template string) (api.VM, error) {
	log := logging.From(ctx)
	generated := p.Name == ""
	if generated {
		p.Name = GenerateName()
	}
	if err := ValidateName(p.Name); err != nil {
		return api.VM{}, err
	}
	vcpu, mem, diskBytes, err := s.resources(p.VCPU, p.MemoryMiB, p.DiskSize)
	if err != nil {
		return api.VM{}, err
	}
	imgName := p.Image
	if imgName == "" {
		imgName = s.Config.DefaultImage
	}
	if err := s.Images.Known(ctx, imgName); err != nil {
		return api.VM{}, err
	}
	if _, err := s.Store.GetVM(ctx, p.Name); err == nil && !generated {
		return api.VM{}, errdefs.AlreadyExistsf("a VM named %q already exists", p.Name)
	}
	rpcserver.SetStage(ctx, "resolving image "+imgName)
	res, err := s.Images.Resolve(ctx, imgName, progress)
	if err != nil {
		return api.VM{}, err
	}
	// Warm: a derived image's build VM (workSeed) and a VM that is not to
	// start have their own disks; a template is a boot by definition.
	warm := s.Config.Warm() && !p.Cold && !p.NoStart && workSeed == "" && template == ""
	sh := shape{res: res, imageName: imgName, vcpu: vcpu, mem: mem, disk: diskBytes}
	key := ""
	if warm {
		if key, err = s.templateKey(ctx, sh); err != nil {
			log.Warn("no warm start", "error", err)
			warm = false
		}
	}
	var warnings []string
	if warm {
		if tmpl, ok := s.findTemplate(ctx, key); ok {
			vm, err := s.warmStart(ctx, tmpl, p, generated)
			if err == nil {
				return vm, nil
			}
			if errors.Is(err, errdefs.ErrAlreadyExists) {
				return vm, err
			}
			if !errors.Is(err, errNoTemplate) {
				s.dropTemplate(ctx, tmpl.ID)
				warnings = append(warnings, fmt.Sprintf("warm-start template %s could not be used (%s); it was dropped and the VM booted cold", tmpl.Name, oneLine(err.Error())))
			}
			log.Warn("warm start failed; booting cold", "template", tmpl.Name, "error", err)
		}
	}

	st := &steps{log: log}
	s.opMu.RLock()
	defer s.opMu.RUnlock()
	s.createMu.Lock()
	used, err := s.Store.UsedIPs(ctx)
	if err != nil {
		s.createMu.Unlock()
		return api.VM{}, err
	}
	ip, err := allocateIP(s.Config.Network(), used)
	if err != nil {
		s.createMu.Unlock()
		return api.VM{}, err
	}
	if generated {
		// A generated name is ours to change: pick a free one under the
		// create lock (a user's name is refused above instead).
		p.Name = s.freeName(ctx, p.Name)
	}
	id := newID()
	dir := vmdir.New(s.Layout.VMsDir(), id)
	rec := store.VMRecord{
		ID: id, Name: p.Name, ImageID: res.Image.ID, State: api.StateCreated, VCPU: vcpu, MemoryMiB: mem,
		DiskBytes: diskBytes, NAT: p.NAT, GuestIP: ip.String(), CreatedAt: now(), UpdatedAt: now(),
		Runtime: api.VMRuntime{Tap: tapFor(id), MAC: macFor(ip), Dir: dir.Path(), APISock: dir.APISock(), SerialLog: dir.SerialLog(),
			Template: template, Start: config.StartCold},
	}
	err = s.Store.InsertVM(ctx, rec)
	s.createMu.Unlock()
	if err != nil {
		return api.VM{}, err
	}
	unlock := s.lockVMHeld(id)
	defer unlock()
	crashPoint("recorded")
	st.did("record vm", func() error { return s.Store.DeleteVM(context.Background(), id) })
	log.Info("vm recorded", "vm", p.Name, "id", id, "ip", ip.String())

	rpcserver.SetStage(ctx, "preparing disks")
	st.did("vm dir", func() error {
		return s.Ops.RemoveVMDir(context.Background(), privops.VMReq{ID: id})
	})
	tools, err := s.Images.ToolsDisk(ctx)
	if err != nil {
		log.Warn("VM boots without the guest agent", "error", err)
	}
	if workSeed == "" {
		workSeed = res.WorkSeed
	}
	dr, err := s.Ops.PrepareDisks(ctx, privops.DisksReq{
		ID: id, BaseRootfs: res.Image.Rootfs, WorkDiskBytes: diskBytes, AuthorizedKey: s.authKey,
		WorkSeed: workSeed, ToolsSource: tools,
	})
	if err != nil {
		st.unwind()
		return api.VM{}, fmt.Errorf("prepare disks: %w", err)
	}
	crashPoint("disks")
	// CloneMethod set = the disks are complete (reconcile removes a VM
	// recorded without it: its create was interrupted).
	rec.Runtime.CloneMethod = dr.CloneMethod
	if dr.CloneMethod == "sparse-copy" && progress != nil {
		fmt.Fprintln(progress, "warning: no reflink support under the state dir; the root disk is a sparse copy, so create costs O(image size)")
	}
	rec.UpdatedAt = now()
	if err := s.Store.UpdateVM(ctx, rec); err != nil {
		st.unwind()
		return api.VM{}, err
	}
	if p.NoStart {
		return s.ToAPI(ctx, rec), nil
	}
	rec, err = s.start(ctx, rec, res)
	if err != nil {
		var nr *notReadyError
		if errors.As(err, &nr) {
			// Keep the evidence: the guest is up but silent.
			return s.ToAPI(ctx, rec), err
		}
		st.unwind()
		return api.VM{}, err
	}
	if warm {
		// The next start of this shape is warm; this one never waits.
		_, _, _ = s.ensureTemplate(ctx, sh, key, false)
	}
	v := s.ToAPI(ctx, rec)
	v.Warnings = warnings
	return v, nil
}

// oneLine is s on one line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// notReadyError: the VMM runs but the guest never answered SSH.
type notReadyError struct {
	name string
	err  error
}

func (e *notReadyError) Error() string {
	return fmt.Sprintf("VM %s booted but its guest did not answer SSH (%v); it was kept: read 'banger vm logs %s', then 'banger vm delete %s'", e.name, e.err, e.name, e.name)
}

func (s *Service) bootArgs(rec store.VMRecord, res image.Resolved) string {
	gw := gateway(s.Config.Network())
	// i8042.noaux/nomux/dumbkbd (Firecracker's own default flags): no probe
	// of a PS/2 mouse port, mux or keyboard LEDs that Firecracker's i8042
	// lacks (a ~0.5 s stall there; ~10 ms under banger-vmm, whose i8042 is
	// QEMU's); the keyboard stays, for SendCtrlAltDel (vm stop) and reboot=k.
	args := fmt.Sprintf("console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd net.ifnames=0 quiet banger.ip=%s/%d banger.gw=%s banger.hostname=%s",
		rec.GuestIP, gw.Bits(), gw.Addr(), rec.Name)
	if len(s.GuestDNS) > 0 {
		args += " banger.dns=" + strings.Join(s.GuestDNS, ",")
	}
	if init := res.Init(); init != "" {
		args += " init=" + init
	}
	return args
}

// start boots a recorded VM whose disks exist. The caller holds the VM lock.
func (s *Service) start(ctx context.Context, rec store.VMRecord, res image.Resolved) (store.VMRecord, error) {
	log := logging.From(ctx).With("vm", rec.Name)
	st := &steps{log: log}
	tap := rec.Runtime.Tap
	gw := gateway(s.Config.Network())

	// Record first, then act: a VM in "starting" is cleaned up by
	// reconcile if the daemon dies before it runs. A cold boot uses the
	// VM's own tap, and so will its snapshots.
	rec.Runtime.SnapshotTap = ""
	rec.State = api.StateStarting
	rec.UpdatedAt = now()
	if err := s.Store.UpdateVM(ctx, rec); err != nil {
		return rec, err
	}
	failed := func(err error) (store.VMRecord, error) {
		st.unwind()
		rec.State = api.StateStopped
		rec.Runtime.LastError = err.Error()
		rec.UpdatedAt = now()
		_ = s.Store.UpdateVM(context.Background(), rec)
		return rec, err
	}
	rpcserver.SetStage(ctx, "network")
	if err := s.Ops.EnsureBridge(ctx, privops.BridgeReq{Name: s.Config.BridgeName, Gateway: gw.String(), HostPorts: s.hostPorts(gw.Addr())}); err != nil {
		return failed(fmt.Errorf("bridge %s: %w", s.Config.BridgeName, err))
	}
	if err := s.Ops.CreateTap(ctx, s.tapReq(rec)); err != nil {
		return failed(fmt.Errorf("tap %s: %w", tap, err))
	}
	st.did("tap", func() error { return s.Ops.DeleteTap(context.Background(), privops.TapReq{Name: tap}) })
	crashPoint("tap")
	if rec.NAT {
		if err := s.Ops.AddNAT(ctx, privops.NATReq{GuestIP: rec.GuestIP, Tap: tap}); err != nil {
			return failed(fmt.Errorf("nat: %w", err))
		}
		st.did("nat", func() error {
			return s.Ops.RemoveNAT(context.Background(), privops.NATReq{GuestIP: rec.GuestIP, Tap: tap})
		})
		crashPoint("nat")
	}
	rpcserver.SetStage(ctx, "booting")
	// Where this boot's console output starts in the (appended) serial log.
	console := markConsole(vmdir.Dir(rec.Runtime.Dir).SerialLog())
	lr, err := s.Ops.LaunchVMM(ctx, privops.LaunchReq{
		ID: rec.ID, Kernel: res.Kernel.Vmlinux, Initrd: res.Kernel.Initrd, BootArgs: s.bootArgs(rec, res),
		Tap: tap, MAC: rec.Runtime.MAC, VCPU: int64(rec.VCPU), MemMiB: int64(rec.MemoryMiB),
	})
	if err != nil {
		return failed(fmt.Errorf("launch VMM: %w", err))
	}
	// Still "starting" until the host keys are pinned: reconcile stops a
	// VM it finds starting (its keys may never have been pinned).
	rec.Runtime.PID = lr.PID
	rec.Runtime.VMM = lr.Binary
	rec.Runtime.VMMKind = lr.Kind
	rec.Runtime.StartedAt = now()
	rec.Runtime.StopReason = ""
	rec.Runtime.LastError = ""
	rec.UpdatedAt = now()
	if err := s.Store.UpdateVM(ctx, rec); err != nil {
		return rec, err
	}
	log.Info("vmm launched", "pid", lr.PID, "vmm", lr.Kind)
	crashPoint("launched")

	rpcserver.SetStage(ctx, "waiting for ssh")
	wctx, cancel := context.WithTimeout(ctx, SSHReadyTimeout)
	defer cancel()
	// Pin the guest's SSH host keys from this boot's console, never from
	// the network.
	// A guest that boots but cannot be reached is kept, in state error,
	// so 'vm logs' can say why.
	keep := func(why string) {
		rec.State = api.StateError
		rec.Runtime.LastError = why
		rec.UpdatedAt = now()
		_ = s.Store.UpdateVM(context.Background(), rec)
	}
	if err := console.pinHostKeys(wctx, s.KnownHosts, rec.GuestIP, res.Image); err != nil {
		keep(err.Error())
		if errors.Is(err, guestssh.ErrNoConsoleHostKeys) {
			return rec, fmt.Errorf("VM %s: %w", rec.Name, err)
		}
		return rec, &notReadyError{name: rec.Name, err: err}
	}
	rec.State = api.StateRunning
	rec.UpdatedAt = now()
	if err := s.Store.UpdateVM(ctx, rec); err != nil {
		return rec, err
	}
	crashPoint("running")
	c, err := guestssh.WaitReady(wctx, net.JoinHostPort(rec.GuestIP, "22"), s.dialOptions(), 250*time.Millisecond)
	if err != nil {
		keep("guest did not answer SSH: " + err.Error())
		return rec, &notReadyError{name: rec.Name, err: err}
	}
	c.Close()
	if rec.Runtime.NeedsIdentity {
		// A fork booted cold before it ever took its own identity: its
		// disks still hold its parent's machine-id and host keys.
		if rec, err = s.takeIdentity(ctx, rec); err != nil {
			return rec, err
		}
	}
	log.Info("vm ready", "ip", rec.GuestIP)
	return rec, nil
}

func (s *Service) dialOptions() guestssh.DialOptions {
	return guestssh.DialOptions{User: "root", Signer: s.signer, KnownHosts: s.KnownHosts, Timeout: 5 * time.Second}
}

func (s *Service) get(ctx context.Context, name string) (store.VMRecord, func(), error) {
	rec, err := s.Store.GetVM(ctx, name)
	if err != nil {
		return rec, nil, err
	}
	unlock := s.lockVM(rec.ID)
	// Re-read under the lock.
	rec, err = s.Store.GetVM(ctx, rec.ID)
	if err != nil {
		unlock()
		return rec, nil, err
	}
	return rec, unlock, nil
}

// Start boots a stopped VM.
func (s *Service) Start(ctx context.Context, name string) (api.VM, error) {
	rec, unlock, err := s.get(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	if rec.State == api.StateParked {
		// Its memory is in its snapshot: wake it rather than boot it.
		rec, err = s.wake(ctx, rec)
		return s.ToAPI(ctx, rec), err
	}
	if s.live(ctx, rec) {
		return s.ToAPI(ctx, rec), errdefs.New(errdefs.BadRequest, "VM %s is already running", rec.Name)
	}
	res, err := s.Images.Resolve(ctx, s.imageName(ctx, rec), nil)
	if err != nil {
		return api.VM{}, err
	}
	if _, err := os.Stat(vmdir.Dir(rec.Runtime.Dir).Rootfs()); err != nil {
		return api.VM{}, fmt.Errorf("VM %s has no root disk (%v); delete and recreate it", rec.Name, err)
	}
	rec, err = s.start(ctx, rec, res)
	return s.ToAPI(ctx, rec), err
}

func (s *Service) imageName(ctx context.Context, rec store.VMRecord) string {
	if im, err := s.Store.GetImage(ctx, rec.ImageID); err == nil {
		return im.Name
	}
	return rec.ImageID
}

// live reports whether the VM's VMM is running (and really is its VMM).
func (s *Service) live(ctx context.Context, rec store.VMRecord) bool {
	if rec.Runtime.Dir == "" {
		return false
	}
	d := vmdir.Dir(rec.Runtime.Dir)
	_, ok := vmm.Running(d.PIDFile(), d.APISock())
	return ok
}

// Stop shuts the guest down cleanly: sync and reboot over SSH (which ends
// the VMM, as on Firecracker), then Ctrl-Alt-Del, then SIGKILL after a
// timeout. Data synced before the kill is never lost.
func (s *Service) Stop(ctx context.Context, name string) (api.VM, error) {
	rec, unlock, err := s.get(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	rec, err = s.stop(ctx, rec, "")
	return s.ToAPI(ctx, rec), err
}

func (s *Service) stop(ctx context.Context, rec store.VMRecord, reason string) (store.VMRecord, error) {
	log := logging.From(ctx).With("vm", rec.Name)
	d := vmdir.Dir(rec.Runtime.Dir)
	if rec.State == api.StateParked {
		// Stopping a parked VM forgets its memory; its disks stay.
		if err := s.Ops.DiscardSnapshot(ctx, privops.VMReq{ID: rec.ID}); err != nil {
			return rec, err
		}
		rec.Runtime.SnapshotBytes, rec.Runtime.ParkedAt = 0, ""
	}
	if rec.State == api.StatePaused {
		// A paused guest cannot shut down cleanly.
		if err := s.Ops.PauseVMM(ctx, privops.PauseReq{ID: rec.ID, Paused: false}); err != nil {
			log.Warn("resume before stop", "error", err)
		}
	}
	if pid, ok := vmm.Running(d.PIDFile(), d.APISock()); ok {
		rpcserver.SetStage(ctx, "shutting down the guest")
		rec.State = api.StateStopping
		_ = s.Store.UpdateVM(ctx, rec)
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if c, err := guestssh.Dial(sctx, net.JoinHostPort(rec.GuestIP, "22"), s.dialOptions()); err == nil {
			// sync first, and wait for it: what was written is on disk.
			if _, err := c.RunScript(sctx, "sync", nil, io.Discard, io.Discard); err != nil {
				log.Warn("guest sync failed", "error", err)
			}
			// The guest dies under reboot: no exit status comes back, so
			// don't wait for one; the VMM's exit is what counts.
			go func() {
				_, _ = c.RunScript(sctx, "reboot -f 2>/dev/null || /.banger/bin/reboot -f", nil, io.Discard, io.Discard)
				c.Close()
			}()
		} else {
			log.Warn("guest not reachable over SSH for a clean shutdown", "error", err)
		}
		defer cancel()
		if !s.waitGone(ctx, pid, StopTimeout) {
			log.Warn("guest did not power off in time; sending Ctrl-Alt-Del")
			_ = s.Ops.CtrlAltDel(ctx, privops.VMReq{ID: rec.ID})
			if !s.waitGone(ctx, pid, 5*time.Second) {
				log.Warn("killing the VMM")
				_ = s.Ops.KillVMM(ctx, privops.KillReq{ID: rec.ID, Signal: "KILL"})
				s.waitGone(ctx, pid, 10*time.Second)
			}
		}
	}
	return s.cleanup(ctx, rec, reason)
}

func (s *Service) waitGone(ctx context.Context, pid int, d time.Duration) bool {
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return vmm.WaitExit(wctx, pid) == nil
}

// cleanup releases a non-running VM's tap, NAT rules and transient files
// and marks it stopped.
func (s *Service) cleanup(ctx context.Context, rec store.VMRecord, reason string) (store.VMRecord, error) {
	var errs []error
	if rec.Runtime.Tap != "" {
		if err := s.Ops.DeleteTap(ctx, privops.TapReq{Name: rec.Runtime.Tap}); err != nil {
			errs = append(errs, fmt.Errorf("delete tap: %w", err))
		}
		if rec.NAT {
			if err := s.Ops.RemoveNAT(ctx, privops.NATReq{GuestIP: rec.GuestIP, Tap: rec.Runtime.Tap}); err != nil {
				errs = append(errs, fmt.Errorf("remove nat: %w", err))
			}
		}
	}
	if rec.Runtime.Dir != "" {
		if err := s.Ops.ClearRuntime(ctx, privops.VMReq{ID: rec.ID}); err != nil {
			errs = append(errs, err)
		}
	}
	if rec.State != api.StateCreated || rec.Runtime.StartedAt != "" {
		rec.State = api.StateStopped
	}
	rec.Runtime.PID = 0
	rec.Runtime.StoppedAt = now()
	rec.Runtime.StopReason = reason
	rec.UpdatedAt = now()
	if err := s.Store.UpdateVM(context.Background(), rec); err != nil {
		errs = append(errs, err)
	}
	return rec, errors.Join(errs...)
}

// Restart stops then starts a VM.
func (s *Service) Restart(ctx context.Context, name string) (api.VM, error) {
	rec, unlock, err := s.get(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	if rec, err = s.stop(ctx, rec, ""); err != nil {
		return s.ToAPI(ctx, rec), err
	}
	res, err := s.Images.Resolve(ctx, s.imageName(ctx, rec), nil)
	if err != nil {
		return api.VM{}, err
	}
	rec, err = s.start(ctx, rec, res)
	return s.ToAPI(ctx, rec), err
}

// Kill signals the VMM (default SIGKILL) and cleans up.
func (s *Service) Kill(ctx context.Context, p api.VMKillParams) (api.VM, error) {
	sig := p.Signal
	if len(sig) > 3 && sig[:3] == "SIG" {
		sig = sig[3:]
	}
	if _, ok := privops.Signals[sig]; !ok {
		return api.VM{}, errdefs.BadRequestf("invalid --signal %q: use KILL, TERM, INT or QUIT", p.Signal)
	}
	rec, unlock, err := s.get(ctx, p.Name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	d := vmdir.Dir(rec.Runtime.Dir)
	if pid, err := vmm.ReadPID(d.PIDFile()); err == nil {
		if err := s.Ops.KillVMM(ctx, privops.KillReq{ID: rec.ID, Signal: sig}); err != nil {
			return s.ToAPI(ctx, rec), err
		}
		if !s.waitGone(ctx, pid, 10*time.Second) {
			return s.ToAPI(ctx, rec), fmt.Errorf("VMM pid %d still running after SIG%s; try --signal KILL", pid, orKill(sig))
		}
	}
	rec, err = s.cleanup(ctx, rec, "killed with SIG"+orKill(sig))
	return s.ToAPI(ctx, rec), err
}

func orKill(s string) string {
	if s == "" {
		return "KILL"
	}
	return s
}

// Delete stops a VM if needed and removes its disks, record and SSH pin.
func (s *Service) Delete(ctx context.Context, name string) error {
	rec, unlock, err := s.get(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	return s.delete(ctx, rec)
}

func (s *Service) delete(ctx context.Context, rec store.VMRecord) error {
	if deps, err := s.dependents(ctx, rec); err != nil {
		return err
	} else if len(deps) > 0 {
		return errdefs.BadRequestf("VM %s's disks back its forks %s (their disks are overlays of its frozen ones); nothing was deleted: delete those first", rec.Name, strings.Join(deps, ", "))
	}
	// The disks are about to go: no clean shutdown is owed to them.
	d := vmdir.Dir(rec.Runtime.Dir)
	if pid, ok := vmm.Running(d.PIDFile(), d.APISock()); ok {
		_ = s.Ops.KillVMM(ctx, privops.KillReq{ID: rec.ID, Signal: "KILL"})
		s.waitGone(ctx, pid, 10*time.Second)
	}
	var err error
	if rec, err = s.cleanup(ctx, rec, ""); err != nil {
		logging.From(ctx).Warn("cleanup before delete", "vm", rec.Name, "error", err)
	}
	if rec.Runtime.Dir != "" {
		if err := s.Ops.RemoveVMDir(ctx, privops.VMReq{ID: rec.ID}); err != nil {
			return fmt.Errorf("remove %s: %w", rec.Runtime.Dir, err)
		}
	}
	if rec.GuestIP != "" {
		if err := s.KnownHosts.Remove(rec.GuestIP); err != nil {
			logging.From(ctx).Warn("known_hosts cleanup", "error", err)
		}
	}
	logging.From(ctx).Info("vm deleted", "vm", rec.Name, "id", rec.ID)
	return s.Store.DeleteVM(ctx, rec.ID)
}

// Prune deletes every VM that is not running.
func (s *Service) Prune(ctx context.Context) (api.VMPruneResult, error) {
	out := api.VMPruneResult{Deleted: []string{}}
	recs, err := s.Store.ListVMs(ctx)
	if err != nil {
		return out, err
	}
	var errs []error
	for _, r := range recs {
		rec, unlock, err := s.get(ctx, r.ID)
		if err != nil {
			continue
		}
		if rec.State == api.StateRunning || rec.State == api.StateStarting || rec.State == api.StatePaused || rec.State == api.StateParked || s.live(ctx, rec) {
			unlock()
			continue
		}
		if deps, err := s.dependents(ctx, rec); err != nil || len(deps) > 0 {
			unlock() // its forks' disks need it
			continue
		}
		if err := s.delete(ctx, rec); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", rec.Name, err))
		} else {
			out.Deleted = append(out.Deleted, rec.Name)
		}
		unlock()
	}
	return out, errors.Join(errs...)
}

// Set changes a stopped VM's vCPUs or memory.
func (s *Service) Set(ctx context.Context, p api.VMSetParams) (api.VM, error) {
	if p.VCPU == nil && p.MemoryMiB == nil {
		return api.VM{}, errdefs.BadRequestf("nothing to change: give --vcpu and/or --memory")
	}
	if p.VCPU != nil && (*p.VCPU < 1 || *p.VCPU > 32) {
		return api.VM{}, errdefs.BadRequestf("invalid --vcpu %d: must be 1-32", *p.VCPU)
	}
	if p.MemoryMiB != nil && *p.MemoryMiB < 128 {
		return api.VM{}, errdefs.BadRequestf("invalid --memory %d MiB: at least 128 MiB is needed", *p.MemoryMiB)
	}
	rec, unlock, err := s.get(ctx, p.Name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	if s.live(ctx, rec) {
		return api.VM{}, errdefs.BadRequestf("VM %s is running; stop it first ('banger vm stop %s')", rec.Name, rec.Name)
	}
	if rec.State == api.StateParked {
		return api.VM{}, errdefs.BadRequestf("VM %s is parked: its snapshot fixes its vCPUs and memory; 'banger vm stop %s' discards the snapshot first", rec.Name, rec.Name)
	}
	if p.VCPU != nil {
		rec.VCPU = *p.VCPU
	}
	if p.MemoryMiB != nil {
		rec.MemoryMiB = *p.MemoryMiB
	}
	rec.UpdatedAt = now()
	return s.ToAPI(ctx, rec), s.Store.UpdateVM(ctx, rec)
}

// List returns every VM.
func (s *Service) List(ctx context.Context) ([]api.VM, error) {
	recs, err := s.Store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	out := []api.VM{}
	for _, r := range recs {
		if !isTemplate(r) { // templates are the images' (image show)
			out = append(out, s.ToAPI(ctx, r))
		}
	}
	return out, nil
}

// Show returns one VM.
func (s *Service) Show(ctx context.Context, name string) (api.VM, error) {
	rec, err := s.Store.GetVM(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	return s.ToAPI(ctx, rec), nil
}

// Logs returns the tail of the serial console.
func (s *Service) Logs(ctx context.Context, name string) (api.VMLogs, error) {
	rec, err := s.Store.GetVM(ctx, name)
	if err != nil {
		return api.VMLogs{}, err
	}
	const max = 512 << 10
	out := api.VMLogs{Path: rec.Runtime.SerialLog}
	f, err := os.Open(rec.Runtime.SerialLog)
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return out, err
	}
	defer f.Close()
	fi, _ := f.Stat()
	if fi.Size() > max {
		_, _ = f.Seek(-max, io.SeekEnd)
		out.Truncated = true
	}
	b, err := io.ReadAll(f)
	out.Text = string(b)
	return out, err
}

// Exec runs argv in a running VM over SSH (banger's key, the pinned host
// key) and returns its exit code.
func (s *Service) Exec(ctx context.Context, name string, argv []string, stdout, stderr io.Writer) (int, error) {
	rec, err := s.Store.GetVM(ctx, name)
	if err != nil {
		return 0, err
	}
	if rec.State != api.StateRunning {
		return 0, errdefs.New(errdefs.BadRequest, "VM %s is %s", rec.Name, rec.State)
	}
	opts := s.dialOptions()
	opts.Timeout = 10 * time.Second
	c, err := guestssh.Dial(ctx, net.JoinHostPort(rec.GuestIP, "22"), opts)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.Run(ctx, argv, nil, stdout, stderr)
}

// TakeRootfs hands a stopped VM's root disk to the daemon and returns its
// path: the root helper makes it the owner's file, for an image to be made
// of it. The VM is deleted afterwards by the caller.
func (s *Service) TakeRootfs(ctx context.Context, name string) (string, error) {
	rec, unlock, err := s.get(ctx, name)
	if err != nil {
		return "", err
	}
	defer unlock()
	if s.live(ctx, rec) {
		return "", errdefs.New(errdefs.BadRequest, "VM %s is running; stop it first", rec.Name)
	}
	if err := s.Ops.ReleaseRootfs(ctx, privops.VMReq{ID: rec.ID}); err != nil {
		return "", err
	}
	return vmdir.Dir(rec.Runtime.Dir).Rootfs(), nil
}

// SSHInfo tells a client how to reach the guest.
func (s *Service) SSHInfo(ctx context.Context, name string) (api.SSHInfo, error) {
	rec, err := s.Store.GetVM(ctx, name)
	if err != nil {
		return api.SSHInfo{}, err
	}
	return api.SSHInfo{Name: rec.Name, State: rec.State, Host: rec.GuestIP, User: "root", KeyPath: s.KeyPath, KnownHosts: s.KnownHosts.Path(), Workspace: rec.Runtime.Workspace}, nil
}

// RecordWorkspace remembers the workspace last prepared in a VM, so
// 'vm exec' runs there and can tell when the host repository moved on.
func (s *Service) RecordWorkspace(ctx context.Context, p api.VMWorkspaceParams) (api.VM, error) {
	if p.Workspace.GuestPath == "" || p.Workspace.GuestPath[0] != '/' {
		return api.VM{}, errdefs.BadRequestf("workspace guest path %q must be absolute", p.Workspace.GuestPath)
	}
	rec, unlock, err := s.get(ctx, p.Name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	w := p.Workspace
	w.PreparedAt = now()
	rec.Runtime.Workspace = &w
	rec.UpdatedAt = now()
	return s.ToAPI(ctx, rec), s.Store.UpdateVM(ctx, rec)
}

// Reconcile checks every VM: a live VMM (pidfile, identity, answering
// API, asked through the helper) is re-adopted untouched; a dead one is
// cleaned up (tap, NAT rules, runtime files) and marked stopped with the
// reason; a VM whose create was interrupted before its disks were complete
// is removed. Leftover taps and VM directories with no record are removed
// and logged. It holds the operation lock exclusively, so no create or
// start is half way through while it judges.
func (s *Service) Reconcile(ctx context.Context) {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	log := logging.From(ctx)
	recs, err := s.Store.ListVMs(ctx)
	if err != nil {
		log.Error("reconcile: list vms", "error", err)
		return
	}
	known := map[string]bool{}
	taps := map[string]bool{}
	for _, r := range recs {
		unlock := s.lockVMHeld(r.ID)
		rec, err := s.Store.GetVM(ctx, r.ID)
		if err != nil {
			unlock()
			continue
		}
		if rec.State == api.StateCreated && rec.Runtime.CloneMethod == "" {
			// Its create never finished: nothing of it is usable.
			log.Warn("reconcile: removing a VM whose create was interrupted", "vm", rec.Name)
			if err := s.delete(ctx, rec); err != nil {
				log.Warn("reconcile: remove interrupted VM", "vm", rec.Name, "error", err)
				known[rec.ID] = true
			}
			unlock()
			continue
		}
		known[rec.ID] = true
		st, err := s.Ops.StatusVMM(ctx, privops.VMReq{ID: rec.ID})
		if rec.State == api.StateParked && (err != nil || st.PID == 0) {
			// No VMM is expected: its snapshot and disks wait in its
			// directory, and its tap (which the snapshot names) stays.
			taps[rec.Runtime.Tap] = true
			if err := s.Ops.CreateTap(ctx, s.tapReq(rec)); err != nil {
				log.Warn("reconcile: pin a parked VM's tap", "vm", rec.Name, "error", err)
			}
			log.Info("reconcile: parked VM kept", "vm", rec.Name)
			unlock()
			continue
		}
		if err == nil && st.PID > 0 && rec.State == api.StateStarting {
			// Its start was interrupted before the guest's host keys were
			// pinned: stop it cleanly rather than adopt a VM banger
			// cannot trust.
			log.Warn("reconcile: stopping a VM whose start was interrupted", "vm", rec.Name, "pid", st.PID)
			_ = s.Ops.KillVMM(ctx, privops.KillReq{ID: rec.ID, Signal: "KILL"})
			s.waitGone(ctx, st.PID, 10*time.Second)
			if _, err := s.cleanup(ctx, rec, "the daemon stopped while the VM was starting; start it again"); err != nil {
				log.Warn("reconcile: cleanup", "vm", rec.Name, "error", err)
			}
			unlock()
			continue
		}
		if err == nil && st.PID > 0 {
			taps[rec.Runtime.Tap] = true
			// Re-pin (idempotent): a helper of an older build left the tap
			// unpinned, and an unpinned tap sends nothing.
			if err := s.Ops.CreateTap(ctx, s.tapReq(rec)); err != nil {
				log.Warn("reconcile: pin tap", "vm", rec.Name, "error", err)
			}
			want := api.StateRunning
			if st.State == "Paused" {
				want = api.StatePaused // e.g. the daemon died during a park
			}
			if rec.Runtime.PID != st.PID || (rec.State != want && rec.State != api.StateError) {
				rec.Runtime.PID = st.PID
				rec.State = want
				if rec.Runtime.StartedAt == "" {
					rec.Runtime.StartedAt = now()
				}
				_ = s.Store.UpdateVM(ctx, rec)
			}
			log.Info("reconcile: re-adopted running VM", "vm", rec.Name, "pid", st.PID)
			unlock()
			continue
		}
		reason := "the VMM was gone when banger checked"
		if err != nil {
			reason += " (" + err.Error() + ")"
		} else if st.Reason != "" {
			reason += " (" + st.Reason + ")"
		}
		switch rec.State {
		case api.StateRunning, api.StateStarting, api.StateStopping, api.StateError, api.StatePaused:
			log.Warn("reconcile: VM marked stopped", "vm", rec.Name, "reason", reason)
		default:
			reason = rec.Runtime.StopReason // already stopped: keep why
		}
		// Idempotent: a tap or NAT rule left by a daemon killed mid-start
		// goes too.
		if _, err := s.cleanup(ctx, rec, reason); err != nil {
			log.Warn("reconcile: cleanup", "vm", rec.Name, "error", err)
		}
		unlock()
	}
	if list, err := s.Ops.ListTaps(ctx); err == nil {
		for _, t := range list {
			if !taps[t] {
				log.Warn("reconcile: removing leftover tap", "tap", t)
				_ = s.Ops.DeleteTap(ctx, privops.TapReq{Name: t})
			}
		}
	} else {
		log.Warn("reconcile: list taps", "error", err)
	}
	entries, _ := os.ReadDir(s.Layout.VMsDir())
	for _, e := range entries {
		if !e.IsDir() || known[e.Name()] {
			continue
		}
		p := filepath.Join(s.Layout.VMsDir(), e.Name())
		if st, err := s.Ops.StatusVMM(ctx, privops.VMReq{ID: e.Name()}); err == nil && st.PID > 0 {
			log.Warn("reconcile: unrecorded VM directory has a live VMM; killing it", "dir", p, "pid", st.PID)
			_ = s.Ops.KillVMM(ctx, privops.KillReq{ID: e.Name(), Signal: "KILL"})
			s.waitGone(ctx, st.PID, 5*time.Second)
		}
		log.Warn("reconcile: removing unrecorded VM directory", "dir", p)
		_ = s.Ops.RemoveVMDir(ctx, privops.VMReq{ID: e.Name()})
	}
}

// Monitor notices VMMs that exit while the daemon runs (a guest reboot or
// power-off, or a kill behind banger's back) and cleans up after them. It
// also reconciles when the root helper restarts.
func (s *Service) Monitor(ctx context.Context, helperID func(context.Context) string) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	lastHelper := ""
	if helperID != nil {
		lastHelper = helperID(ctx)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if helperID != nil {
			if id := helperID(ctx); id != "" && id != lastHelper {
				if lastHelper != "" {
					logging.From(ctx).Info("root helper restarted; reconciling", "helper", id)
					s.Reconcile(ctx)
				}
				lastHelper = id
			}
		}
		recs, err := s.Store.ListVMs(ctx)
		if err != nil {
			continue
		}
		s.CapSerialLogs(ctx, recs)
		s.autoPark(ctx, recs) // auto_park_after: parks idle VMs (autopark.go)
		for _, r := range recs {
			if (r.State != api.StateRunning && r.State != api.StateError && r.State != api.StatePaused) || r.Runtime.PID == 0 || vmm.Alive(r.Runtime.PID) {
				continue
			}
			s.mu.Lock()
			l := s.locks[r.ID]
			s.mu.Unlock()
			if l != nil && !l.TryLock() {
				continue // an operation is in progress on it
			}
			rec, err := s.Store.GetVM(ctx, r.ID)
			if err == nil && (rec.State == api.StateRunning || rec.State == api.StateError || rec.State == api.StatePaused) && rec.Runtime.PID != 0 && !vmm.Alive(rec.Runtime.PID) {
				reason := "the VMM exited (guest reboot or power-off, or killed outside banger)"
				logging.From(ctx).Warn("vm stopped behind banger's back", "vm", rec.Name, "pid", rec.Runtime.PID)
				_, _ = s.cleanup(ctx, rec, reason)
			}
			if l != nil {
				l.Unlock()
			}
		}
	}
}

// freeName returns name, or another generated name when name is taken
// (after a few tries, with a random suffix). The caller holds createMu.
func (s *Service) freeName(ctx context.Context, name string) string {
	for i := 0; i < 32; i++ {
		if _, err := s.Store.GetVM(ctx, name); err != nil {
			return name
		}
		name = GenerateName()
		if i >= 16 {
			name += "-" + newID()[:4]
		}
	}
	return name + "-" + newID()[:8]
}

// tapReq creates (or re-pins) rec's tap: it may send only as rec's guest.
func (s *Service) tapReq(rec store.VMRecord) privops.TapReq {
	return privops.TapReq{Name: rec.Runtime.Tap, Bridge: s.Config.BridgeName, MAC: rec.Runtime.MAC, GuestIP: rec.GuestIP}
}

// hostPorts are the host ports guests may reach on the gateway: the .vm
// DNS server's, when it listens there (or on every address).
func (s *Service) hostPorts(gw netip.Addr) []uint16 {
	ap, err := netip.ParseAddrPort(s.Config.DNSListen)
	if err != nil || !(ap.Addr() == gw || ap.Addr().IsUnspecified()) {
		return nil
	}
	return []uint16{ap.Port()}
}

// crashPoint is a test fault: when BANGER_TEST_CRASH_AT names this point,
// the daemon SIGKILLs itself there, so tests can show that every step of
// create and start is recovered at the next start (no real part can die
// at an exact line on demand).
func crashPoint(name string) {
	if v := os.Getenv("BANGER_TEST_CRASH_AT"); v != "" && v == name {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}

// LookupIP is the guest address of the VM named name (the .vm DNS answer).
func (s *Service) LookupIP(ctx context.Context, name string) (netip.Addr, bool) {
	rec, err := s.Store.GetVM(ctx, name)
	if err != nil {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(rec.GuestIP)
	return a, err == nil
}
