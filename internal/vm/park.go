package vm

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/opstage"
	"github.com/banger-dev/banger/internal/privops"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vmdir"
)

// Pause, resume and park (docs/snapshots.md). Paused: the VMM runs with
// the vCPUs stopped and the guest's memory resident. Parked: a full
// snapshot (memory and device state) in the VM's directory, written by the
// VMM through the root helper, and no VMM at all; the tap (pinned to the
// guest) and NAT rules stay, since the snapshot names the tap. Waking loads
// the snapshot into a new VMM and discards it: from then on the disks move
// on and the snapshot would be stale.

// WakeTimeout bounds waiting for a woken guest's SSH server.
var WakeTimeout = 60 * time.Second

// Pause stops a running VM's vCPUs; its memory stays resident.
func (s *Service) Pause(ctx context.Context, name string) (api.VM, error) {
	rec, unlock, err := s.get(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	if rec.State == api.StatePaused {
		return s.ToAPI(ctx, rec), nil
	}
	if rec.State != api.StateRunning || !s.live(ctx, rec) {
		return s.ToAPI(ctx, rec), errdefs.BadRequestf("VM %s is %s; only a running VM can be paused", rec.Name, rec.State)
	}
	if err := s.Ops.PauseVMM(ctx, privops.PauseReq{ID: rec.ID, Paused: true}); err != nil {
		return s.ToAPI(ctx, rec), err
	}
	rec.State = api.StatePaused
	rec.UpdatedAt = now()
	return s.ToAPI(ctx, rec), s.Store.UpdateVM(ctx, rec)
}

// Resume continues a paused VM, or wakes a parked one from its snapshot.
// A running VM is left as it is.
func (s *Service) Resume(ctx context.Context, name string) (api.VM, error) {
	rec, unlock, err := s.get(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	switch rec.State {
	case api.StateRunning:
		return s.ToAPI(ctx, rec), nil
	case api.StatePaused:
		if err := s.Ops.PauseVMM(ctx, privops.PauseReq{ID: rec.ID, Paused: false}); err != nil {
			return s.ToAPI(ctx, rec), err
		}
		rec.State = api.StateRunning
		rec.UpdatedAt = now()
		return s.ToAPI(ctx, rec), s.Store.UpdateVM(ctx, rec)
	case api.StateParked:
		rec, err = s.wake(ctx, rec)
		return s.ToAPI(ctx, rec), err
	}
	return s.ToAPI(ctx, rec), errdefs.BadRequestf("VM %s is %s, not paused or parked; 'banger vm start %s' boots it", rec.Name, rec.State, rec.Name)
}

// ResumeCold boots a parked VM's kept disks, discarding its snapshot: the
// way out when the snapshot cannot be loaded (banger's VMM or the guest
// agent changed incompatibly). Any other VM is resumed as by Resume.
func (s *Service) ResumeCold(ctx context.Context, name string) (api.VM, error) {
	rec, unlock, err := s.get(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	if rec.State != api.StateParked {
		unlock()
		return s.Resume(ctx, name)
	}
	defer unlock()
	// stop of a parked VM discards its snapshot and releases its tap.
	if rec, err = s.stop(ctx, rec, "resumed cold: the snapshot was discarded"); err != nil {
		return s.ToAPI(ctx, rec), err
	}
	res, err := s.Images.Resolve(ctx, s.imageName(ctx, rec), nil)
	if err != nil {
		return s.ToAPI(ctx, rec), err
	}
	rec, err = s.start(ctx, rec, res)
	return s.ToAPI(ctx, rec), err
}

// Park snapshots a running (or paused) VM into its directory and ends its
// VMM: no guest memory is held until 'vm resume'.
func (s *Service) Park(ctx context.Context, name string) (api.VM, error) {
	rec, unlock, err := s.get(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	defer unlock()
	if rec.State == api.StateParked {
		return s.ToAPI(ctx, rec), nil
	}
	if (rec.State != api.StateRunning && rec.State != api.StatePaused) || !s.live(ctx, rec) {
		return s.ToAPI(ctx, rec), errdefs.BadRequestf("VM %s is %s; only a running VM can be parked ('banger vm start %s' first)", rec.Name, rec.State, rec.Name)
	}
	rec, err = s.park(ctx, rec)
	return s.ToAPI(ctx, rec), err
}

// park snapshots a live (running or paused) VM and ends its VMM. The
// caller holds the VM's lock.
func (s *Service) park(ctx context.Context, rec store.VMRecord) (store.VMRecord, error) {
	log := logging.From(ctx).With("vm", rec.Name)
	opstage.Set(ctx, "writing the guest's memory to its snapshot")
	t0 := time.Now()
	snap, err := s.Ops.SnapshotVMM(ctx, privops.VMReq{ID: rec.ID})
	if err != nil {
		// Nothing changed for the guest but a pause: undo it.
		if rerr := s.Ops.PauseVMM(ctx, privops.PauseReq{ID: rec.ID, Paused: rec.State == api.StatePaused}); rerr != nil {
			log.Warn("resume after a failed snapshot", "error", rerr)
		}
		return rec, fmt.Errorf("park VM %s: %w", rec.Name, err)
	}
	// The snapshot is complete: the VMM (paused) can go. SIGTERM, not
	// SIGKILL: banger-vmm then takes its QEMU down and waits for it, so the
	// tap is free by the time the VMM is gone (a wake right after a park
	// found it busy otherwise); Firecracker dies at once either way.
	pid := rec.Runtime.PID
	if err := s.Ops.KillVMM(ctx, privops.KillReq{ID: rec.ID, Signal: "TERM"}); err != nil {
		return rec, fmt.Errorf("park VM %s: end its VMM: %w", rec.Name, err)
	}
	if !s.waitGone(ctx, pid, 10*time.Second) {
		_ = s.Ops.KillVMM(ctx, privops.KillReq{ID: rec.ID, Signal: "KILL"})
		s.waitGone(ctx, pid, 5*time.Second)
	}
	if err := s.Ops.ClearRuntime(ctx, privops.VMReq{ID: rec.ID}); err != nil {
		log.Warn("clear runtime after park", "error", err)
	}
	rec.State = api.StateParked
	rec.Runtime.PID = 0
	rec.Runtime.SnapshotBytes = snap.Bytes
	rec.Runtime.ParkedAt = now()
	rec.UpdatedAt = now()
	log.Info("vm parked", "snapshot_bytes", snap.Bytes, "seconds", time.Since(t0).Seconds())
	return rec, s.Store.UpdateVM(ctx, rec)
}

// refreshGuest gives a restored guest 64 bytes of fresh entropy and the
// host's clock through its agent, and returns how far its clock moved.
func (s *Service) refreshGuest(ctx context.Context, rec store.VMRecord) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, AgentTimeout)
	defer cancel()
	c, err := agent.DialUDS(ctx, vmdir.Dir(rec.Runtime.Dir).AgentSock(), AgentPort)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	ent := make([]byte, 64)
	if _, err := rand.Read(ent); err != nil {
		return 0, err
	}
	r, err := c.Refresh(ctx, agent.RefreshArgs{TimeUnixNano: time.Now().UnixNano(), Entropy: ent})
	return time.Duration(r.ClockStepNanos), err
}

// lent reports whether rec's snapshot names a tap that is not its own (a
// fork's names its parent's): the name is then lent for the restore.
func lent(rec store.VMRecord) bool {
	return rec.Runtime.SnapshotTap != "" && rec.Runtime.SnapshotTap != rec.Runtime.Tap
}

// wake restores a parked VM into a new VMM and waits for its SSH server.
// On failure the VM stays parked with its snapshot and disks.
func (s *Service) wake(ctx context.Context, rec store.VMRecord) (store.VMRecord, error) {
	log := logging.From(ctx).With("vm", rec.Name)
	opstage.Set(ctx, "restoring the guest from its snapshot")
	t0 := time.Now()
	// After a host reboot nothing of the network is left.
	if err := s.ensureBridge(ctx); err != nil {
		return rec, fmt.Errorf("wake VM %s: %w", rec.Name, err)
	}
	req := privops.RestoreReq{ID: rec.ID}
	addNAT := func() error {
		if !rec.NAT {
			return nil
		}
		if err := s.Ops.AddNAT(ctx, privops.NATReq{GuestIP: rec.GuestIP, Tap: rec.Runtime.Tap}); err != nil {
			return fmt.Errorf("wake VM %s: nat: %w", rec.Name, err)
		}
		return nil
	}
	if lent(rec) {
		// The restore makes the VM's tap, under the name its snapshot
		// names (its parent's), then renames it to its own.
		req.Lend = &privops.LendReq{PinnedTap: rec.Runtime.SnapshotTap, Tap: rec.Runtime.Tap, Bridge: s.Config.BridgeName, MAC: rec.Runtime.MAC, GuestIP: rec.GuestIP}
	} else {
		// The tap outlived the park; pinning it again is idempotent (and
		// needed after a host reboot).
		if err := s.Ops.CreateTap(ctx, s.tapReq(rec)); err != nil {
			return rec, fmt.Errorf("wake VM %s: tap: %w", rec.Name, err)
		}
		if err := addNAT(); err != nil {
			return rec, err
		}
	}
	resp, err := s.Ops.RestoreVMM(ctx, req)
	if err == nil && req.Lend != nil {
		err = addNAT()
		if err != nil {
			_ = s.Ops.KillVMM(ctx, privops.KillReq{ID: rec.ID, Signal: "KILL"})
		}
	}
	if err != nil {
		return rec, fmt.Errorf("VM %s could not be restored from its snapshot (%v); it stays parked with its disks: 'banger vm resume --cold %s' boots the disks (its memory is lost)", rec.Name, err, rec.Name)
	}
	rec.Runtime.PID = resp.PID
	rec.State = api.StateRunning
	rec.Runtime.SnapshotBytes = 0
	rec.Runtime.ParkedAt = ""
	rec.UpdatedAt = now()
	if err := s.Store.UpdateVM(ctx, rec); err != nil {
		return rec, err
	}
	// From now on the disks move on: the snapshot would be stale.
	if err := s.Ops.DiscardSnapshot(ctx, privops.VMReq{ID: rec.ID}); err != nil {
		log.Warn("discard the snapshot after wake", "error", err)
	}
	if rec.Runtime.NeedsIdentity {
		// A fork: it must stop being its parent before it is reachable.
		opstage.Set(ctx, "giving the fork its own identity")
		if rec, err = s.takeIdentity(ctx, rec); err != nil {
			return rec, err
		}
	} else if step, err := s.refreshGuest(ctx, rec); err != nil {
		// Before anything else reads them: fresh entropy, and the host's
		// clock (the guest's stood still while it was parked).
		log.Warn("woken guest not refreshed (its clock may lag by the time it was parked)", "error", err)
	} else {
		log.Info("woken guest refreshed", "clock_step", step.String())
	}
	// The SSH server never stopped (or identity waited until it listened
	// again): a TCP handshake through the tap shows the guest is reachable,
	// without the cost of an SSH handshake the caller's own connection
	// repeats at once.
	wctx, cancel := context.WithTimeout(ctx, WakeTimeout)
	defer cancel()
	for {
		c, err := (&net.Dialer{}).DialContext(wctx, "tcp", net.JoinHostPort(rec.GuestIP, "22"))
		if err == nil {
			c.Close()
			break
		}
		if wctx.Err() != nil {
			log.Warn("woken guest's SSH server did not answer", "error", err)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	log.Info("vm woken from its snapshot", "pid", resp.PID, "seconds", time.Since(t0).Seconds())
	return rec, nil
}
