package daemon

import (
	"context"
	"encoding/json"
	"os"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/buildinfo"
	"github.com/banger-dev/banger/internal/hostcheck"
	"github.com/banger-dev/banger/internal/logging"
)

// register wires every service's handlers. The list is pinned by a test.
func (d *Daemon) register() {
	d.srv.Handle(api.MethodPing, d.ping)
	d.srv.Handle(api.MethodDaemonStatus, d.status)
	d.srv.Handle(api.MethodDaemonShutdown, d.shutdown)
	d.srv.Handle(api.MethodOperationsList, d.operations)
	d.srv.Handle(api.MethodDaemonDoctor, d.doctor)
	d.registerVMs()
	d.registerImages()
}

// doctor is 'banger doctor': the host checks, given what this daemon chose
// and runs.
func (d *Daemon) doctor(ctx context.Context, _ json.RawMessage) (any, error) {
	in := hostcheck.DoctorInput{
		VMM:          d.vmm,
		VMMErr:       d.vmmError,
		OpsMode:      d.opsMode,
		DefaultImage: d.cfg.DefaultImage,
		ImageKnown:   d.images.Known,
		ImageStored: func(ctx context.Context, name string) error {
			_, err := d.store.GetImage(ctx, name)
			return err
		},
		DNSListen: d.cfg.DNSListen,
		DNSErr:    d.dnsErr,
		GuestDNS:  d.vms.GuestDNS,
		StateDir:  d.layout.StateDir,
		VMsDir:    d.layout.VMsDir(),
	}
	if d.helper != nil { // a nil *privops.Client must stay a nil Helper
		in.Helper = d.helper
	}
	return hostcheck.Doctor(ctx, in), nil
}

func (d *Daemon) ping(ctx context.Context, _ json.RawMessage) (any, error) {
	return api.PingResult{Build: buildinfo.Get(), PID: os.Getpid()}, nil
}

func (d *Daemon) status(ctx context.Context, _ json.RawMessage) (any, error) {
	b := buildinfo.Get()
	return api.DaemonStatus{
		Running:       true,
		Build:         b,
		Version:       b.Version,
		PID:           os.Getpid(),
		StartedAt:     d.started.UTC().Format(time.RFC3339),
		UptimeSeconds: time.Since(d.started).Seconds(),
		Socket:        d.layout.SocketPath(),
		Mode:          string(d.layout.Mode),
		StateDir:      d.layout.StateDir,
		InFlight:      len(d.srv.InFlight(logging.OpID(ctx))),
	}, nil
}

func (d *Daemon) shutdown(ctx context.Context, _ json.RawMessage) (any, error) {
	select {
	case d.stop <- struct{}{}:
	default:
	}
	return struct{}{}, nil
}

func (d *Daemon) operations(ctx context.Context, _ json.RawMessage) (any, error) {
	return d.srv.InFlight(logging.OpID(ctx)), nil
}
