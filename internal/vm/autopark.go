package vm

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vmdir"
)

// auto_park_after (docs/snapshots.md, docs/config.md): the daemon parks a
// running VM that has had no SSH session for that long. Sessions are
// counted by the guest (its agent's health op reports the established TCP
// connections to its port 22), so every way in counts — 'vm ssh', 'vm
// exec', 'vm workspace prepare', a user's own 'ssh NAME.vm' — and a CLI
// that crashed cannot hold a session open once its connection is gone.
//
// The idle clocks live in memory: a daemon restart starts them afresh.

// autoParkPoll is the longest time between two questions to one VM's
// agent; a short auto_park_after asks more often (half of it, at least
// every second).
var autoParkPoll = 5 * time.Second

// autoParkAgentTimeout bounds one sessions question (dial and answer).
var autoParkAgentTimeout = 3 * time.Second

// idleClock is what the auto-parker knows of one running VM.
type idleClock struct {
	pid      int       // the VMM it was seen with: a new one (start, wake) is a new run
	since    time.Time // the last time the VM was seen busy, or first seen running
	lastPoll time.Time
	polling  bool // a sessions question is out
	parking  bool // a park is under way
	// unknown is set once the VM's sessions could not be known, so that
	// it is logged once per run (again after it was known).
	unknown bool
}

// autoParker decides which running VMs to park. Its clock, its source of
// session counts, its test for a VM with an operation in progress, its park
// and the way it runs work in the background are fields, so that the
// decision is tested without VMs.
type autoParker struct {
	now func() time.Time
	// sessions asks the VM's guest how many SSH sessions it has. Nil (and
	// no error) when the guest does not say (an agent older than the
	// field).
	sessions func(ctx context.Context, rec store.VMRecord) (*int, error)
	// busy reports an operation in progress on the VM (its lock is held):
	// that counts as activity.
	busy func(rec store.VMRecord) bool
	// park parks the VM if it is still the same run and still idle.
	park func(ctx context.Context, rec store.VMRecord, idle, after time.Duration)
	// spawn runs f in the background (a goroutine; the tests run it at once).
	spawn func(f func())

	mu    sync.Mutex
	after time.Duration
	vms   map[string]*idleClock // by VM id
}

// autoPark is called by Monitor on every tick with the VMs it listed: it
// parks the running VMs idle for auto_park_after. It returns at once when
// auto_park_after is off, and otherwise never waits: questions to the
// agents and parks run in the background, at most one of each per VM.
func (s *Service) autoPark(ctx context.Context, recs []store.VMRecord) {
	after := s.Config.AutoPark()
	if after <= 0 {
		return
	}
	s.parkerOnce.Do(func() { s.parker = s.newAutoParker() })
	s.parker.tick(ctx, recs, after)
}

func (s *Service) newAutoParker() *autoParker {
	return &autoParker{
		now:      time.Now,
		sessions: s.sshSessions,
		busy:     s.locked,
		park:     s.autoParkVM,
		spawn:    func(f func()) { go f() },
		vms:      map[string]*idleClock{},
	}
}

// pollEvery is how often one VM's agent is asked.
func (p *autoParker) pollEvery() time.Duration {
	return min(autoParkPoll, max(time.Second, p.after/2))
}

// tick looks at the listed VMs: it forgets those no longer running, starts
// an idle clock for each newly running one (or one with a new VMM: started
// or woken since), and asks the agents that are due how many sessions
// their guests have.
func (p *autoParker) tick(ctx context.Context, recs []store.VMRecord, after time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.after = after
	t := p.now()
	running := make(map[string]bool, len(recs))
	for _, r := range recs {
		if r.State != api.StateRunning || r.Runtime.PID == 0 {
			continue
		}
		running[r.ID] = true
		c := p.vms[r.ID]
		if c == nil || c.pid != r.Runtime.PID {
			// Just started or woken: it gets the whole idle period.
			c = &idleClock{pid: r.Runtime.PID, since: t}
			p.vms[r.ID] = c
		}
		if c.polling || c.parking || (!c.lastPoll.IsZero() && t.Sub(c.lastPoll) < p.pollEvery()) {
			continue
		}
		c.lastPoll = t
		if p.busy(r) {
			// An operation on it (a park, a fork, a workspace record…)
			// counts as activity; ask again next time.
			c.since = t
			continue
		}
		c.polling = true
		p.spawn(func() {
			n, err := p.sessions(ctx, r)
			p.observe(ctx, r, c, n, err)
		})
	}
	for id := range p.vms {
		if !running[id] {
			delete(p.vms, id)
		}
	}
}

