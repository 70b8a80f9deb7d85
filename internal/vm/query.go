package vm

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/guestssh"
)

// List returns every VM.
func (s *Service) List(ctx context.Context, p api.VMListParams) ([]api.VM, error) {
	fs, err := parseFilters(p.Filters)
	if err != nil {
		return nil, err
	}
	recs, err := s.Store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	out := []api.VM{}
	for _, r := range recs {
		if isTemplate(r) { // templates are the images' (image show)
			continue
		}
		if v := s.ToAPI(ctx, r); matches(v, fs) {
			out = append(out, v)
		}
	}
	return out, nil
}

// Show returns one VM.
func (s *Service) Show(ctx context.Context, name string) (api.VM, error) {
	rec, err := s.Store.GetVM(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	return s.ToAPI(ctx, rec), nil
}

// Logs returns the tail of the serial console.
func (s *Service) Logs(ctx context.Context, name string) (api.VMLogs, error) {
	rec, err := s.Store.GetVM(ctx, name)
	if err != nil {
		return api.VMLogs{}, err
	}
	const max = 512 << 10
	out := api.VMLogs{Path: rec.Runtime.SerialLog}
	f, err := os.Open(rec.Runtime.SerialLog)
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return out, err
	}
	defer f.Close()
	fi, _ := f.Stat()
	if fi.Size() > max {
		_, _ = f.Seek(-max, io.SeekEnd)
		out.Truncated = true
	}
	b, err := io.ReadAll(f)
	out.Text = string(b)
	return out, err
}

// Exec runs argv in a running VM over SSH (banger's key, the pinned host
// key) and returns its exit code.
func (s *Service) Exec(ctx context.Context, name string, argv []string, stdout, stderr io.Writer) (int, error) {
	rec, err := s.Store.GetVM(ctx, name)
	if err != nil {
		return 0, err
	}
	if rec.State != api.StateRunning {
		return 0, errdefs.New(errdefs.BadRequest, "VM %s is %s", rec.Name, rec.State)
	}
	opts := s.dialOptions()
	opts.Timeout = 10 * time.Second
	c, err := guestssh.Dial(ctx, net.JoinHostPort(rec.GuestIP, "22"), opts)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.Run(ctx, argv, nil, stdout, stderr)
}

// SSHInfo tells a client how to reach the guest.
func (s *Service) SSHInfo(ctx context.Context, name string) (api.SSHInfo, error) {
	rec, err := s.Store.GetVM(ctx, name)
	if err != nil {
		return api.SSHInfo{}, err
	}
	return api.SSHInfo{Name: rec.Name, State: rec.State, Host: rec.GuestIP, User: "root", KeyPath: s.KeyPath, KnownHosts: s.KnownHosts.Path(), Workspace: workspaceToAPI(rec.Runtime.Workspace)}, nil
}

// LookupIP is the guest address of the VM named name (the .vm DNS answer).
func (s *Service) LookupIP(ctx context.Context, name string) (netip.Addr, bool) {
	rec, err := s.Store.GetVM(ctx, name)
	if err != nil {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(rec.GuestIP)
	return a, err == nil
}
