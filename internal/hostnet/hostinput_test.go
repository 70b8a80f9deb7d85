package hostnet

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// hostListen listens on addr (tcp4 or udp4) in ns; TCP connections get
// "hello", UDP datagrams are echoed.
func hostListen(t *testing.T, ns, network, addr string) {
	t.Helper()
	var closer io.Closer
	err := inNetNS(t, ns, func() error {
		if network == "udp4" {
			c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
			if err != nil {
				return err
			}
			closer = c
			go func() {
				buf := make([]byte, 512)
				for {
					k, from, err := c.ReadFromUDP(buf)
					if err != nil {
						return
					}
					c.WriteToUDP(buf[:k], from)
				}
			}()
			return nil
		}
		ln, err := net.Listen("tcp4", addr)
		if err != nil {
			return err
		}
		closer = ln
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				io.WriteString(c, "hello")
				c.Close()
			}
		}()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closer.Close() })
}

const probeTimeout = 400 * time.Millisecond

// reach reports whether a TCP connect (and read of the greeting) or a UDP
// round trip from ns to addr succeeds.
func reach(t *testing.T, ns, network, addr string) bool {
	t.Helper()
	err := inNetNS(t, ns, func() error {
		c, err := net.DialTimeout(network, addr, probeTimeout)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(probeTimeout))
		if network == "udp4" {
			if _, err := c.Write([]byte("ping")); err != nil {
				return err
			}
		}
		b := make([]byte, 16)
		_, err = c.Read(b)
		return err
	})
	return err == nil
}

