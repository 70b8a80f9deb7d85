package vm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guestssh"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/opstage"
	"github.com/banger-dev/banger/internal/privops"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vmdir"
)

// start boots a recorded VM whose disks exist: it records the VM starting,
// plugs it into the network, launches its VMM and waits for its guest.
// Each step is logged and unwound in reverse when a later one fails before
// the VMM runs. The caller holds the VM lock.
func (s *Service) start(ctx context.Context, rec store.VMRecord, res image.Resolved) (store.VMRecord, error) {
	log := logging.From(ctx).With("vm", rec.Name)
	st := &steps{log: log}

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
	if err := s.plugNetwork(ctx, st, rec); err != nil {
		return failed(err)
	}
	opstage.Set(ctx, "booting")
	// Where this boot's console output starts in the (appended) serial log.
	console := markConsole(vmdir.Dir(rec.Runtime.Dir).SerialLog())
	lr, err := s.Ops.LaunchVMM(ctx, privops.LaunchReq{
		ID: rec.ID, Kernel: res.Kernel.Vmlinux, Initrd: res.Kernel.Initrd, BootArgs: s.bootArgs(rec, res),
		Tap: rec.Runtime.Tap, MAC: rec.Runtime.MAC, VCPU: int64(rec.VCPU), MemMiB: int64(rec.MemoryMiB),
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
	return s.awaitGuest(ctx, rec, res, console)
}

// plugNetwork ensures the bridge, creates the VM's tap (pinned to its
// guest) and, with NAT, its NAT rules; undoing them is logged in st.
func (s *Service) plugNetwork(ctx context.Context, st *steps, rec store.VMRecord) error {
	tap := rec.Runtime.Tap
	opstage.Set(ctx, "network")
	if err := s.ensureBridge(ctx); err != nil {
		return err
	}
	if err := s.Ops.CreateTap(ctx, s.tapReq(rec)); err != nil {
		return fmt.Errorf("tap %s: %w", tap, err)
	}
	st.did("tap", func() error { return s.Ops.DeleteTap(context.Background(), privops.TapReq{Name: tap}) })
	crashPoint("tap")
	if rec.NAT {
		if err := s.Ops.AddNAT(ctx, privops.NATReq{GuestIP: rec.GuestIP, Tap: tap}); err != nil {
			return fmt.Errorf("nat: %w", err)
		}
		st.did("nat", func() error {
			return s.Ops.RemoveNAT(context.Background(), privops.NATReq{GuestIP: rec.GuestIP, Tap: tap})
		})
		crashPoint("nat")
	}
	return nil
}

// awaitGuest waits for the guest of a VM whose VMM was just launched: it
// pins the guest's SSH host keys from this boot's console (never from the
// network), marks the VM running, waits for its SSH server and gives a
// fork booted cold its own identity. A guest that boots but cannot be
// reached is kept, in state error, so 'vm logs' can say why.
func (s *Service) awaitGuest(ctx context.Context, rec store.VMRecord, res image.Resolved, console consoleMark) (store.VMRecord, error) {
	opstage.Set(ctx, "waiting for ssh")
	wctx, cancel := context.WithTimeout(ctx, SSHReadyTimeout)
	defer cancel()
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
	logging.From(ctx).With("vm", rec.Name).Info("vm ready", "ip", rec.GuestIP)
	return rec, nil
}

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

// tapReq creates (or re-pins) rec's tap: it may send only as rec's guest.
func (s *Service) tapReq(rec store.VMRecord) privops.TapReq {
	return privops.TapReq{Name: rec.Runtime.Tap, Bridge: s.Config.BridgeName, MAC: rec.Runtime.MAC, GuestIP: rec.GuestIP}
}

// hostPorts are the host ports guests may reach on the gateway: the .vm
// DNS server's, when it listens there (or on every address).
// ensureBridge has the root helper make (or check) the bridge, its
// isolation, the host ports guests may reach, and the host's .vm DNS route.
func (s *Service) ensureBridge(ctx context.Context) error {
	gw := gateway(s.Config.Network())
	req := privops.BridgeReq{Name: s.Config.BridgeName, Gateway: gw.String(), HostPorts: s.hostPorts(gw.Addr()), DNS: s.dnsRoute(gw.Addr())}
	if err := s.Ops.EnsureBridge(ctx, req); err != nil {
		return fmt.Errorf("bridge %s: %w", s.Config.BridgeName, err)
	}
	return nil
}

// dnsRoute is where the host's .vm lookups go: dns_listen when it is on
// loopback or the gateway (an unspecified address is reached on loopback);
// "" when there is no DNS server the host can route to.
func (s *Service) dnsRoute(gw netip.Addr) string {
	ap, err := netip.ParseAddrPort(s.Config.DNSListen)
	switch {
	case err != nil:
		return ""
	case ap.Addr().IsUnspecified():
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), ap.Port()).String()
	case ap.Addr().IsLoopback(), ap.Addr() == gw:
		return ap.String()
	}
	return ""
}

func (s *Service) hostPorts(gw netip.Addr) []uint16 {
	ap, err := netip.ParseAddrPort(s.Config.DNSListen)
	if err != nil || !(ap.Addr() == gw || ap.Addr().IsUnspecified()) {
		return nil
	}
	return []uint16{ap.Port()}
}
