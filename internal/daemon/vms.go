package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/opstage"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/privops"
	"github.com/banger-dev/banger/internal/rpcserver"
	"github.com/banger-dev/banger/internal/vm"
)

// chooseOps picks how the daemon reaches root: the root helper when one
// answers; in-process when the daemon itself is root (a dev setup);
// otherwise the helper client, whose calls explain how to install it.
func chooseOps(ctx context.Context, l paths.Layout, v vm.VMMChoice) (privops.Ops, *privops.Client, string) {
	hc := privops.NewClient(l.HelperSocketPath())
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if hc.Ping(pctx) == nil {
		return hc, hc, "root helper at " + hc.Socket()
	}
	if os.Geteuid() == 0 {
		return &privops.Local{Policy: policyFor(l, 0, 0, v)}, nil, "in-process (the daemon runs as root)"
	}
	return hc, hc, "root helper at " + hc.Socket() + " (not answering yet)"
}

// policyFor is what the privileged side accepts for layout l; v is the VMM
// the privileged side itself chose (never one a request names).
func policyFor(l paths.Layout, ownerUID, ownerGID int, v vm.VMMChoice) privops.Policy {
	return privops.Policy{Roots: []string{l.StateDir, l.CacheDir}, VMsDir: l.VMsDir(), OwnerUID: ownerUID, OwnerGID: ownerGID,
		VMMBinary: v.Binary, VMMKind: v.Kind}
}

// kvmUsable: /dev/kvm exists and is not the PVM flavour stock kernels
// cannot use.
func kvmUsable() bool {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return false
	}
	_, err := os.Stat("/sys/module/kvm_pvm")
	return err != nil
}

// chooseVMM picks the VMM: firecracker_bin when configured; Firecracker on
// PATH when KVM is usable; else banger's own QEMU-backed VMM.
func chooseVMM(cfg config.Config) (vm.VMMChoice, error) {
	kind := func(p string) string {
		if strings.Contains(filepath.Base(p), "banger-vmm") {
			return "banger-vmm"
		}
		return "firecracker"
	}
	if cfg.FirecrackerBin != "" {
		if _, err := os.Stat(cfg.FirecrackerBin); err != nil {
			return vm.VMMChoice{}, fmt.Errorf("firecracker_bin %s: %w", cfg.FirecrackerBin, err)
		}
		return vm.VMMChoice{Binary: cfg.FirecrackerBin, Kind: kind(cfg.FirecrackerBin), Reason: "firecracker_bin in config"}, nil
	}
	if kvmUsable() {
		if p, err := exec.LookPath("firecracker"); err == nil {
			return vm.VMMChoice{Binary: p, Kind: "firecracker", Reason: "firecracker on PATH and KVM usable"}, nil
		}
	}
	reason := "no usable KVM"
	if kvmUsable() {
		reason = "no firecracker binary found"
	}
	var cands []string
	if p := os.Getenv("BANGER_VMM_BIN"); p != "" {
		cands = append(cands, p)
	}
	if exe, err := os.Executable(); err == nil {
		cands = append(cands, filepath.Join(filepath.Dir(exe), "banger-vmm"))
	}
	cands = append(cands, "/usr/local/lib/banger/banger-vmm")
	if p, err := exec.LookPath("banger-vmm"); err == nil {
		cands = append(cands, p)
	}
	for _, c := range cands {
		if fi, err := os.Stat(c); err == nil && fi.Mode().IsRegular() {
			abs, _ := filepath.Abs(c)
			return vm.VMMChoice{Binary: abs, Kind: "banger-vmm", Reason: reason + "; using banger's QEMU-backed VMM"}, nil
		}
	}
	return vm.VMMChoice{}, errors.New("no VMM found: set firecracker_bin, or build banger-vmm ('make build') next to bangerd")
}

// logWriter turns progress lines into log records.
type logWriter struct{ ctx context.Context }

func (w logWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimSpace(string(p)), "\n") {
		if line != "" {
			logging.From(w.ctx).Info("progress", "msg", line)
			opstage.Set(w.ctx, line)
		}
	}
	return len(p), nil
}

var _ io.Writer = logWriter{}

