package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/opstage"
	"github.com/banger-dev/banger/internal/privops"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vmdir"
)

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
//
// A boot goes: check the request, resolve the image, record the VM (under
// the create lock, with its address), prepare its disks, start it. Each
// step is logged in st and unwound in reverse when a later one fails.
func (s *Service) create(ctx context.Context, p api.VMCreateParams, workSeed string, progress io.Writer, template string) (api.VM, error) {
	log := logging.From(ctx)
	generated, sh, err := s.checkCreate(ctx, &p)
	if err != nil {
		return api.VM{}, err
	}
	opstage.Set(ctx, "resolving image "+sh.imageName)
	if sh.res, err = s.Images.Resolve(ctx, sh.imageName, progress); err != nil {
		return api.VM{}, err
	}
	// Warm: a derived image's build VM (workSeed) and a VM that is not to
	// start have their own disks; a template is a boot by definition.
	warm := s.Config.Warm() && !p.Cold && !p.NoStart && workSeed == "" && template == ""
	key := ""
	if warm {
		if key, err = s.templateKey(ctx, sh); err != nil {
			log.Warn("no warm start", "error", err)
			warm = false
		}
	}
	var warnings []string
	if warm {
		vm, done, warning, err := s.createWarm(ctx, key, p, generated)
		if done {
			return vm, err
		}
		if warning != "" {
			warnings = append(warnings, warning)
		}
	}

	st := &steps{log: log}
	s.opMu.RLock()
	defer s.opMu.RUnlock()
	rec, err := s.recordVM(ctx, p, generated, sh, template)
	if err != nil {
		return api.VM{}, err
	}
	unlock := s.lockVMHeld(rec.ID)
	defer unlock()
	crashPoint("recorded")
	st.did("record vm", func() error { return s.Store.DeleteVM(context.Background(), rec.ID) })
	log.Info("vm recorded", "vm", rec.Name, "id", rec.ID, "ip", rec.GuestIP)

	if err := s.prepareDisks(ctx, st, &rec, sh.res, workSeed, progress); err != nil {
		st.unwind()
		return api.VM{}, err
	}
	if p.NoStart {
		return s.ToAPI(ctx, rec), nil
	}
	if rec, err = s.start(ctx, rec, sh.res); err != nil {
		return s.startFailed(ctx, st, rec, err)
	}
	if warm {
		// The next start of this shape is warm; this one never waits.
		_, _, _ = s.ensureTemplate(ctx, sh, key, false)
	}
	v := s.ToAPI(ctx, rec)
	v.Warnings = warnings
	return v, nil
}

// checkCreate refuses bad input before anything exists: the name (one is
// generated into p when none is given), the resources, the image, a name
// that is taken. It returns whether the name was generated and the VM's
// shape, whose image is not resolved yet.
func (s *Service) checkCreate(ctx context.Context, p *api.VMCreateParams) (generated bool, sh shape, err error) {
	generated = p.Name == ""
	if generated {
		p.Name = GenerateName()
	}
	if err := ValidateName(p.Name); err != nil {
		return false, shape{}, err
	}
	if err := checkLabels(p.Labels); err != nil {
		return false, shape{}, err
	}
	vcpu, mem, diskBytes, err := s.resources(p.VCPU, p.MemoryMiB, p.DiskSize)
	if err != nil {
		return false, shape{}, err
	}
	imgName := p.Image
	if imgName == "" {
		imgName = s.Config.DefaultImage
	}
	if err := s.Images.Known(ctx, imgName); err != nil {
		return false, shape{}, err
	}
	if _, err := s.Store.GetVM(ctx, p.Name); err == nil && !generated {
		return false, shape{}, errdefs.AlreadyExistsf("a VM named %q already exists", p.Name)
	}
	return generated, shape{imageName: imgName, vcpu: vcpu, mem: mem, disk: diskBytes}, nil
}

// createWarm makes the VM p from the ready template with key, if there is
// one. done: create is over, with vm and err as its result (made, or its
// name is taken). Otherwise the VM boots cold; warning, when set, tells the
// user why a template that failed to load was dropped.
func (s *Service) createWarm(ctx context.Context, key string, p api.VMCreateParams, generated bool) (vm api.VM, done bool, warning string, err error) {
	tmpl, ok := s.findTemplate(ctx, key)
	if !ok {
		return api.VM{}, false, "", nil
	}
	vm, err = s.warmStart(ctx, tmpl, p, generated)
	if err == nil || errors.Is(err, errdefs.ErrAlreadyExists) {
		return vm, true, "", err
	}
	if !errors.Is(err, errNoTemplate) {
		s.dropTemplate(ctx, tmpl.ID)
		warning = fmt.Sprintf("warm-start template %s could not be used (%s); it was dropped and the VM booted cold", tmpl.Name, oneLine(err.Error()))
	}
	logging.From(ctx).Warn("warm start failed; booting cold", "template", tmpl.Name, "error", err)
	return api.VM{}, false, warning, nil
}

