package vm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/opstage"
	"github.com/banger-dev/banger/internal/privops"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vmdir"
	"golang.org/x/crypto/ssh"
)

// Fork (docs/snapshots.md): children start from the source's memory and
// disks at the moment of the fork. A running source is parked (its
// snapshot is the children's), its disks are frozen and every VM, the
// source included, goes on with its own overlay (helper op ForkDisks); the
// source is woken first, then each child, in a network namespace of its own
// (its snapshot names the source's tap), where it takes its own identity
// before it is reported ready. A parked source forks from its snapshot and
// stays parked.
//
// Crash safety: the children are recorded first, in state created without
// a clone method, which reconcile removes (with their directories) if the
// daemon dies before the disks exist; after that they are parked forks that
// still need their identity, which any later wake gives them.

// IdentityTimeout bounds a fork's identity op: the guest makes new SSH
// host keys and waits for its SSH server to serve them (about 1.5 s on
// tiny under TCG; an RSA key takes longer).
var IdentityTimeout = 60 * time.Second

// MaxForks bounds one fork.
const MaxForks = privops.MaxForks

// Fork forks the running or parked VM p.Name into p.Count (or len(p.Names))
// new VMs.
func (s *Service) Fork(ctx context.Context, p api.VMForkParams) (api.VMForkResult, error) {
	var out api.VMForkResult
	n := p.Count
	if len(p.Names) > 0 {
		if n != 0 && n != len(p.Names) {
			return out, errdefs.BadRequestf("--count %d and %d names disagree; give one or the other", n, len(p.Names))
		}
		n = len(p.Names)
	}
	if n == 0 {
		n = 1
	}
	if n < 1 || n > MaxForks {
		return out, errdefs.BadRequestf("invalid --count %d: a fork makes 1-%d VMs", n, MaxForks)
	}
	for i, name := range p.Names {
		if err := ValidateName(name); err != nil {
			return out, err
		}
		if slices.Contains(p.Names[:i], name) {
			return out, errdefs.BadRequestf("name %q is given twice", name)
		}
		if _, err := s.Store.GetVM(ctx, name); err == nil {
			return out, errdefs.AlreadyExistsf("a VM named %q already exists", name)
		}
	}
	s.opMu.RLock()
	defer s.opMu.RUnlock()
	src, unlockSrc, err := s.getHeld(ctx, p.Name)
	if err != nil {
		return out, err
	}
	specs := make([]forkSpec, n)
	for i := range specs {
		if i < len(p.Names) {
			specs[i].Name = p.Names[i]
		}
		specs[i].NAT = src.NAT
		specs[i].Labels = src.Runtime.Labels // a fork is tagged as its source
	}
	kids, unlockKids, err := s.forkOut(ctx, &src, specs)
	// The source is woken (if it ran) or parked: the forks wake without it.
	unlockSrc()
	defer unlockKids()
	out.Source = s.ToAPI(ctx, src)
	errs := []error{err} // the source's wake may have failed; its forks are made
	for i := range kids {
		opstage.Set(ctx, fmt.Sprintf("waking fork %s (%d of %d)", kids[i].Name, i+1, len(kids)))
		if kids[i], err = s.wake(ctx, kids[i]); err != nil {
			errs = append(errs, fmt.Errorf("fork %s: %w", kids[i].Name, err))
		}
		out.Forks = append(out.Forks, s.ToAPI(ctx, kids[i]))
	}
	return out, errors.Join(errs...)
}

// getHeld is get for a caller that already holds opMu shared.
func (s *Service) getHeld(ctx context.Context, name string) (store.VMRecord, func(), error) {
	rec, err := s.Store.GetVM(ctx, name)
	if err != nil {
		return rec, nil, err
	}
	unlock := s.lockVMHeld(rec.ID)
	if rec, err = s.Store.GetVM(ctx, rec.ID); err != nil {
		unlock()
		return rec, nil, err
	}
	return rec, unlock, nil
}

// forkSpec is one fork to make: its name ("" for SRC-fork-N; Generated:
// a generated name, replaced by a free one if taken) and NAT.
type forkSpec struct {
	Name      string
	NAT       bool
	Generated bool
	Labels    map[string]string
}

