package daemon

import (
	"context"
	"io"
	"os"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/hostcheck"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/opstage"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/privops"
	"github.com/banger-dev/banger/internal/rpcserver"
)

// chooseOps picks how the daemon reaches root: the root helper when one
// answers; in-process when the daemon itself is root (a dev setup);
// otherwise the helper client, whose calls explain how to install it.
func chooseOps(ctx context.Context, l paths.Layout, v hostcheck.VMMChoice) (privops.Ops, *privops.Client, string) {
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
func policyFor(l paths.Layout, ownerUID, ownerGID int, v hostcheck.VMMChoice) privops.Policy {
	return privops.Policy{Roots: []string{l.StateDir, l.CacheDir}, VMsDir: l.VMsDir(), OwnerUID: ownerUID, OwnerGID: ownerGID,
		VMMBinary: v.Binary, VMMKind: v.Kind}
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

func (d *Daemon) registerVMs() {
	s := d.vms
	h := d.srv.Handle
	h(api.MethodVMCreate, rpcserver.Typed(func(ctx context.Context, p api.VMCreateParams) (api.VM, error) {
		return s.Create(ctx, p, logWriter{ctx})
	}))
	h(api.MethodVMStart, byVMName(s.Start))
	h(api.MethodVMStop, byVMName(s.Stop))
	h(api.MethodVMPause, byVMName(s.Pause))
	h(api.MethodVMResume, rpcserver.Typed(func(ctx context.Context, p api.VMResumeParams) (api.VM, error) {
		if p.Cold {
			return s.ResumeCold(ctx, p.Name)
		}
		return s.Resume(ctx, p.Name)
	}))
	h(api.MethodVMPark, byVMName(s.Park))
	h(api.MethodVMFork, rpcserver.Typed(s.Fork))
	h(api.MethodVMRestart, byVMName(s.Restart))
	h(api.MethodVMShow, byVMName(s.Show))
	h(api.MethodVMKill, rpcserver.Typed(s.Kill))
	h(api.MethodVMDelete, rpcserver.TypedNoResult(func(ctx context.Context, p api.VMRef) error {
		return s.Delete(ctx, p.Name)
	}))
	h(api.MethodVMPrune, rpcserver.NoParams(s.Prune))
	h(api.MethodVMSet, rpcserver.Typed(s.Set))
	h(api.MethodVMList, rpcserver.Typed(s.List))
	h(api.MethodVMLogs, byVMName(s.Logs))
	h(api.MethodVMSSHInfo, byVMName(s.SSHInfo))
	h(api.MethodVMPorts, rpcserver.Typed(func(ctx context.Context, p api.VMPortsParams) ([]api.VMPorts, error) {
		return s.Ports(ctx, p.Names)
	}))
	h(api.MethodVMStats, rpcserver.Typed(func(ctx context.Context, p api.VMStatsParams) ([]api.VMStats, error) {
		return s.Stats(ctx, p.Names)
	}))
	h(api.MethodVMWorkspaceRecord, rpcserver.Typed(s.RecordWorkspace))
}

// byVMName serves f for the VM that api.VMRef params name.
func byVMName[Resp any](f func(context.Context, string) (Resp, error)) rpcserver.Handler {
	return rpcserver.Typed(func(ctx context.Context, p api.VMRef) (Resp, error) { return f(ctx, p.Name) })
}
