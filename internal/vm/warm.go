package vm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/buildinfo"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/opstage"
	"github.com/banger-dev/banger/internal/store"
)

// Warm starts (docs/snapshots.md, "Warm starts"): for each shape (image,
// kernel, vCPUs, memory, work disk size, VMM, agent, banger build and the
// guest network config) banger keeps at most one template: a hidden VM,
// booted cold and parked the moment it was ready, before any per-VM work.
// vm run and vm create fork it (a parked source forks from its snapshot
// without waking; fork.go), so a warm VM gets O(1) disks and its own
// identity through its agent, then the per-VM work runs as after a boot.
//
// A template is a VM record with Runtime.Template set to its key, named
// warm-<key12>, in state parked; it is hidden from vm list. The first cold
// start of a shape builds it in the background (single flight); 'image warm'
// builds it at once. A template that fails to load is dropped, and the VM
// starts cold.

// templatePrefix starts every template's name.
const templatePrefix = "warm-"

// shape is what a template is made for.
type shape struct {
	res       image.Resolved
	imageName string
	vcpu, mem int
	disk      int64
}

// templateKey covers everything that would make a restore wrong: the
// image's and kernel's files (path, size, mtime), the VM's resources, the
// VMM, banger's own build (its version and commit, which are also banger-vmm's
// and the guest agent's: they are built and shipped together) and the
// network config the guest booted with. Rebuilding banger's binaries from
// the same commit keeps the key (make run's second run starts warm); an
// update changes it.
func (s *Service) templateKey(ctx context.Context, sh shape) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "banger-template v1\nbanger %s %s agent protocol %d\n", buildinfo.Version, buildinfo.Commit, agent.ProtocolVersion)
	fmt.Fprintf(h, "image %s kernel %s init %q\n", sh.res.Image.ID, sh.res.Kernel.ID, sh.res.Init())
	fmt.Fprintf(h, "vcpu %d mem %d disk %d\n", sh.vcpu, sh.mem, sh.disk)
	fmt.Fprintf(h, "net %s dns %s\n", s.Config.Network(), strings.Join(s.GuestDNS, ","))
	for _, p := range []string{sh.res.Image.Rootfs, sh.res.Kernel.Vmlinux, sh.res.Kernel.Initrd, sh.res.WorkSeed} {
		if p == "" {
			continue
		}
		st, err := os.Stat(p)
		if err != nil {
			return "", fmt.Errorf("template key: %w", err)
		}
		fmt.Fprintf(h, "file %s %d %d\n", p, st.Size(), st.ModTime().UnixNano())
	}
	// The VMM by kind, path and size: another Firecracker release (or
	// banger-vmm in place of it) is another key.
	st, err := os.Stat(s.VMM.Binary)
	if err != nil {
		return "", fmt.Errorf("template key: %w", err)
	}
	fmt.Fprintf(h, "vmm %s %s %d\n", s.VMM.Kind, s.VMM.Binary, st.Size())
	return hex.EncodeToString(h.Sum(nil)), nil
}

// templateName is the name of the template with key.
func templateName(key string) string { return templatePrefix + key[:12] }

// isTemplate reports whether rec is a warm-start template.
func isTemplate(rec store.VMRecord) bool { return rec.Runtime.Template != "" }

// findTemplate returns the ready (parked) template with key.
func (s *Service) findTemplate(ctx context.Context, key string) (store.VMRecord, bool) {
	rec, err := s.Store.GetVM(ctx, templateName(key))
	if err != nil || rec.Runtime.Template != key || rec.State != api.StateParked {
		return store.VMRecord{}, false
	}
	return rec, true
}

// errNoTemplate: the template went away between finding and forking it.
var errNoTemplate = errors.New("the template is gone")

