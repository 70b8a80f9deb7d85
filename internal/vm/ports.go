package vm

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vmdir"
)

// AgentPort is the vsock port banger's guest agent listens on.
const AgentPort = 1024

// AgentTimeout bounds one agent query.
const AgentTimeout = 5 * time.Second

// portsTimeout bounds everything 'vm ports' does for one VM: dialing, the
// agent's answers and turning them into the result (a variable for tests).
var portsTimeout = AgentTimeout

// Ports asks the guest agents of the named VMs (every running VM when none
// is named) for their listening sockets, all VMs at once. A VM whose agent
// does not answer gets an Error, not a failed call.
func (s *Service) Ports(ctx context.Context, names []string) ([]api.VMPorts, error) {
	recs, err := s.runningRecs(ctx, names)
	if err != nil {
		return nil, err
	}
	out := make([]api.VMPorts, len(recs))
	var wg sync.WaitGroup
	for i, r := range recs {
		wg.Add(1)
		go func(i int, r store.VMRecord) {
			defer wg.Done()
			out[i] = s.portsBounded(ctx, r)
		}(i, r)
	}
	wg.Wait()
	return out, nil
}

// runningRecs is the named VMs, each of which must be running, or every
// running VM (templates aside) when none is named.
func (s *Service) runningRecs(ctx context.Context, names []string) ([]store.VMRecord, error) {
	var recs []store.VMRecord
	if len(names) == 0 {
		all, err := s.Store.ListVMs(ctx)
		if err != nil {
			return nil, err
		}
		for _, r := range all {
			if r.State == api.StateRunning && !isTemplate(r) {
				recs = append(recs, r)
			}
		}
		return recs, nil
	}
	for _, n := range names {
		r, err := s.Store.GetVM(ctx, n)
		if err != nil {
			return nil, err
		}
		if r.State != api.StateRunning {
			return nil, errdefs.BadRequestf("VM %s is %s; start it with 'banger vm start %s'", n, r.State, n)
		}
		recs = append(recs, r)
	}
	return recs, nil
}

// portsBounded is portsOf under portsTimeout. The guest is untrusted: the
// agent client caps what it reads (1 MiB a line, agent.MaxListeners
// listeners), and this caps the time, reads and processing together. When
// the time is up the VM gets an Error and portsOf's late result is dropped
// (it ends soon after: its I/O has the same deadline).
func (s *Service) portsBounded(parent context.Context, r store.VMRecord) api.VMPorts {
	ctx, cancel := context.WithTimeout(parent, portsTimeout)
	defer cancel()
	done := make(chan api.VMPorts, 1)
	go func() { done <- s.portsOf(ctx, r) }()
	select {
	case res := <-done:
		return res
	case <-ctx.Done():
	}
	select {
	case res := <-done:
		return res
	default:
	}
	res := api.VMPorts{Name: r.Name, IP: r.GuestIP, Listeners: []api.PortListener{},
		Error: fmt.Sprintf("guest agent: no complete answer within %v", portsTimeout)}
	if err := parent.Err(); err != nil {
		res.Error = "guest agent: " + err.Error()
	}
	return res
}

func (s *Service) portsOf(ctx context.Context, r store.VMRecord) api.VMPorts {
	res := api.VMPorts{Name: r.Name, IP: r.GuestIP, Listeners: []api.PortListener{}}
	c, err := agent.DialUDS(ctx, vmdir.Dir(r.Runtime.Dir).AgentSock(), AgentPort)
	if err != nil {
		res.Error = fmt.Sprintf("guest agent not reachable: %v", err)
		return res
	}
	defer c.Close()
	if h, err := c.Health(ctx); err == nil {
		res.Agent = h.AgentVersion
	}
	ls, err := c.Ports(ctx)
	if err != nil {
		res.Error = fmt.Sprintf("guest agent: %v", err)
		return res
	}
	host := r.Name + ".vm"
	for _, l := range ls {
		pl := api.PortListener{Proto: l.Proto, Address: l.Address, Port: l.Port, PID: l.PID, Process: l.Process}
		if ip := net.ParseIP(l.Address); ip == nil || !ip.IsLoopback() {
			pl.Endpoint = net.JoinHostPort(host, strconv.Itoa(l.Port))
			if (l.Proto == "tcp" || l.Proto == "tcp6") && l.Port != 22 {
				pl.URL = "http://" + pl.Endpoint + "/"
			}
		}
		res.Listeners = append(res.Listeners, pl)
	}
	sort.SliceStable(res.Listeners, func(i, j int) bool { return res.Listeners[i].Port < res.Listeners[j].Port })
	return res
}