// TestRestrictHostInput: a guest (veth, host side bgtap-a on br-t, pinned)
// reaches on the host only the allowed ports on the gateway address. Not
// another port on the gateway, not the allowed port on another host
// address, not anything through a banger tap that is off the bridge; while
// connections the host opens to the guest still work.
func TestRestrictHostInput(t *testing.T) {
	n, host := setup(t)
	g, loose := newNS(t), newNS(t)
	if err := n.EnsureBridge("br-t", gw); err != nil {
		t.Fatal(err)
	}
	if err := n.IsolateBridge("br-t"); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "-n", host, "link", "add", "bgtap-a", "type", "veth", "peer", "name", "eth0", "netns", g)
	run(t, "ip", "-n", host, "link", "set", "bgtap-a", "master", "br-t", "up")
	run(t, "ip", "-n", g, "link", "set", "eth0", "address", macA.String())
	run(t, "ip", "-n", g, "addr", "add", "172.30.0.2/24", "dev", "eth0")
	run(t, "ip", "-n", g, "link", "set", "eth0", "up")
	run(t, "ip", "-n", g, "route", "add", "default", "via", "172.30.0.1")
	if err := n.PinTap("bgtap-a", macA, guestA); err != nil {
		t.Fatal(err)
	}
	// Another host address, reachable from the guest by routing.
	run(t, "ip", "-n", host, "addr", "add", "198.51.100.1/32", "dev", "lo")
	// A banger tap that is on no bridge (say its bridge was deleted) with a
	// host address behind it.
	run(t, "ip", "-n", host, "link", "add", "bgtap-x", "type", "veth", "peer", "name", "eth0", "netns", loose)
	run(t, "ip", "-n", host, "addr", "add", "192.0.2.1/24", "dev", "bgtap-x")
	run(t, "ip", "-n", host, "link", "set", "bgtap-x", "up")
	run(t, "ip", "-n", loose, "addr", "add", "192.0.2.2/24", "dev", "eth0")
	run(t, "ip", "-n", loose, "link", "set", "eth0", "up")

	hostListen(t, host, "tcp4", "172.30.0.1:5300")
	hostListen(t, host, "tcp4", "172.30.0.1:2222")
	hostListen(t, host, "tcp4", "198.51.100.1:5300")
	hostListen(t, host, "tcp4", "192.0.2.1:5300")
	hostListen(t, host, "udp4", "172.30.0.1:5300")
	hostListen(t, host, "udp4", "172.30.0.1:5301")
	hostListen(t, g, "tcp4", "172.30.0.2:22")

	type probe struct{ ns, network, addr string }
	gwTCP := probe{g, "tcp4", "172.30.0.1:5300"}
	gwOther := probe{g, "tcp4", "172.30.0.1:2222"}
	otherAddr := probe{g, "tcp4", "198.51.100.1:5300"}
	gwUDP := probe{g, "udp4", "172.30.0.1:5300"}
	gwUDPOther := probe{g, "udp4", "172.30.0.1:5301"}
	viaLoose := probe{loose, "tcp4", "192.0.2.1:5300"}
	toGuest := probe{host, "tcp4", "172.30.0.2:22"}
	check := func(when string, want map[probe]bool) {
		t.Helper()
		for p, ok := range want {
			if got := reach(t, p.ns, p.network, p.addr); got != ok {
				t.Errorf("%s: %s %s reachable = %v, want %v", when, p.network, p.addr, got, ok)
			}
		}
	}

	// Before: the guest reaches every host service (the issue).
	check("before", map[probe]bool{gwTCP: true, gwOther: true, otherAddr: true, gwUDP: true, gwUDPOther: true, viaLoose: true, toGuest: true})

	for i := 0; i < 2; i++ {
		if err := n.RestrictHostInput("br-t", gw.Addr(), []uint16{5300}, []uint16{5300, 5300}); err != nil {
			t.Fatal(err)
		}
	}
	check("restricted", map[probe]bool{gwTCP: true, gwOther: false, otherAddr: false, gwUDP: true, gwUDPOther: false, viaLoose: false, toGuest: true})
	rules := inputRules(t, host)
	want := []string{
		"banger host-input bridge=br-t established",
		"banger host-input bridge=br-t gw=172.30.0.1 tcp=5300",
		"banger host-input bridge=br-t gw=172.30.0.1 udp=5300",
		"banger host-input bridge=br-t drop",
		"banger host-input taps=bgtap drop",
	}
	if got := ruleComments(rules); !slices.Equal(got, want) {
		t.Fatalf("input chain:\n got %q\nwant %q", got, want)
	}

	// Same again: nothing is rewritten (same handles).
	if err := n.RestrictHostInput("br-t", gw.Addr(), []uint16{5300}, []uint16{5300}); err != nil {
		t.Fatal(err)
	}
	if again := inputRules(t, host); fmt.Sprint(again) != fmt.Sprint(rules) {
		t.Errorf("idempotent call rewrote the rules:\n%v\n%v", rules, again)
	}

	// Another port list replaces the old one.
	if err := n.RestrictHostInput("br-t", gw.Addr(), []uint16{2222}, nil); err != nil {
		t.Fatal(err)
	}
	want = []string{
		"banger host-input taps=bgtap drop",
		"banger host-input bridge=br-t established",
		"banger host-input bridge=br-t gw=172.30.0.1 tcp=2222",
		"banger host-input bridge=br-t drop",
	}
	if got := ruleComments(inputRules(t, host)); !slices.Equal(got, want) {
		t.Fatalf("input chain after replace:\n got %q\nwant %q", got, want)
	}
	check("replaced", map[probe]bool{gwTCP: false, gwOther: true, gwUDP: false, toGuest: true})
	t.Logf("%s", run(t, "ip", "netns", "exec", host, "nft", "list", "chain", "inet", NATTable, InputChain))

	for _, bad := range []struct {
		br    string
		gw    netip.Addr
		tcp   []uint16
		match string
	}{
		{"", gw.Addr(), nil, "bad interface name"},
		{"br-t", netip.Addr{}, nil, "gateway"},
		{"br-t", netip.MustParseAddr("2001:db8::1"), nil, "gateway"},
		{"br-t", gw.Addr(), []uint16{0}, "port 0"},
	} {
		if err := n.RestrictHostInput(bad.br, bad.gw, bad.tcp, nil); err == nil || !strings.Contains(err.Error(), bad.match) {
			t.Errorf("RestrictHostInput(%q, %v, %v) = %v, want %q", bad.br, bad.gw, bad.tcp, err, bad.match)
		}
	}
}

func inputRules(t *testing.T, ns string) []nftRule {
	t.Helper()
	var out []nftRule
	for _, r := range nftRules(t, ns) {
		if r.Family == "inet" && r.Table == NATTable && r.Chain == InputChain {
			out = append(out, r)
		}
	}
	return out
}

func ruleComments(rs []nftRule) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Comment)
	}
	return out
}