// warmStart makes the VM p from template tmpl: a fork of its snapshot,
// which takes its own identity, with the caller's name and NAT. On failure
// nothing of the new VM is left.
func (s *Service) warmStart(ctx context.Context, tmpl store.VMRecord, p api.VMCreateParams, generated bool) (api.VM, error) {
	opstage.Set(ctx, "restoring template")
	t0 := time.Now()
	s.opMu.RLock()
	defer s.opMu.RUnlock()
	src, unlockSrc, err := s.getHeld(ctx, tmpl.ID)
	if err != nil {
		return api.VM{}, errNoTemplate
	}
	if src.State != api.StateParked || src.Runtime.Template != tmpl.Runtime.Template {
		unlockSrc()
		return api.VM{}, errNoTemplate
	}
	kids, unlockKids, err := s.forkOut(ctx, &src, []forkSpec{{Name: p.Name, NAT: p.NAT, Generated: generated, Labels: p.Labels}})
	// The template stays parked: other starts fork it at the same time.
	unlockSrc()
	if err != nil {
		return api.VM{}, err
	}
	defer unlockKids()
	kid := kids[0]
	kid.Runtime.Start, kid.Runtime.StartedFrom, kid.Runtime.StartedAt = config.StartWarm, tmpl.Name, now()
	if kid, err = s.wake(ctx, kid); err != nil {
		if derr := s.delete(context.Background(), kid); derr != nil {
			logging.From(ctx).Warn("remove a VM whose warm start failed", "vm", kid.Name, "error", derr)
		}
		return api.VM{}, err
	}
	logging.From(ctx).Info("vm started warm", "vm", kid.Name, "template", tmpl.Name, "seconds", time.Since(t0).Seconds())
	return s.ToAPI(ctx, kid), nil
}

// dropTemplate makes a template that failed to load unusable: its snapshot
// goes and it is stopped; it is deleted at once unless warm VMs' disks
// still stand on it (then image cache prune deletes it later).
func (s *Service) dropTemplate(ctx context.Context, id string) {
	log := logging.From(ctx)
	rec, unlock, err := s.get(ctx, id)
	if err != nil {
		return
	}
	defer unlock()
	if _, err := s.stop(ctx, rec, "the template failed to load; it was dropped"); err != nil {
		log.Warn("drop template", "template", rec.Name, "error", err)
	}
	rec, _ = s.Store.GetVM(ctx, id)
	if deps, err := s.dependents(ctx, rec); err == nil && len(deps) == 0 {
		if err := s.delete(ctx, rec); err != nil {
			log.Warn("delete dropped template", "template", rec.Name, "error", err)
		}
	}
	log.Warn("template dropped", "template", rec.Name)
}

// ensureTemplate builds the template of sh if there is none and no build of
// it runs: in the background (a cold start must not wait for it) unless
// wait is set.
func (s *Service) ensureTemplate(ctx context.Context, sh shape, key string, wait bool) (store.VMRecord, bool, error) {
	if rec, ok := s.findTemplate(ctx, key); ok {
		return rec, true, nil
	}
	s.tmplMu.Lock()
	if s.building == nil {
		s.building = map[string]chan struct{}{}
	}
	done, running := s.building[key]
	if !running {
		done = make(chan struct{})
		s.building[key] = done
	}
	s.tmplMu.Unlock()
	build := func(ctx context.Context) {
		defer func() {
			s.tmplMu.Lock()
			delete(s.building, key)
			s.tmplMu.Unlock()
			close(done)
		}()
		if err := s.buildTemplate(ctx, sh, key); err != nil {
			logging.From(ctx).Warn("warm-start template not made", "image", sh.imageName, "error", err)
		}
	}
	if !running {
		if !wait {
			// Detached: the request that started it may end first.
			bg := logging.With(context.Background(), logging.From(ctx))
			go build(bg)
			return store.VMRecord{}, false, nil
		}
		go build(ctx)
	}
	if !wait {
		return store.VMRecord{}, false, nil
	}
	select {
	case <-done:
	case <-ctx.Done():
		return store.VMRecord{}, false, ctx.Err()
	}
	rec, ok := s.findTemplate(ctx, key)
	if !ok {
		return rec, false, fmt.Errorf("the template of %s was not made (see the daemon's log)", sh.imageName)
	}
	return rec, false, nil
}