// forkOut makes the forks of *src, which the caller has locked (and opMu
// shared): a running src is parked, the forks are recorded and given their
// disks and src's snapshot, and a src that was running is woken again. It
// returns the forks, parked and still needing their identity, locked until
// the returned func runs; waking them is the caller's.
func (s *Service) forkOut(ctx context.Context, src *store.VMRecord, specs []forkSpec) ([]store.VMRecord, func(), error) {
	none := func() {}
	parked := src.State == api.StateParked
	if !parked && ((src.State != api.StateRunning && src.State != api.StatePaused) || !s.live(ctx, *src)) {
		return nil, none, errdefs.BadRequestf("VM %s is %s; only a running or parked VM can be forked ('banger vm start %s' first)", src.Name, src.State, src.Name)
	}
	log := logging.From(ctx).With("vm", src.Name)
	t0 := time.Now()
	var err error
	if !parked {
		if *src, err = s.park(ctx, *src); err != nil {
			return nil, none, fmt.Errorf("fork VM %s: %w", src.Name, err)
		}
	}
	// Wake a source that was running, whatever happens next.
	wakeSrc := func() error {
		if parked {
			return nil
		}
		var err error
		*src, err = s.wake(ctx, *src)
		if err != nil {
			err = fmt.Errorf("fork VM %s: the source did not wake: %w", src.Name, err)
		}
		return err
	}
	kids, err := s.recordForks(ctx, *src, specs)
	if err != nil {
		return nil, none, errors.Join(err, wakeSrc())
	}
	ids := make([]string, len(kids))
	var unlocks []func()
	unlockAll := func() {
		for _, u := range unlocks {
			u()
		}
	}
	for i, k := range kids {
		ids[i] = k.ID
		unlocks = append(unlocks, s.lockVMHeld(k.ID))
	}
	opstage.Set(ctx, "making the forks' disks")
	fr, err := s.Ops.ForkDisks(ctx, privops.ForkReq{Src: src.ID, Children: ids})
	if err != nil {
		for _, k := range kids {
			_ = s.Store.DeleteVM(context.Background(), k.ID)
		}
		unlockAll()
		return nil, none, errors.Join(fmt.Errorf("fork VM %s: %w", src.Name, err), wakeSrc())
	}
	for i := range kids {
		kids[i].Runtime.CloneMethod = fr.Method
		kids[i].State = api.StateParked
		kids[i].Runtime.SnapshotBytes = src.Runtime.SnapshotBytes
		kids[i].Runtime.ParkedAt = now()
		kids[i].UpdatedAt = now()
		if err := s.Store.UpdateVM(ctx, kids[i]); err != nil {
			unlockAll()
			return nil, none, errors.Join(err, wakeSrc())
		}
	}
	log.Info("forks made", "forks", len(kids), "method", fr.Method, "seconds", time.Since(t0).Seconds())
	return kids, unlockAll, wakeSrc()
}

// recordForks records src's forks (state created: reconcile removes them
// if the daemon dies before their disks exist).
func (s *Service) recordForks(ctx context.Context, src store.VMRecord, specs []forkSpec) ([]store.VMRecord, error) {
	s.createMu.Lock()
	defer s.createMu.Unlock()
	used, err := s.Store.UsedIPs(ctx)
	if err != nil {
		return nil, err
	}
	pinned := src.Runtime.SnapshotTap
	if pinned == "" {
		pinned = src.Runtime.Tap
	}
	var kids []store.VMRecord
	fail := func(err error) ([]store.VMRecord, error) {
		for _, k := range kids {
			_ = s.Store.DeleteVM(context.Background(), k.ID)
		}
		return nil, err
	}
	for _, spec := range specs {
		ip, err := allocateIP(s.Config.Network(), used)
		if err != nil {
			return fail(err)
		}
		used[ip.String()] = true
		name := spec.Name
		switch {
		case name == "":
			name = s.forkName(ctx, src.Name, kids)
		case spec.Generated:
			name = s.freeName(ctx, name)
		default:
			if _, err := s.Store.GetVM(ctx, name); err == nil {
				return fail(errdefs.AlreadyExistsf("a VM named %q already exists", name))
			}
		}
		id := newID()
		dir := vmdir.New(s.Layout.VMsDir(), id)
		k := store.VMRecord{
			ID: id, Name: name, ImageID: src.ImageID, State: api.StateCreated, VCPU: src.VCPU, MemoryMiB: src.MemoryMiB,
			DiskBytes: src.DiskBytes, NAT: spec.NAT, GuestIP: ip.String(), CreatedAt: now(), UpdatedAt: now(),
			Runtime: store.RuntimeRecord{
				Tap: tapFor(id), MAC: macFor(ip), Dir: dir.Path(), APISock: dir.APISock(), SerialLog: dir.SerialLog(),
				VMM: src.Runtime.VMM, VMMKind: src.Runtime.VMMKind, StartedAt: src.Runtime.StartedAt,
				ForkOf: src.ID, DiskParents: append([]string{src.ID}, src.Runtime.DiskParents...),
				SnapshotTap: pinned, NeedsIdentity: true, Workspace: src.Runtime.Workspace,
				Labels: maps.Clone(spec.Labels),
			},
		}
		if err := s.Store.InsertVM(ctx, k); err != nil {
			return fail(err)
		}
		kids = append(kids, k)
	}
	return kids, nil
}