func decode[T any](raw json.RawMessage) (T, error) {
	var v T
	err := rpcserver.Decode(raw, &v)
	return v, err
}

func (d *Daemon) registerVMs() {
	s := d.vms
	d.srv.Handle(api.MethodVMCreate, func(ctx context.Context, raw json.RawMessage) (any, error) {
		p, err := decode[api.VMCreateParams](raw)
		if err != nil {
			return nil, err
		}
		v, err := s.Create(ctx, p, logWriter{ctx})
		if err != nil {
			return nil, err
		}
		return v, nil
	})
	ref := func(f func(context.Context, string) (api.VM, error)) rpcserver.Handler {
		return func(ctx context.Context, raw json.RawMessage) (any, error) {
			p, err := decode[api.VMRef](raw)
			if err != nil {
				return nil, err
			}
			v, err := f(ctx, p.Name)
			if err != nil {
				return nil, err
			}
			return v, nil
		}
	}
	d.srv.Handle(api.MethodVMStart, ref(s.Start))
	d.srv.Handle(api.MethodVMStop, ref(s.Stop))
	d.srv.Handle(api.MethodVMPause, ref(s.Pause))
	d.srv.Handle(api.MethodVMResume, func(ctx context.Context, raw json.RawMessage) (any, error) {
		p, err := decode[api.VMResumeParams](raw)
		if err != nil {
			return nil, err
		}
		if p.Cold {
			return s.ResumeCold(ctx, p.Name)
		}
		return s.Resume(ctx, p.Name)
	})
	d.srv.Handle(api.MethodVMPark, ref(s.Park))
	d.srv.Handle(api.MethodVMFork, func(ctx context.Context, raw json.RawMessage) (any, error) {
		p, err := decode[api.VMForkParams](raw)
		if err != nil {
			return nil, err
		}
		return s.Fork(ctx, p)
	})
	d.srv.Handle(api.MethodVMRestart, ref(s.Restart))
	d.srv.Handle(api.MethodVMShow, ref(s.Show))
	d.srv.Handle(api.MethodVMKill, func(ctx context.Context, raw json.RawMessage) (any, error) {
		p, err := decode[api.VMKillParams](raw)
		if err != nil {
			return nil, err
		}
		return s.Kill(ctx, p)
	})
	d.srv.Handle(api.MethodVMDelete, func(ctx context.Context, raw json.RawMessage) (any, error) {
		p, err := decode[api.VMRef](raw)
		if err != nil {
			return nil, err
		}
		return struct{}{}, s.Delete(ctx, p.Name)
	})
	d.srv.Handle(api.MethodVMPrune, func(ctx context.Context, raw json.RawMessage) (any, error) {
		return s.Prune(ctx)
	})
	d.srv.Handle(api.MethodVMSet, func(ctx context.Context, raw json.RawMessage) (any, error) {
		p, err := decode[api.VMSetParams](raw)
		if err != nil {
			return nil, err
		}
		return s.Set(ctx, p)
	})
	d.srv.Handle(api.MethodVMList, func(ctx context.Context, raw json.RawMessage) (any, error) {
		return s.List(ctx)
	})
	d.srv.Handle(api.MethodVMLogs, func(ctx context.Context, raw json.RawMessage) (any, error) {
		p, err := decode[api.VMRef](raw)
		if err != nil {
			return nil, err
		}
		return s.Logs(ctx, p.Name)
	})
	d.srv.Handle(api.MethodVMSSHInfo, func(ctx context.Context, raw json.RawMessage) (any, error) {
		p, err := decode[api.VMRef](raw)
		if err != nil {
			return nil, err
		}
		return s.SSHInfo(ctx, p.Name)
	})
	d.srv.Handle(api.MethodVMPorts, func(ctx context.Context, raw json.RawMessage) (any, error) {
		p, err := decode[api.VMPortsParams](raw)
		if err != nil {
			return nil, err
		}
		return s.Ports(ctx, p.Names)
	})
	d.srv.Handle(api.MethodVMWorkspaceRecord, func(ctx context.Context, raw json.RawMessage) (any, error) {
		p, err := decode[api.VMWorkspaceParams](raw)
		if err != nil {
			return nil, err
		}
		return s.RecordWorkspace(ctx, p)
	})
}
