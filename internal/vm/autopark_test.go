package vm

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/store"
)

// fakeGuests drives an autoParker without VMs: a clock the test moves,
// session counts it sets, background work it runs when it chooses, and a
// record of questions and parks.
type fakeGuests struct {
	t        *testing.T
	p        *autoParker
	clock    time.Time
	sessions map[string]*int  // by VM id; missing = the agent does not report them
	errs     map[string]error // by VM id: the agent does not answer
	busy     map[string]bool
	asked    map[string]int
	parks    []parkCall
	queue    []func()
}

type parkCall struct {
	id          string
	idle, after time.Duration
}

func newFakeGuests(t *testing.T) *fakeGuests {
	f := &fakeGuests{t: t, clock: time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC), sessions: map[string]*int{},
		errs: map[string]error{}, busy: map[string]bool{}, asked: map[string]int{}}
	f.p = &autoParker{
		now: func() time.Time { return f.clock },
		sessions: func(ctx context.Context, rec store.VMRecord) (*int, error) {
			f.asked[rec.ID]++
			if err := f.errs[rec.ID]; err != nil {
				return nil, err
			}
			if n := f.sessions[rec.ID]; n != nil {
				v := *n
				return &v, nil
			}
			return nil, nil
		},
		busy: func(rec store.VMRecord) bool { return f.busy[rec.ID] },
		park: func(ctx context.Context, rec store.VMRecord, idle, after time.Duration) {
			f.parks = append(f.parks, parkCall{rec.ID, idle, after})
		},
		spawn: func(fn func()) { f.queue = append(f.queue, fn) },
		vms:   map[string]*idleClock{},
	}
	return f
}

func (f *fakeGuests) set(id string, n int) { f.sessions[id] = &n }

// tick is one Monitor tick at the current time, with its background work
// (questions, then parks) run to the end.
func (f *fakeGuests) tick(after time.Duration, recs ...store.VMRecord) {
	f.p.tick(context.Background(), recs, after)
	f.drain()
}

func (f *fakeGuests) drain() {
	for len(f.queue) > 0 {
		fn := f.queue[0]
		f.queue = f.queue[1:]
		fn()
	}
}

// run ticks every second for d.
func (f *fakeGuests) run(d, after time.Duration, recs ...store.VMRecord) {
	for end := f.clock.Add(d); f.clock.Before(end); {
		f.clock = f.clock.Add(time.Second)
		f.tick(after, recs...)
	}
}

func running(id string, pid int) store.VMRecord {
	return store.VMRecord{ID: id, Name: "vm-" + id, State: api.StateRunning, Runtime: store.RuntimeRecord{PID: pid}}
}

func TestAutoParkAfterIdlePeriodNotBefore(t *testing.T) {
	f := newFakeGuests(t)
	after := 60 * time.Second
	vm := running("a", 100)
	f.set("a", 0)
	f.tick(after, vm)
	f.run(59*time.Second, after, vm)
	if len(f.parks) != 0 {
		t.Fatalf("parked before the idle period: %+v", f.parks)
	}
	f.run(5*time.Second, after, vm) // the next question (every 5 s) is due within
	if len(f.parks) != 1 || f.parks[0].id != "a" || f.parks[0].idle < after || f.parks[0].idle > after+autoParkPoll || f.parks[0].after != after {
		t.Fatalf("parks %+v, want one of a after %v idle", f.parks, after)
	}
	// Parked: no longer running, forgotten; nothing more is asked or parked.
	vm.State, vm.Runtime.PID = api.StateParked, 0
	asked := f.asked["a"]
	f.run(5*time.Minute, after, vm)
	if len(f.parks) != 1 || f.asked["a"] != asked || len(f.p.vms) != 0 {
		t.Fatalf("after the park: parks %+v, asked %d→%d, tracked %d", f.parks, asked, f.asked["a"], len(f.p.vms))
	}
}