// forkName is the first free name SRC-fork-N (SRC shortened to keep the
// name a DNS label), free in the store and in this fork's batch.
func (s *Service) forkName(ctx context.Context, src string, batch []store.VMRecord) string {
	for k := 1; ; k++ {
		suffix := "-fork-" + strconv.Itoa(k)
		base := src
		if len(base)+len(suffix) > 63 {
			base = strings.TrimRight(base[:63-len(suffix)], "-")
		}
		name := base + suffix
		taken := slices.ContainsFunc(batch, func(r store.VMRecord) bool { return r.Name == name })
		if _, err := s.Store.GetVM(ctx, name); !taken && err != nil {
			return name
		}
	}
}

// takeIdentity gives a fork its own MAC, address, hostname, machine-id and
// SSH host keys (and fresh entropy and the host's clock) through its agent,
// then pins the host keys it reports: the agent's channel is the guest's
// own, like its console. A fork that cannot is kept in state error: its
// link on the bridge is pinned to its own MAC and address, so with its
// parent's it reaches nothing.
func (s *Service) takeIdentity(ctx context.Context, rec store.VMRecord) (store.VMRecord, error) {
	log := logging.From(ctx).With("vm", rec.Name)
	fail := func(err error) (store.VMRecord, error) {
		err = fmt.Errorf("VM %s was restored but did not take its own identity (%w); it was kept for 'banger vm logs %s', then 'banger vm delete %s'", rec.Name, err, rec.Name, rec.Name)
		rec.State = api.StateError
		rec.Runtime.LastError = err.Error()
		rec.UpdatedAt = now()
		_ = s.Store.UpdateVM(context.Background(), rec)
		return rec, err
	}
	ctx, cancel := context.WithTimeout(ctx, IdentityTimeout)
	defer cancel()
	c, err := agent.DialUDS(ctx, vmdir.Dir(rec.Runtime.Dir).AgentSock(), AgentPort)
	if err != nil {
		return fail(err)
	}
	defer c.Close()
	ent := make([]byte, 64)
	mid := make([]byte, 16)
	if _, err := rand.Read(ent); err != nil {
		return fail(err)
	}
	if _, err := rand.Read(mid); err != nil {
		return fail(err)
	}
	// Its SSH host keys are made here: ssh-keygen in an emulated guest is
	// most of the op's time. An agent of protocol 3 (or dropbear) makes its own.
	hostKeys, err := agent.NewHostKeys()
	if err != nil {
		return fail(err)
	}
	gw := gateway(s.Config.Network())
	r, err := c.Identity(ctx, agent.IdentityArgs{
		TimeUnixNano: time.Now().UnixNano(), Entropy: ent, MachineID: hex.EncodeToString(mid), Hostname: rec.Name,
		MAC: rec.Runtime.MAC, Address: fmt.Sprintf("%s/%d", rec.GuestIP, gw.Bits()), Gateway: gw.Addr().String(),
		HostKeys: hostKeys,
	})
	if err != nil {
		return fail(err)
	}
	var keys []ssh.PublicKey
	for _, line := range r.HostKeys {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return fail(fmt.Errorf("host key from the agent: %w", err))
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return fail(errors.New("the agent reported no SSH host keys"))
	}
	if err := s.KnownHosts.Pin(rec.GuestIP, keys...); err != nil {
		return fail(err)
	}
	rec.Runtime.NeedsIdentity = false
	rec.UpdatedAt = now()
	if err := s.Store.UpdateVM(ctx, rec); err != nil {
		return rec, err
	}
	log.Info("fork took its own identity", "ip", rec.GuestIP, "clock_step", time.Duration(r.ClockStepNanos).String(), "host_keys", len(keys))
	return rec, nil
}

// dependents names the VMs whose disks are overlays of rec's frozen ones.
func (s *Service) dependents(ctx context.Context, rec store.VMRecord) ([]string, error) {
	all, err := s.Store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	var deps []string
	for _, v := range all {
		if v.ID != rec.ID && slices.Contains(v.Runtime.DiskParents, rec.ID) {
			deps = append(deps, v.Name)
		}
	}
	return deps, nil
}
