package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/guestssh"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/opstage"
	"github.com/banger-dev/banger/internal/privops"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vmdir"
	"github.com/banger-dev/banger/internal/vmm"
)

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
		opstage.Set(ctx, "shutting down the guest")
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
	if p.VCPU == nil && p.MemoryMiB == nil && p.Labels == nil && p.RemoveLabels == nil {
		return api.VM{}, errdefs.BadRequestf("nothing to change: give --vcpu, --memory or --label")
	}
	if p.VCPU == nil && p.MemoryMiB == nil {
		return s.setLabels(ctx, p)
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
	labels, err := withLabels(rec.Runtime.Labels, p.Labels, p.RemoveLabels)
	if err != nil {
		return api.VM{}, err
	}
	if p.VCPU != nil {
		rec.VCPU = *p.VCPU
	}
	if p.MemoryMiB != nil {
		rec.MemoryMiB = *p.MemoryMiB
	}
	rec.Runtime.Labels = labels
	rec.UpdatedAt = now()
	return s.ToAPI(ctx, rec), s.Store.UpdateVM(ctx, rec)
}

// setLabels changes only a VM's labels, in any state.
func (s *Service) setLabels(ctx context.Context, p api.VMSetParams) (api.VM, error) {
	rec, unlock, err := s.get(ctx, p.Name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	labels, err := withLabels(rec.Runtime.Labels, p.Labels, p.RemoveLabels)
	if err != nil {
		return api.VM{}, err
	}
	rec.Runtime.Labels = labels
	rec.UpdatedAt = now()
	return s.ToAPI(ctx, rec), s.Store.UpdateVM(ctx, rec)
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
	w := workspaceFromAPI(&p.Workspace)
	w.PreparedAt = now()
	rec.Runtime.Workspace = w
	rec.UpdatedAt = now()
	return s.ToAPI(ctx, rec), s.Store.UpdateVM(ctx, rec)
}
