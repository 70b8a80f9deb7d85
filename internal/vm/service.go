// Package vm is the VM service: create, start, stop, restart, kill, delete,
// prune and set, with per-VM locks, a step log that unwinds in reverse on
// failure, a monitor that notices VMMs that exit, and reconcile after a
// daemon or root-helper restart (live VMMs are re-adopted untouched; dead
// ones are cleaned up and marked stopped with the reason).
//
// Files: service.go the Service, its locks and step log; create.go create
// (check, record, disks, then start, or a warm start); boot.go start (the
// network, the VMM launch, the guest's host keys and SSH); lifecycle.go
// start, stop, restart, kill, delete, prune, set; reconcile.go reconcile
// and the monitor; query.go list, show, logs, exec, SSH info; convert.go
// store records to wire types; park.go, fork.go, warm.go, autopark.go,
// hostkey.go, serial.go, ports.go as named.
package vm

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/guestssh"
	"github.com/banger-dev/banger/internal/hostcheck"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/privops"
	"github.com/banger-dev/banger/internal/store"
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

func (s *Service) dialOptions() guestssh.DialOptions {
	return guestssh.DialOptions{User: "root", Signer: s.signer, KnownHosts: s.KnownHosts, Timeout: 5 * time.Second}
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

func now() string { return time.Now().UTC().Format(time.RFC3339Nano) }

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
