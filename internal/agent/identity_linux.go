package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"

	"github.com/banger-dev/banger/internal/sysexec"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The identity op's system calls in the guest (identityHooks). The network
// goes through netlink: the tiny guest's busybox may have no ip applet worth
// the name, and an OCI image may have none at all.

func sethostname(name string) error { return unix.Sethostname([]byte(name)) }

func link(iface string) (netlink.Link, error) {
	l, err := netlink.LinkByName(iface)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", iface, err)
	}
	return l, nil
}

func linkDown(iface string) error {
	l, err := link(iface)
	if err != nil {
		return err
	}
	return netlink.LinkSetDown(l)
}

func linkUp(iface string) error {
	l, err := link(iface)
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

func setMAC(iface string, mac net.HardwareAddr) error {
	l, err := link(iface)
	if err != nil {
		return err
	}
	return netlink.LinkSetHardwareAddr(l, mac)
}

// addrsV4 lists iface's IPv4 addresses (a dump interrupted by a concurrent
// change is asked again).
func addrsV4(iface string) ([]netip.Prefix, error) {
	l, err := link(iface)
	if err != nil {
		return nil, err
	}
	var as []netlink.Addr
	for range 5 {
		if as, err = netlink.AddrList(l, netlink.FAMILY_V4); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, a := range as {
		if a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		ones, bits := a.Mask.Size()
		if !ok || bits != 32 {
			continue
		}
		out = append(out, netip.PrefixFrom(ip, ones))
	}
	return out, nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}
}

// addrDel removes p from iface; an address already gone (a secondary
// removed with its primary) is no error.
func addrDel(iface string, p netip.Prefix) error {
	l, err := link(iface)
	if err != nil {
		return err
	}
	if err := netlink.AddrDel(l, &netlink.Addr{IPNet: ipNet(p)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return err
	}
	return nil
}

func addrAdd(iface string, p netip.Prefix) error {
	l, err := link(iface)
	if err != nil {
		return err
	}
	return netlink.AddrReplace(l, &netlink.Addr{IPNet: ipNet(p)})
}

func defaultRoute(iface string, gw netip.Addr) error {
	l, err := link(iface)
	if err != nil {
		return err
	}
	return netlink.RouteReplace(&netlink.Route{
		LinkIndex: l.Attrs().Index,
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Gw:        gw.AsSlice(),
	})
}

// announce broadcasts one gratuitous ARP request for ip at mac on iface
// ("who has ip? tell ip at mac", as arping -U sends): a neighbour with an
// entry for ip updates it.
func announce(iface string, mac net.HardwareAddr, ip netip.Addr) error {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return err
	}
	proto := htons(unix.ETH_P_ARP)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	a := ip.As4()
	pkt := make([]byte, 28)
	binary.BigEndian.PutUint16(pkt[0:], 1)      // hardware: Ethernet
	binary.BigEndian.PutUint16(pkt[2:], 0x0800) // protocol: IPv4
	pkt[4], pkt[5] = 6, 4
	binary.BigEndian.PutUint16(pkt[6:], 1) // request
	copy(pkt[8:14], mac)
	copy(pkt[14:18], a[:])
	copy(pkt[24:28], a[:]) // target hardware address stays zero
	to := &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index, Halen: 6, Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
	return unix.Sendto(fd, pkt, 0, to)
}

// htons is v in network byte order, as AF_PACKET wants its protocol.
func htons(v uint16) uint16 {
	return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, v))
}

func signalPID(pid int, sig syscall.Signal) error { return unix.Kill(pid, sig) }

// startDaemon starts exe with argv in a session of its own, its input
// /dev/null, its output appended to logPath, and reaps it when it exits.
func startDaemon(exe string, argv []string, logPath string) error {
	c := sysexec.Cmd{Path: exe, Env: []string{"PATH=" + strings.Join(toolPath, ":")}, SysProcAttr: &syscall.SysProcAttr{Setsid: true}}
	if len(argv) > 0 {
		c.Argv0, c.Args = argv[0], argv[1:]
	}
	if logPath != "" {
		if f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err == nil {
			defer f.Close()
			c.Stdout, c.Stderr = f, f
		}
	}
	p, err := sysexec.Start(c)
	if err != nil {
		return err
	}
	go p.Wait()
	return nil
}