// observe takes the answer to a sessions question about r: sessions reset
// its idle clock, and so does an answer that says nothing (no agent, or an
// agent that does not count sessions: such a VM is never parked); no
// sessions for auto_park_after parks it.
func (p *autoParker) observe(ctx context.Context, r store.VMRecord, c *idleClock, n *int, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c.polling = false
	if p.vms[r.ID] != c {
		return // no longer running, or a new run since the question
	}
	t := p.now()
	log := logging.From(ctx).With("vm", r.Name)
	switch {
	case err != nil || n == nil:
		c.since = t
		if !c.unknown {
			c.unknown = true
			if err != nil {
				log.Debug("auto-park: the guest agent did not answer; the VM is not parked while it does not", "error", err)
			} else {
				log.Warn("auto-park: the guest agent does not report SSH sessions (older than this banger; 'banger vm restart' updates it), so the VM is never auto-parked")
			}
		}
		return
	case *n > 0:
		c.since = t
	}
	c.unknown = false
	idle := t.Sub(c.since)
	if *n > 0 || idle < p.after {
		return
	}
	c.parking = true
	after := p.after
	p.spawn(func() {
		p.park(ctx, r, idle, after)
		p.mu.Lock()
		defer p.mu.Unlock()
		c.parking = false
		// Parked, this run is over (the next tick forgets it). Not parked
		// (busy after all, or the park failed): a whole idle period before
		// the next try.
		c.since = p.now()
	})
}

// sshSessions asks rec's guest agent for its SSH session count.
func (s *Service) sshSessions(ctx context.Context, rec store.VMRecord) (*int, error) {
	if !s.live(ctx, rec) {
		return nil, errors.New("its VMM is not running")
	}
	ctx, cancel := context.WithTimeout(ctx, autoParkAgentTimeout)
	defer cancel()
	c, err := agent.DialUDS(ctx, vmdir.Dir(rec.Runtime.Dir).AgentSock(), AgentPort)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	h, err := c.Health(ctx)
	if err != nil {
		return nil, err
	}
	return h.SSHSessions, nil
}

// locked reports whether an operation holds rec's lock.
func (s *Service) locked(rec store.VMRecord) bool {
	s.mu.Lock()
	l := s.locks[rec.ID]
	s.mu.Unlock()
	if l == nil || l.TryLock() {
		if l != nil {
			l.Unlock()
		}
		return false
	}
	return true
}

// autoParkVM parks r, idle for idle, under its lock as 'vm park' does,
// when it is still the same run (same VMM), running, live, and its guest
// still has no SSH session (asked again under the lock, so a session that
// began since the last question keeps it running).
func (s *Service) autoParkVM(ctx context.Context, r store.VMRecord, idle, after time.Duration) {
	log := logging.From(ctx).With("vm", r.Name)
	rec, unlock, err := s.get(ctx, r.ID)
	if err != nil {
		return
	}
	defer unlock()
	if rec.State != api.StateRunning || rec.Runtime.PID != r.Runtime.PID || !s.live(ctx, rec) {
		return
	}
	if n, err := s.sshSessions(ctx, rec); err != nil || n == nil || *n > 0 {
		return
	}
	if _, err := s.park(ctx, rec); err != nil {
		log.Warn("auto-park failed", "idle", idle.Round(time.Second).String(), "error", err)
		return
	}
	log.Info("vm auto-parked: no SSH session", "idle", idle.Round(time.Second).String(), "auto_park_after", after.String())
}
