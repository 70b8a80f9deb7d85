package vmdns

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func startServer(t *testing.T) string {
	t.Helper()
	vms := map[string]netip.Addr{"web": netip.MustParseAddr("172.30.0.2"), "db": netip.MustParseAddr("172.30.0.3")}
	s := &Server{Lookup: func(ctx context.Context, name string) (netip.Addr, bool) {
		ip, ok := vms[name]
		return ip, ok
	}}
	// A free port for both UDP and TCP.
	var addr string
	for i := 0; i < 20; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = ln.Addr().String()
		ln.Close()
		if err = s.ListenAndServe(addr); err == nil {
			t.Cleanup(func() { s.Shutdown() })
			return addr
		}
	}
	t.Fatal("no free port")
	return ""
}

func query(t *testing.T, addr, net, name string, qtype uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: net, Timeout: 2 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	var r *dns.Msg
	var err error
	for i := 0; i < 20; i++ { // the serve goroutines may not be accepting yet
		if r, _, err = c.Exchange(m, addr); err == nil {
			return r
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s %s: %v", net, name, err)
	return nil
}

func TestAnswers(t *testing.T) {
	addr := startServer(t)
	for _, proto := range []string{"udp", "tcp"} {
		r := query(t, addr, proto, "Web.VM.", dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || !r.Authoritative || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "172.30.0.2" {
			t.Fatalf("%s web.vm A: %v", proto, r)
		}
	}
	if r := query(t, addr, "udp", "db.vm.", dns.TypeAAAA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || len(r.Ns) != 1 {
		t.Fatalf("db.vm AAAA must be NODATA: %v", r)
	}
	for _, n := range []string{"nope.vm.", "a.web.vm."} {
		if r := query(t, addr, "udp", n, dns.TypeA); r.Rcode != dns.RcodeNameError {
			t.Fatalf("%s: %v", n, r)
		}
	}
	if r := query(t, addr, "udp", "example.com.", dns.TypeA); r.Rcode != dns.RcodeRefused || len(r.Answer) != 0 {
		t.Fatalf("outside .vm must be refused: %v", r)
	}
	if r := query(t, addr, "udp", "vm.", dns.TypeSOA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("vm. SOA: %v", r)
	}
}

func TestParseResolvConf(t *testing.T) {
	got := parseResolvConf("# generated\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 10.0.0.2\noptions edns0\nnameserver 0.0.0.0\nnameserver 1.1.1.1\nnameserver 8.8.8.8\nnameserver 9.9.9.9\n")
	if len(got) != 3 || got[0] != "10.0.0.2" || got[1] != "1.1.1.1" || got[2] != "8.8.8.8" {
		t.Fatalf("got %v", got)
	}
}
