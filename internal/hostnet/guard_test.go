package hostnet

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var (
	macA = net.HardwareAddr{0x02, 0xfc, 172, 30, 0, 2}
	macB = net.HardwareAddr{0x02, 0xfc, 172, 30, 0, 3}
	macC = net.HardwareAddr{0x02, 0xfc, 172, 30, 0, 4}
	macX = net.HardwareAddr{0x02, 0xfc, 0xde, 0xad, 0xbe, 0xef}
	ipX  = netip.MustParseAddr("172.30.0.99")
)

// openTap attaches to a tap in ns as a VMM would (IFF_TAP|IFF_NO_PI, no
// vnet header), non-blocking so reads honour deadlines.
func openTap(t *testing.T, ns, name string) *os.File {
	t.Helper()
	var f *os.File
	err := inNetNS(t, ns, func() error {
		// /dev/net/tun binds to the opener's namespace.
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(fd)
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF %s: %w", name, err)
		}
		f = os.NewFile(uintptr(fd), "tap:"+name)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func ether(dst, src net.HardwareAddr, typ uint16, payload []byte) []byte {
	b := append(append(slices.Clone(dst), src...), byte(typ>>8), byte(typ))
	return append(b, payload...)
}

// ipv4UDP is an IPv4/UDP packet (valid header checksum) carrying payload.
func ipv4UDP(src, dst netip.Addr, payload []byte) []byte {
	h := make([]byte, 20+8)
	h[0], h[8], h[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(h[2:], uint16(len(h)+len(payload)))
	s, d := src.As4(), dst.As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(h[10:], ^uint16(sum))
	binary.BigEndian.PutUint16(h[20:], 4000)
	binary.BigEndian.PutUint16(h[22:], 4000)
	binary.BigEndian.PutUint16(h[24:], uint16(8+len(payload)))
	return append(h, payload...)
}

// ipv6 is an IPv6 packet fe80::2 → ff02::1 with no next header.
func ipv6(payload []byte) []byte {
	h := make([]byte, 40)
	h[0], h[6], h[7] = 0x60, 59, 1
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	src, dst := netip.MustParseAddr("fe80::2").As16(), netip.MustParseAddr("ff02::1").As16()
	copy(h[8:], src[:])
	copy(h[24:], dst[:])
	return append(h, payload...)
}

// arp is an Ethernet/IPv4 ARP request; extra is carried as frame padding.
func arp(sha net.HardwareAddr, spa, tpa netip.Addr, extra []byte) []byte {
	b := []byte{0, 1, 8, 0, 6, 4, 0, 1}
	s, d := spa.As4(), tpa.As4()
	b = append(append(b, sha...), s[:]...)
	b = append(append(b, make([]byte, 6)...), d[:]...)
	return append(b, extra...)
}

var broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// sniff collects, from a tap, the markers (among those given) found in the
// frames that arrive.
type sniff struct {
	mu   sync.Mutex
	seen map[string]int
}

func startSniff(t *testing.T, f *os.File, markers []string) *sniff {
	s := &sniff{seen: map[string]int{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			f.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			k, err := f.Read(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			if err != nil {
				return // closed
			}
			s.mu.Lock()
			for _, m := range markers {
				if bytes.Contains(buf[:k], []byte(m)) {
					s.seen[m]++
				}
			}
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() { f.Close(); <-done })
	return s
}

func (s *sniff) has(m string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[m] > 0
}

// waitFor sends frame from src every 20ms until marker shows up at s.
func waitFor(t *testing.T, s *sniff, src *os.File, frame []byte, marker string, within time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if _, err := src.Write(frame); err != nil {
			t.Fatalf("write %s: %v", marker, err)
		}
		for i := 0; i < 4; i++ {
			if s.has(marker) {
				return true
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return false
}

func guardSetup(t *testing.T) (*Net, string) {
	t.Helper()
	n, ns := setup(t)
	if err := n.EnsureBridge("br-t", gw); err != nil {
		t.Fatal(err)
	}
	if err := n.IsolateBridge("br-t"); err != nil {
		t.Fatal(err)
	}
	for _, tap := range []string{"bgtap-a", "bgtap-b", "bgtap-c"} {
		if err := n.CreateTap(tap, "br-t", 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	return n, ns
}

// TestPinTapBlocksSpoofing writes raw Ethernet frames into pinned tap A, as
// a hostile guest would, and watches what comes out of tap B on the same
// bridge. Only frames with A's own MAC and IPv4 address (ARP included) get
// across; a spoofed IP source, a spoofed MAC, spoofed ARP, IPv6, a VLAN tag,
// and anything from the unpinned tap C do not.
func TestPinTapBlocksSpoofing(t *testing.T) {
	n, ns := guardSetup(t)
	for i := 0; i < 2; i++ { // idempotent
		if err := n.PinTap("bgtap-a", macA, guestA); err != nil {
			t.Fatal(err)
		}
		if err := n.PinTap("bgtap-b", macB, guestB); err != nil {
			t.Fatal(err)
		}
	}
	a, b, c := openTap(t, ns, "bgtap-a"), openTap(t, ns, "bgtap-b"), openTap(t, ns, "bgtap-c")

	mk := func(m string) []byte { return []byte("marker:" + m + ":end") }
	ip := func(src, dst netip.Addr, m string) []byte { return ipv4UDP(src, dst, mk(m)) }
	good := map[string][]byte{
		"genuine-ip":  ether(macB, macA, unix.ETH_P_IP, ip(guestA, guestB, "genuine-ip")),
		"genuine-arp": ether(broadcast, macA, unix.ETH_P_ARP, arp(macA, guestA, guestB, mk("genuine-arp"))),
	}
	vlan := append([]byte{0, 5, 0x08, 0x00}, ip(guestA, guestB, "vlan")...)
	bad := map[string][]byte{
		// From A's port, broadcast so that without the guard B would see them
		// whatever the bridge has learnt:
		"spoof-ip":       ether(broadcast, macA, unix.ETH_P_IP, ip(ipX, guestB, "spoof-ip")),
		"spoof-ip-as-b":  ether(broadcast, macA, unix.ETH_P_IP, ip(guestB, guestB, "spoof-ip-as-b")),
		"spoof-zero-src": ether(broadcast, macA, unix.ETH_P_IP, ip(netip.IPv4Unspecified(), guestB, "spoof-zero-src")),
		"spoof-mac":      ether(broadcast, macX, unix.ETH_P_IP, ip(guestA, guestB, "spoof-mac")),
		"spoof-as-b":     ether(broadcast, macB, unix.ETH_P_IP, ip(guestB, guestA, "spoof-as-b")),
		"arp-spoof-spa":  ether(broadcast, macA, unix.ETH_P_ARP, arp(macA, ipX, guestB, mk("arp-spoof-spa"))),
		"arp-spoof-sha":  ether(broadcast, macA, unix.ETH_P_ARP, arp(macX, guestA, guestB, mk("arp-spoof-sha"))),
		"arp-spoof-mac":  ether(broadcast, macX, unix.ETH_P_ARP, arp(macA, guestA, guestB, mk("arp-spoof-mac"))),
		"ipv6":           ether(broadcast, macA, unix.ETH_P_IPV6, ipv6(mk("ipv6"))),
		"vlan":           ether(broadcast, macA, unix.ETH_P_8021Q, vlan),
		"other-type":     ether(broadcast, macA, 0x88b5, mk("other-type")),
	}
	// From C's port, which is not pinned: its own (unpinned) identity.
	fromC := map[string][]byte{
		"unpinned-ip":  ether(broadcast, macC, unix.ETH_P_IP, ip(netip.MustParseAddr("172.30.0.4"), guestB, "unpinned-ip")),
		"unpinned-arp": ether(broadcast, macC, unix.ETH_P_ARP, arp(macC, netip.MustParseAddr("172.30.0.4"), guestB, mk("unpinned-arp"))),
	}
	var markers []string
	for _, m := range []map[string][]byte{good, bad, fromC} {
		for k := range m {
			markers = append(markers, "marker:"+k+":end")
		}
	}
	markers = append(markers, "marker:genuine-final:end", "marker:repinned:end", "marker:after-unpin:end")
	sb := startSniff(t, b, markers)

	// The ports need a moment to start forwarding once a VMM (we) attach.
	if !waitFor(t, sb, a, good["genuine-ip"], "marker:genuine-ip:end", 5*time.Second) {
		t.Fatalf("A's genuine IPv4 frame never reached B\n%s", guardRuleset(t, ns))
	}
	if !waitFor(t, sb, a, good["genuine-arp"], "marker:genuine-arp:end", 2*time.Second) {
		t.Fatal("A's genuine ARP request never reached B")
	}
	for _, f := range bad {
		if _, err := a.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range fromC {
		if _, err := c.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	// A genuine frame sent after them all, then a grace period: whatever
	// was going to come through has. (Broadcast, so that it reaches B even
	// if a spoofed frame had taught the bridge that B's MAC is on A's port.)
	final := ether(broadcast, macA, unix.ETH_P_IP, ip(guestA, guestB, "genuine-final"))
	if !waitFor(t, sb, a, final, "marker:genuine-final:end", 2*time.Second) {
		t.Fatal("final genuine frame never arrived")
	}
	time.Sleep(100 * time.Millisecond)
	for _, m := range []map[string][]byte{bad, fromC} {
		for k := range m {
			if sb.has("marker:" + k + ":end") {
				t.Errorf("spoofed frame %q got through to B", k)
			}
		}
	}

	pins, err := n.TapPins()
	if err != nil {
		t.Fatal(err)
	}
	want := []TapPin{{"bgtap-a", macA, guestA}, {"bgtap-b", macB, guestB}}
	if fmt.Sprint(pins) != fmt.Sprint(want) {
		t.Errorf("TapPins = %v, want %v", pins, want)
	}

	// Re-pinning A to another identity replaces the pin: the new one works,
	// the old one is refused.
	newIP := netip.MustParseAddr("172.30.0.20")
	if err := n.PinTap("bgtap-a", macX, newIP); err != nil {
		t.Fatal(err)
	}
	if !waitFor(t, sb, a, ether(broadcast, macX, unix.ETH_P_IP, ip(newIP, guestB, "repinned")), "marker:repinned:end", 2*time.Second) {
		t.Error("frame with A's new identity did not get through")
	}
	if pins, _ := n.TapPins(); len(pins) != 2 || fmt.Sprint(pins[0]) != fmt.Sprint(TapPin{"bgtap-a", macX, newIP}) {
		t.Errorf("after re-pin: %v", pins)
	}

	// Unpinned (DeleteTap unpins too): A sends nothing at all.
	for i := 0; i < 2; i++ {
		if err := n.UnpinTap("bgtap-a"); err != nil {
			t.Fatal(err)
		}
	}
	if waitFor(t, sb, a, ether(broadcast, macX, unix.ETH_P_IP, ip(newIP, guestB, "after-unpin")), "marker:after-unpin:end", 500*time.Millisecond) {
		t.Error("frame from an unpinned tap got through")
	}
	if err := n.DeleteTap("bgtap-b"); err != nil {
		t.Fatal(err)
	}
	if pins, _ := n.TapPins(); len(pins) != 0 {
		t.Errorf("pins left after UnpinTap(a) and DeleteTap(b): %v", pins)
	}
	if err := n.UnpinTap("bgtap-nope"); err != nil {
		t.Errorf("UnpinTap of an unknown tap: %v", err)
	}
	t.Logf("ruleset:\n%s", guardRuleset(t, ns))
}

// TestPinTapRefusesSharedIdentity: two live taps never share a MAC or an
// address (each could then send as the other), while the pin of a tap that
// no longer exists is stale and gives way.
func TestPinTapRefusesSharedIdentity(t *testing.T) {
	n, _ := guardSetup(t)
	if err := n.PinTap("bgtap-a", macA, guestA); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		mac net.HardwareAddr
		ip  netip.Addr
	}{{macB, guestA}, {macA, guestB}} {
		if err := n.PinTap("bgtap-b", c.mac, c.ip); err == nil || !strings.Contains(err.Error(), "already pinned to tap bgtap-a") {
			t.Errorf("PinTap(bgtap-b, %s, %s) = %v, want refused", c.mac, c.ip, err)
		}
	}
	ipC := netip.MustParseAddr("172.30.0.4")
	if err := n.PinTap("bgtap-gone", macC, ipC); err != nil {
		t.Fatal(err)
	}
	if err := n.PinTap("bgtap-b", macC, ipC); err != nil {
		t.Fatalf("stale pin of a missing tap not replaced: %v", err)
	}
	pins, err := n.TapPins()
	if err != nil {
		t.Fatal(err)
	}
	if want := []TapPin{{"bgtap-a", macA, guestA}, {"bgtap-b", macC, ipC}}; fmt.Sprint(pins) != fmt.Sprint(want) {
		t.Errorf("TapPins = %v, want %v", pins, want)
	}
}

func guardRuleset(t *testing.T, ns string) string {
	return run(t, "ip", "netns", "exec", ns, "nft", "list", "table", "bridge", GuardTable)
}

func TestPinTapRefusesBadInput(t *testing.T) {
	n, ns := setup(t)
	cases := []struct {
		tap string
		mac net.HardwareAddr
		ip  netip.Addr
	}{
		{"", macA, guestA},
		{"bgtap-0123456789", macA, guestA},
		{"bg/tap", macA, guestA},
		{"tap-a", macA, guestA}, // not a banger tap name: the guard would not cover it
		{"bgtap-a", nil, guestA},
		{"bgtap-a", net.HardwareAddr{1, 2, 3, 4, 5, 6}, guestA}, // multicast
		{"bgtap-a", make(net.HardwareAddr, 6), guestA},
		{"bgtap-a", net.HardwareAddr{2, 0, 0, 0, 0, 0, 0, 1}, guestA},
		{"bgtap-a", macA, netip.Addr{}},
		{"bgtap-a", macA, netip.IPv4Unspecified()},
		{"bgtap-a", macA, netip.MustParseAddr("255.255.255.255")},
		{"bgtap-a", macA, netip.MustParseAddr("2001:db8::2")},
	}
	for _, c := range cases {
		if err := n.PinTap(c.tap, c.mac, c.ip); err == nil {
			t.Errorf("PinTap(%q, %v, %v) succeeded", c.tap, c.mac, c.ip)
		}
	}
	if out := run(t, "ip", "netns", "exec", ns, "nft", "list", "ruleset"); strings.TrimSpace(out) != "" {
		t.Errorf("failed calls left a ruleset:\n%s", out)
	}
}

// TestPinTapStopsNATSpoofing is the attack from the issue: guest B (no NAT)
// sends as guest A (NAT) to get out. Veths stand in for the taps (host side
// named bgtap-*, guest side with the VM's MAC), as in TestNATTraffic. B
// carries A's address as a second address and knows the gateway's MAC, so
// its UDP datagram leaves B with source A; before the port guard it was
// masqueraded and reached the uplink.
func TestPinTapStopsNATSpoofing(t *testing.T) {
	n, host := setup(t)
	up, ga, gb := newNS(t), newNS(t), newNS(t)
	if err := n.EnsureBridge("br-t", gw); err != nil {
		t.Fatal(err)
	}
	for _, g := range []struct {
		ns, tap, addr string
		mac           net.HardwareAddr
		ip            netip.Addr
	}{{ga, "bgtap-a", "172.30.0.2/24", macA, guestA}, {gb, "bgtap-b", "172.30.0.3/24", macB, guestB}} {
		run(t, "ip", "-n", host, "link", "add", g.tap, "type", "veth", "peer", "name", "eth0", "netns", g.ns)
		run(t, "ip", "-n", host, "link", "set", g.tap, "master", "br-t", "up")
		run(t, "ip", "-n", g.ns, "link", "set", "eth0", "address", g.mac.String())
		run(t, "ip", "-n", g.ns, "addr", "add", g.addr, "dev", "eth0")
		run(t, "ip", "-n", g.ns, "link", "set", "eth0", "up")
		run(t, "ip", "-n", g.ns, "route", "add", "default", "via", "172.30.0.1")
		run(t, "ip", "-n", g.ns, "neigh", "replace", "172.30.0.1", "lladdr", bridgeMAC("br-t").String(), "dev", "eth0", "nud", "permanent")
		if err := n.PinTap(g.tap, g.mac, g.ip); err != nil {
			t.Fatal(err)
		}
	}
	run(t, "ip", "-n", host, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", up)
	run(t, "ip", "-n", host, "addr", "add", "198.51.100.1/24", "dev", "up0")
	run(t, "ip", "-n", host, "link", "set", "up0", "up")
	run(t, "ip", "-n", up, "addr", "add", "198.51.100.2/24", "dev", "eth0")
	run(t, "ip", "-n", up, "link", "set", "eth0", "up")
	if err := n.EnableForwarding(); err != nil {
		t.Fatal(err)
	}
	if err := n.IsolateBridge("br-t"); err != nil {
		t.Fatal(err)
	}
	if err := n.AddNAT(guestA, "bgtap-a"); err != nil {
		t.Fatal(err)
	}
	// B also claims A's address.
	run(t, "ip", "-n", gb, "addr", "add", "172.30.0.2/32", "dev", "eth0")

	got := udpSink(t, up, "198.51.100.2:5353")
	send := func(ns, from, msg string) {
		t.Helper()
		if err := inNetNS(t, ns, func() error {
			c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(from+":0")), net.UDPAddrFromAddrPort(netip.MustParseAddrPort("198.51.100.2:5353")))
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte(msg))
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	// A itself gets out (NAT works through the guard), then B tries with
	// A's address and with its own.
	deadline := time.Now().Add(3 * time.Second)
	for !got.has("from-A") && time.Now().Before(deadline) {
		send(ga, "172.30.0.2", "from-A")
		time.Sleep(50 * time.Millisecond)
	}
	if !got.has("from-A") {
		t.Fatal("A (NAT) did not get out")
	}
	for i := 0; i < 5; i++ {
		send(gb, "172.30.0.2", "from-B-as-A")
		send(gb, "172.30.0.3", "from-B-own")
		time.Sleep(20 * time.Millisecond)
	}
	send(ga, "172.30.0.2", "from-A-last")
	deadline = time.Now().Add(2 * time.Second)
	for !got.has("from-A-last") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	for _, m := range []string{"from-B-as-A", "from-B-own"} {
		if got.has(m) {
			t.Errorf("guest B without NAT got out: uplink received %q", m)
		}
	}
}

// udpSink records the datagrams received on addr in ns.
func udpSink(t *testing.T, ns, addr string) *sniff {
	t.Helper()
	var c *net.UDPConn
	if err := inNetNS(t, ns, func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s := &sniff{seen: map[string]int{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			k, _, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.seen[string(buf[:k])]++
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return s
}
