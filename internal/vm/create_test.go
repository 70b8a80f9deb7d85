package vm

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/guestssh"
	"github.com/banger-dev/banger/internal/hostcheck"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vmdir"
)

// createService is a VM service over ops, a real store on disk holding
// image "img" (a kernel and an empty rootfs under the state dir) and its
// own SSH key and known_hosts. Guests get 127.111.0.0/24 addresses, where
// nothing answers SSH.
func createService(t *testing.T, ops func(vmsDir string) *fakeOps) (*Service, *fakeOps) {
	t.Helper()
	dir := t.TempDir()
	layout := paths.Layout{StateDir: filepath.Join(dir, "state"), CacheDir: filepath.Join(dir, "cache")}
	st, err := store.Open(layout.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	base := filepath.Join(layout.StateDir, "base")
	if err := os.MkdirAll(base, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"rootfs.ext4", "vmlinux"} {
		if err := os.WriteFile(filepath.Join(base, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	if err := st.PutKernel(ctx, store.KernelRecord{ID: "k", Name: "k", Version: "k", Vmlinux: filepath.Join(base, "vmlinux")}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutImage(ctx, store.ImageRecord{ID: "img", Name: "img", Rootfs: filepath.Join(base, "rootfs.ext4"), KernelID: "k"}); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.CIDR = "127.111.0.0/24"
	cfg.DefaultImage = "img"
	cfg.Start = config.StartCold
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	f := ops(layout.VMsDir())
	s := &Service{
		Store: st, Images: &image.Service{Store: st, Layout: layout, Log: discard}, Ops: f, Layout: layout, Config: cfg, Log: discard,
		VMM:     hostcheck.VMMChoice{Binary: f.vmmBin, Kind: "banger-vmm"},
		KeyPath: filepath.Join(layout.SSHDir(), "id_ed25519"), KnownHosts: guestssh.OpenKnownHosts(filepath.Join(layout.SSHDir(), "known_hosts")),
	}
	if err := s.Init(); err != nil {
		t.Fatal(err)
	}
	return s, f
}

// The cleanup calls a failed create may make, and what they undo.
var cleanupCalls = []string{"RemoveVMDir", "DeleteTap", "RemoveNAT", "KillVMM", "ClearRuntime"}

// TestCreateRollsBackEachStep: a create that fails at any step leaves no
// VM directory, tap, NAT rule, VMM process or store row behind, and the
// root helper saw the cleanup of exactly what was made, in reverse. The
// exception is the documented one: a guest that booted but never answered
// SSH is kept (state error) for 'vm logs', with what it runs on, until
// 'vm delete', which then leaves nothing.
func TestCreateRollsBackEachStep(t *testing.T) {
	hostKey := hkSigner(t, false)
	booted := hostKeyLine(hostKey.PublicKey()) + readyLine
	oldTimeout := SSHReadyTimeout
	SSHReadyTimeout = time.Second
	t.Cleanup(func() { SSHReadyTimeout = oldTimeout })
	boom := errors.New("injected failure")

	cases := []struct {
		name    string
		fail    string // the root helper op that fails
		console string // what the guest prints on its console
		wantErr string
		// cleanup: the cleanup calls the create makes, in order; kept: the
		// VM stays in state error, with reason as its last error (then
		// Delete must leave nothing).
		cleanup []string
		kept    bool
		reason  string
	}{
		{name: "disk preparation", fail: "PrepareDisks", wantErr: "prepare disks: injected failure",
			cleanup: []string{"RemoveVMDir"}},
		{name: "tap creation", fail: "CreateTap", wantErr: "tap bgtap",
			cleanup: []string{"RemoveVMDir"}}, // no tap was made
		{name: "NAT", fail: "AddNAT", wantErr: "nat: injected failure",
			cleanup: []string{"DeleteTap", "RemoveVMDir"}},
		{name: "VMM launch", fail: "LaunchVMM", wantErr: "launch VMM: injected failure",
			cleanup: []string{"RemoveNAT", "DeleteTap", "RemoveVMDir"}},
		{name: "SSH wait", console: booted, wantErr: "booted but its guest did not answer SSH", kept: true,
			reason: "guest did not answer SSH: "},
		{name: "host keys never on the console", console: "booting...\r\n", wantErr: "waiting for the guest's SSH host keys", kept: true,
			reason: "pin the guest's SSH host keys: "},
		// The guest is up, but its image prints no host keys: banger will
		// not trust it, says to rebuild the image, and removes the VM
		// (this used to leave its VMM, tap and NAT rules behind).
		{name: "no host keys in the console", console: readyLine, wantErr: "is too old to print them",
			cleanup: []string{"KillVMM", "DeleteTap", "RemoveNAT", "ClearRuntime", "RemoveVMDir"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, f := createService(t, func(vmsDir string) *fakeOps {
				f := newFakeOps(t, vmsDir)
				f.console = c.console
				if c.fail != "" {
					f.fail[c.fail] = boom
				}
				return f
			})
			ctx := logging.With(context.Background(), s.Log)
			v, err := s.Create(ctx, api.VMCreateParams{Name: "dev", NAT: true}, io.Discard)
			if err == nil || !strings.Contains(err.Error(), c.wantErr) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("create: %v, want one line with %q", err, c.wantErr)
			}
			if got := f.seen(cleanupCalls...); !slices.Equal(got, c.cleanup) {
				t.Errorf("cleanup calls %q, want %q", got, c.cleanup)
			}
			recs, lerr := s.Store.ListVMs(ctx)
			if lerr != nil {
				t.Fatal(lerr)
			}
			if !c.kept {
				if len(recs) != 0 || v.Name != "" {
					t.Errorf("records left: %+v (result %+v)", recs, v)
				}
				if left := f.leftovers(); len(left) != 0 {
					t.Errorf("left behind: %q", left)
				}
				return
			}
			if len(recs) != 1 || recs[0].State != api.StateError || !strings.HasPrefix(recs[0].Runtime.LastError, c.reason) || v.State != api.StateError || v.Name != "dev" {
				t.Fatalf("kept VM: records %+v, result %+v; want dev in state error, last error %q...", recs, v, c.reason)
			}
			rec := recs[0]
			want := []string{"dir " + rec.ID, "nat " + rec.GuestIP, "tap " + rec.Runtime.Tap}
			left := f.leftovers()
			if len(left) != 4 || !slices.Equal(left[:3], want) || !strings.HasPrefix(left[3], "vmm "+rec.ID) {
				t.Fatalf("kept VM holds %q, want %q and its VMM", left, want)
			}
			if _, err := os.Stat(vmdir.Dir(rec.Runtime.Dir).SerialLog()); err != nil {
				t.Errorf("the console 'vm logs' reads is gone: %v", err)
			}
			if err := s.Delete(ctx, "dev"); err != nil {
				t.Fatalf("delete the kept VM: %v", err)
			}
			if recs, _ := s.Store.ListVMs(ctx); len(recs) != 0 {
				t.Errorf("records left after delete: %+v", recs)
			}
			if left := f.leftovers(); len(left) != 0 {
				t.Errorf("left behind after delete: %q", left)
			}
		})
	}
}