// buildTemplate boots a VM of shape sh and parks it the moment it is
// ready: the template with key.
func (s *Service) buildTemplate(ctx context.Context, sh shape, key string) error {
	name := templateName(key)
	if old, err := s.Store.GetVM(ctx, name); err == nil {
		// A template of this key that is not ready (a build cut short, or
		// one dropped): start afresh.
		if deps, _ := s.dependents(ctx, old); len(deps) > 0 {
			return fmt.Errorf("template %s is not ready and warm VMs stand on it", name)
		}
		if err := s.Delete(ctx, name); err != nil {
			return err
		}
	}
	t0 := time.Now()
	vcpu, mem, disk := sh.vcpu, sh.mem, fmt.Sprintf("%d", sh.disk)
	if _, err := s.create(ctx, api.VMCreateParams{Name: name, Image: sh.imageName, VCPU: &vcpu, MemoryMiB: &mem, DiskSize: &disk, Cold: true}, "", nil, key); err != nil {
		return err
	}
	// One SSH session before the snapshot: it reads sshd's per-connection
	// code, the PAM modules and the shell into the guest's page cache, which
	// the snapshot keeps, so a fork's first connection does not read them
	// from its disk (about 1 s on the dev box under emulation).
	if _, err := s.Exec(ctx, name, []string{"true"}, io.Discard, io.Discard); err != nil {
		logging.From(ctx).Warn("warm-start template: first SSH session failed", "template", name, "error", err)
	}
	if _, err := s.Park(ctx, name); err != nil {
		_ = s.Delete(context.Background(), name)
		return err
	}
	logging.From(ctx).Info("warm-start template made", "template", name, "image", sh.imageName, "seconds", time.Since(t0).Seconds())
	return nil
}

// Warm makes (or finds) the template of an image for a shape: 'image warm'.
func (s *Service) Warm(ctx context.Context, p api.ImageWarmParams, progress io.Writer) (api.ImageWarmResult, error) {
	vcpu, mem, disk, err := s.resources(p.VCPU, p.MemoryMiB, p.DiskSize)
	if err != nil {
		return api.ImageWarmResult{}, err
	}
	if err := s.Images.Known(ctx, p.Name); err != nil {
		return api.ImageWarmResult{}, err
	}
	res, err := s.Images.Resolve(ctx, p.Name, progress)
	if err != nil {
		return api.ImageWarmResult{}, err
	}
	sh := shape{res: res, imageName: p.Name, vcpu: vcpu, mem: mem, disk: disk}
	key, err := s.templateKey(ctx, sh)
	if err != nil {
		return api.ImageWarmResult{}, err
	}
	opstage.Set(ctx, "booting the template")
	rec, existed, err := s.ensureTemplate(ctx, sh, key, true)
	if err != nil {
		return api.ImageWarmResult{}, err
	}
	return api.ImageWarmResult{Template: rec.Name, Image: p.Name, Key: key, Existed: existed}, nil
}

// PruneTemplates deletes the templates no current shape would use (their
// image is gone or changed, or banger, the VMM, the agent or the network
// config changed since) and no warm VM stands on; with dryRun it only
// names them.
func (s *Service) PruneTemplates(ctx context.Context, dryRun bool) ([]string, error) {
	recs, err := s.Store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rec := range recs {
		if !isTemplate(rec) || !s.staleTemplate(ctx, rec) {
			continue
		}
		if deps, err := s.dependents(ctx, rec); err != nil || len(deps) > 0 {
			continue
		}
		if !dryRun {
			if err := s.Delete(ctx, rec.ID); err != nil {
				return out, err
			}
		}
		out = append(out, rec.Name)
	}
	return out, nil
}

// staleTemplate reports whether no shape would use rec any more.
func (s *Service) staleTemplate(ctx context.Context, rec store.VMRecord) bool {
	if rec.State != api.StateParked && rec.State != api.StateStarting && rec.State != api.StateCreated {
		return true // dropped, or a build that failed
	}
	im, err := s.Store.GetImage(ctx, rec.ImageID)
	if err != nil {
		return true
	}
	res, err := s.Images.Resolve(ctx, im.Name, nil)
	if err != nil {
		return true
	}
	key, err := s.templateKey(ctx, shape{res: res, imageName: im.Name, vcpu: rec.VCPU, mem: rec.MemoryMiB, disk: rec.DiskBytes})
	return err != nil || key != rec.Runtime.Template
}

// DeleteTemplatesOf deletes the templates of an image (before the image
// itself goes); a template warm VMs stand on is refused like the image.
func (s *Service) DeleteTemplatesOf(ctx context.Context, imageName string) error {
	im, err := s.Store.GetImage(ctx, imageName)
	if err != nil {
		return nil // the image's own delete says so
	}
	recs, err := s.Store.ListVMs(ctx)
	if err != nil {
		return err
	}
	for _, rec := range recs {
		if isTemplate(rec) && rec.ImageID == im.ID {
			if err := s.Delete(ctx, rec.ID); err != nil {
				if errors.Is(err, errdefs.ErrBadRequest) {
					return errdefs.BadRequestf("image %s: its warm-start template %s: %v", imageName, rec.Name, err)
				}
				return err
			}
		}
	}
	return nil
}
