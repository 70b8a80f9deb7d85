// Package vmdns is the daemon's small authoritative DNS server for the .vm
// zone: "<name>.vm" answers the VM's guest address, so the endpoints 'vm
// ports' prints resolve once the host routes .vm to it (docs/dns.md). It
// answers only for .vm (anything else is REFUSED: it is not a resolver) and
// looks every name up when asked, so records follow create, delete and
// reconcile with nothing to keep in sync.
package vmdns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Zone is the domain banger answers for.
const Zone = "vm."

// TTL of the answers: short, a VM's address can change when it is recreated.
const TTL = 5

// Lookup returns the IPv4 address of the VM named name, if there is one.
type Lookup func(ctx context.Context, name string) (netip.Addr, bool)

// Server serves the .vm zone on UDP and TCP at one address.
type Server struct {
	Lookup Lookup

	mu      sync.Mutex
	servers []*dns.Server
}

// Handler answers one query (exported for tests and embedding).
func (s *Server) Handler() dns.Handler {
	return dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		_ = w.WriteMsg(s.answer(req))
	})
}

func (s *Server) answer(req *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		return m
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	if !dns.IsSubDomain(Zone, name) || q.Qclass != dns.ClassINET {
		m.Authoritative = false
		m.Rcode = dns.RcodeRefused
		return m
	}
	if name == Zone {
		if q.Qtype == dns.TypeSOA || q.Qtype == dns.TypeANY {
			m.Answer = append(m.Answer, s.soa())
		} else {
			m.Ns = append(m.Ns, s.soa())
		}
		return m
	}
	label := strings.TrimSuffix(name, "."+Zone)
	if strings.Contains(label, ".") {
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, s.soa())
		return m
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ip, ok := s.Lookup(ctx, label)
	if !ok {
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, s.soa())
		return m
	}
	switch q.Qtype {
	case dns.TypeA, dns.TypeANY:
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: TTL},
			A:   net.IP(ip.AsSlice()),
		})
	default: // the name exists, with no record of that type
		m.Ns = append(m.Ns, s.soa())
	}
	return m
}

func (s *Server) soa() dns.RR {
	return &dns.SOA{
		Hdr: dns.RR_Header{Name: Zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: TTL},
		Ns:  "ns.banger." + Zone, Mbox: "hostmaster.banger." + Zone,
		Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: TTL,
	}
}

// ListenAndServe serves addr ("127.0.0.1:42069") on UDP and TCP until
// Shutdown. It returns once both listeners are bound, or the bind error.
func (s *Server) ListenAndServe(addr string) error {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		pc.Close()
		return err
	}
	h := s.Handler()
	udp := &dns.Server{PacketConn: pc, Handler: h}
	tcp := &dns.Server{Listener: ln, Handler: h}
	s.mu.Lock()
	s.servers = append(s.servers, udp, tcp)
	s.mu.Unlock()
	for _, srv := range []*dns.Server{udp, tcp} {
		go func(srv *dns.Server) { _ = srv.ActivateAndServe() }(srv)
	}
	return nil
}

// Shutdown stops every listener.
func (s *Server) Shutdown() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, srv := range s.servers {
		if err := srv.Shutdown(); err != nil {
			errs = append(errs, err)
		}
	}
	s.servers = nil
	return errors.Join(errs...)
}

// HostResolvers are the host's nameservers a guest can use: IPv4, not
// loopback (a guest cannot reach the host's 127.0.0.53), at most three. With
// systemd-resolved they come from its upstream list, not its stub.
func HostResolvers() []string {
	for _, f := range []string{"/run/systemd/resolve/resolv.conf", "/etc/resolv.conf"} {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if out := parseResolvConf(string(data)); len(out) > 0 {
			return out
		}
	}
	return nil
}

func parseResolvConf(s string) []string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil || !a.Is4() || a.IsLoopback() || a.IsUnspecified() {
			continue
		}
		out = append(out, a.String())
		if len(out) == 3 {
			break
		}
	}
	return out
}