func TestAutoParkPollRate(t *testing.T) {
	f := newFakeGuests(t)
	vm := running("a", 100)
	f.set("a", 1)
	f.tick(15*time.Minute, vm)
	f.run(60*time.Second, 15*time.Minute, vm)
	// Once at first sight, then every 5 s.
	if n := f.asked["a"]; n != 13 {
		t.Fatalf("asked %d times in 60 s, want 13 (every %v)", n, autoParkPoll)
	}
	// A short auto_park_after asks every half of it (at least every second).
	f = newFakeGuests(t)
	f.set("a", 1)
	f.tick(4*time.Second, vm)
	f.run(60*time.Second, 4*time.Second, vm)
	if n := f.asked["a"]; n != 31 {
		t.Fatalf("asked %d times in 60 s at auto_park_after 4s, want 31 (every 2 s)", n)
	}
	// One question at a time: an unanswered one is not asked again.
	f = newFakeGuests(t)
	f.set("a", 1)
	f.p.tick(context.Background(), []store.VMRecord{vm}, time.Minute)
	for i := 0; i < 30; i++ {
		f.clock = f.clock.Add(time.Second)
		f.p.tick(context.Background(), []store.VMRecord{vm}, time.Minute)
	}
	if len(f.queue) != 1 {
		t.Fatalf("%d questions out at once", len(f.queue))
	}
	f.drain()
}

func TestAutoParkSessionResetsIdleClock(t *testing.T) {
	f := newFakeGuests(t)
	after := 60 * time.Second
	vm := running("a", 100)
	f.set("a", 0)
	f.tick(after, vm)
	f.run(50*time.Second, after, vm)
	f.set("a", 2) // someone logs in
	f.run(10*time.Minute, after, vm)
	if len(f.parks) != 0 {
		t.Fatalf("parked with sessions open: %+v", f.parks)
	}
	f.set("a", 0) // and leaves
	f.run(55*time.Second, after, vm)
	if len(f.parks) != 0 {
		t.Fatalf("parked %v after the last session: %+v", 55*time.Second, f.parks)
	}
	f.run(15*time.Second, after, vm)
	if len(f.parks) != 1 {
		t.Fatalf("not parked %v after the last session", 70*time.Second)
	}
}

func TestAutoParkUnknownSessionsNeverParks(t *testing.T) {
	f := newFakeGuests(t)
	after := 10 * time.Second
	old := running("old", 100)   // an agent older than ssh_sessions
	mute := running("mute", 101) // an agent that does not answer
	fine := running("fine", 102) // the control: parked
	f.errs["mute"] = errors.New("agent at …: health: context deadline exceeded")
	f.set("fine", 0)
	f.tick(after, old, mute, fine)
	f.run(time.Hour, after, old, mute, fine)
	for _, p := range f.parks {
		if p.id != "fine" {
			t.Fatalf("parked %s: %+v", p.id, p)
		}
	}
	if len(f.parks) == 0 {
		t.Fatal("fine was never parked")
	}
	if f.asked["old"] < 100 || f.asked["mute"] < 100 {
		t.Fatalf("stopped asking: %v", f.asked)
	}

	// Not knowing breaks the idle period: it must be seen idle for all of it.
	f = newFakeGuests(t)
	vm := running("a", 100)
	f.set("a", 0)
	f.tick(after, vm)
	f.run(5*time.Second, after, vm)
	f.errs["a"] = errors.New("no answer")
	f.run(5*time.Second, after, vm) // asked at 10 s: no answer
	delete(f.errs, "a")
	f.run(9*time.Second, after, vm)
	if len(f.parks) != 0 {
		t.Fatalf("parked less than %v after the agent answered again: %+v", after, f.parks)
	}
	f.run(6*time.Second, after, vm)
	if len(f.parks) != 1 {
		t.Fatalf("not parked %v after the agent answered again", after)
	}
}