// recordVM allocates the lowest free guest address and records the VM
// with it, under the create lock: state created, no clone method yet (a
// VM reconcile finds so was interrupted, and is removed). A generated name
// that is taken meanwhile is replaced by a free one. The caller holds opMu
// shared.
func (s *Service) recordVM(ctx context.Context, p api.VMCreateParams, generated bool, sh shape, template string) (store.VMRecord, error) {
	s.createMu.Lock()
	defer s.createMu.Unlock()
	used, err := s.Store.UsedIPs(ctx)
	if err != nil {
		return store.VMRecord{}, err
	}
	ip, err := allocateIP(s.Config.Network(), used)
	if err != nil {
		return store.VMRecord{}, err
	}
	if generated {
		// A generated name is ours to change: pick a free one under the
		// create lock (a user's name is refused by checkCreate instead).
		p.Name = s.freeName(ctx, p.Name)
	}
	id := newID()
	dir := vmdir.New(s.Layout.VMsDir(), id)
	rec := store.VMRecord{
		ID: id, Name: p.Name, ImageID: sh.res.Image.ID, State: api.StateCreated, VCPU: sh.vcpu, MemoryMiB: sh.mem,
		DiskBytes: sh.disk, NAT: p.NAT, GuestIP: ip.String(), CreatedAt: now(), UpdatedAt: now(),
		Runtime: store.RuntimeRecord{Tap: tapFor(id), MAC: macFor(ip), Dir: dir.Path(), APISock: dir.APISock(), SerialLog: dir.SerialLog(),
			Template: template, Start: config.StartCold, Labels: maps.Clone(p.Labels)},
	}
	if err := s.Store.InsertVM(ctx, rec); err != nil {
		return store.VMRecord{}, err
	}
	return rec, nil
}

// prepareDisks has the root helper make the VM's directory and disks
// (workSeed, or else the image's, as its /root), then records the disks
// complete: their clone method set. Undoing it is logged in st.
func (s *Service) prepareDisks(ctx context.Context, st *steps, rec *store.VMRecord, res image.Resolved, workSeed string, progress io.Writer) error {
	log := logging.From(ctx)
	opstage.Set(ctx, "preparing disks")
	id := rec.ID
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
		ID: id, BaseRootfs: res.Image.Rootfs, WorkDiskBytes: rec.DiskBytes, AuthorizedKey: s.authKey,
		WorkSeed: workSeed, ToolsSource: tools,
	})
	if err != nil {
		return fmt.Errorf("prepare disks: %w", err)
	}
	crashPoint("disks")
	// CloneMethod set = the disks are complete (reconcile removes a VM
	// recorded without it: its create was interrupted).
	rec.Runtime.CloneMethod = dr.CloneMethod
	if dr.CloneMethod == "sparse-copy" && progress != nil {
		fmt.Fprintln(progress, "warning: no reflink support under the state dir; the root disk is a sparse copy, so create costs O(image size)")
	}
	rec.UpdatedAt = now()
	return s.Store.UpdateVM(ctx, *rec)
}

// startFailed ends a create whose start failed with err. A guest that
// booted but never answered SSH is kept (state error) so 'vm logs' can say
// why. Anything else goes: a VMM the start launched (start leaves it, with
// the VM's tap and NAT rules, once it runs), then what st logged.
func (s *Service) startFailed(ctx context.Context, st *steps, rec store.VMRecord, err error) (api.VM, error) {
	var nr *notReadyError
	if errors.As(err, &nr) {
		// Keep the evidence: the guest is up but silent.
		return s.ToAPI(ctx, rec), err
	}
	if rec.Runtime.PID != 0 {
		st.did("vmm", func() error { return s.discardBoot(rec) })
	}
	st.unwind()
	return api.VM{}, err
}

// discardBoot ends what a start left running of a VM that is being
// removed: its VMM (killed: its disks are going), tap, NAT rules, runtime
// files and SSH host key pin.
func (s *Service) discardBoot(rec store.VMRecord) error {
	ctx := context.Background()
	var errs []error
	if err := s.Ops.KillVMM(ctx, privops.KillReq{ID: rec.ID, Signal: "KILL"}); err != nil {
		errs = append(errs, fmt.Errorf("kill VMM: %w", err))
	}
	s.waitGone(ctx, rec.Runtime.PID, 10*time.Second)
	if _, err := s.cleanup(ctx, rec, ""); err != nil {
		errs = append(errs, err)
	}
	if err := s.KnownHosts.Remove(rec.GuestIP); err != nil {
		errs = append(errs, fmt.Errorf("known_hosts: %w", err))
	}
	return errors.Join(errs...)
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

// oneLine is s on one line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