func TestAutoParkNewRunGetsWholePeriod(t *testing.T) {
	f := newFakeGuests(t)
	after := 30 * time.Second
	vm := running("a", 100)
	f.set("a", 0)
	// The fake's park leaves the VM running, as a park does that finds a
	// session begun since the last question (or fails).
	f.tick(after, vm)
	f.run(30*time.Second, after, vm)
	if len(f.parks) != 1 {
		t.Fatalf("parks %+v", f.parks)
	}
	// A park that did not happen restarts the clock: no new try before
	// another period.
	f.run(25*time.Second, after, vm)
	if len(f.parks) != 1 {
		t.Fatalf("tried again at once: %+v", f.parks)
	}
	// Woken (or restarted) between two ticks, without ever being seen
	// parked: a new VMM, so a whole idle period again.
	vm.Runtime.PID = 200
	f.run(25*time.Second, after, vm)
	if len(f.parks) != 1 {
		t.Fatalf("a woken VM was parked before its idle period: %+v", f.parks)
	}
	f.run(10*time.Second, after, vm)
	if len(f.parks) != 2 {
		t.Fatalf("parks %+v", f.parks)
	}
	// Paused, then resumed: the same VMM, yet a new idle period.
	f = newFakeGuests(t)
	vm = running("a", 100)
	f.set("a", 0)
	f.tick(after, vm)
	f.run(25*time.Second, after, vm)
	vm.State = api.StatePaused
	f.run(time.Hour, after, vm)
	vm.State = api.StateRunning
	f.run(25*time.Second, after, vm)
	if len(f.parks) != 0 {
		t.Fatalf("a resumed VM was parked before its idle period: %+v", f.parks)
	}
	f.run(10*time.Second, after, vm)
	if len(f.parks) != 1 {
		t.Fatalf("parks %+v", f.parks)
	}
}

func TestAutoParkOperationInProgressIsActivity(t *testing.T) {
	f := newFakeGuests(t)
	after := 30 * time.Second
	vm := running("a", 100)
	f.set("a", 0)
	f.tick(after, vm)
	f.busy["a"] = true // e.g. a long 'vm fork' of it
	f.run(10*time.Minute, after, vm)
	if len(f.parks) != 0 || f.asked["a"] != 1 {
		t.Fatalf("while busy: parks %+v, asked %d", f.parks, f.asked["a"])
	}
	f.busy["a"] = false
	f.run(25*time.Second, after, vm)
	if len(f.parks) != 0 {
		t.Fatalf("parked right after the operation: %+v", f.parks)
	}
	f.run(15*time.Second, after, vm)
	if len(f.parks) != 1 {
		t.Fatalf("parks %+v", f.parks)
	}
}

func TestAutoParkOnePerVMAndOthersUntouched(t *testing.T) {
	f := newFakeGuests(t)
	after := 20 * time.Second
	idle, used := running("idle", 100), running("used", 101)
	stopped := store.VMRecord{ID: "stopped", State: api.StateStopped}
	f.set("idle", 0)
	f.set("used", 1)
	// The park is slow: it is still under way at the next ticks.
	started, release := make(chan struct{}, 8), make(chan struct{})
	f.p.park = func(ctx context.Context, rec store.VMRecord, i, a time.Duration) {
		f.parks = append(f.parks, parkCall{rec.ID, i, a})
		started <- struct{}{}
		<-release
	}
	var pending []chan struct{}
	for i := 0; i < 60; i++ {
		f.p.tick(context.Background(), []store.VMRecord{idle, used, stopped}, after)
		// Each piece of background work runs until it ends or parks.
		for len(f.queue) > 0 {
			fn := f.queue[0]
			f.queue = f.queue[1:]
			done := make(chan struct{})
			go func() { fn(); close(done) }()
			select {
			case <-done:
			case <-started:
				pending = append(pending, done)
			}
		}
		f.clock = f.clock.Add(time.Second)
	}
	close(release)
	for _, d := range pending {
		<-d
	}
	if len(f.parks) != 1 || f.parks[0].id != "idle" {
		t.Fatalf("parks %+v, want one of idle", f.parks)
	}
	if f.asked["stopped"] != 0 {
		t.Fatal("asked a stopped VM")
	}
}

func TestAutoParkOff(t *testing.T) {
	for _, v := range []string{"", "0", "0s"} {
		s := &Service{Config: config.Config{AutoParkAfter: v}}
		s.autoPark(context.Background(), []store.VMRecord{running("a", 100)})
		if s.parker != nil {
			t.Fatalf("auto_park_after %q: the auto-parker runs", v)
		}
	}
}
