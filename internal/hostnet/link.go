package hostnet

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// EnsureBridge makes sure a bridge called name exists, carries the gateway
// address gw (e.g. 172.30.0.1/24) and is up. It is idempotent. A new bridge
// gets a fixed MAC derived from its name, so the gateway's MAC that guests
// cache does not change as taps come and go. An existing address with gw's
// IP but another prefix length is replaced; other addresses are left alone.
// A non-bridge link called name is an error.
func (n *Net) EnsureBridge(name string, gw netip.Prefix) error {
	if err := checkGateway(gw); err != nil {
		return fmt.Errorf("hostnet: bridge %s: %w", name, err)
	}
	link, err := n.h.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: bridgeMAC(name)}}
		// EEXIST: created concurrently; the checks below still apply.
		if err := n.h.LinkAdd(br); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("hostnet: create bridge %s: %w", name, err)
		}
		if link, err = n.h.LinkByName(name); err != nil {
			return fmt.Errorf("hostnet: bridge %s: %w", name, err)
		}
		if link.Type() != "bridge" {
			return fmt.Errorf("hostnet: %s exists and is a %s, not a bridge", name, link.Type())
		}
	case err != nil:
		return fmt.Errorf("hostnet: bridge %s: %w", name, err)
	case link.Type() != "bridge":
		return fmt.Errorf("hostnet: %s exists and is a %s, not a bridge", name, link.Type())
	}

	addrs, err := n.h.AddrList(link, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("hostnet: bridge %s: list addresses: %w", name, err)
	}
	have := false
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if !ok || p.Addr() != gw.Addr() {
			continue
		}
		if p.Bits() == gw.Bits() {
			have = true
			continue
		}
		// EADDRNOTAVAIL: a concurrent EnsureBridge removed it first.
		if err := n.h.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("hostnet: bridge %s: remove %s: %w", name, p, err)
		}
	}
	if !have {
		addr := &netlink.Addr{IPNet: &net.IPNet{
			IP:   gw.Addr().AsSlice(),
			Mask: net.CIDRMask(gw.Bits(), 32),
		}}
		// EEXIST: a concurrent EnsureBridge added it since we looked; fine
		// if what is there now is exactly gw.
		if err := n.h.AddrAdd(link, addr); err != nil && !(errors.Is(err, unix.EEXIST) && n.hasAddr(link, gw)) {
			return fmt.Errorf("hostnet: bridge %s: add %s: %w", name, gw, err)
		}
	}
	if err := n.h.LinkSetUp(link); err != nil {
		return fmt.Errorf("hostnet: bridge %s: set up: %w", name, err)
	}
	return nil
}

// hasAddr reports whether link carries exactly the address p.
func (n *Net) hasAddr(link netlink.Link, p netip.Prefix) bool {
	addrs, err := n.h.AddrList(link, unix.AF_INET)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if q, ok := prefixOf(a.IPNet); ok && q == p {
			return true
		}
	}
	return false
}

func checkGateway(gw netip.Prefix) error {
	if !gw.IsValid() || !gw.Addr().Is4() {
		return fmt.Errorf("gateway %s is not an IPv4 prefix", gw)
	}
	if gw.Bits() < 1 || gw.Bits() > 30 {
		return fmt.Errorf("gateway %s: prefix length must be 1..30", gw)
	}
	a := gw.Addr().As4()
	net4 := gw.Masked().Addr().As4()
	bcast := net4
	hostBits := 32 - gw.Bits()
	for i := 3; i >= 0 && hostBits > 0; i-- {
		k := min(hostBits, 8)
		bcast[i] |= byte(1<<k - 1)
		hostBits -= k
	}
	if a == net4 || a == bcast {
		return fmt.Errorf("gateway %s is the network or broadcast address", gw)
	}
	return nil
}

// bridgeMAC is a locally administered unicast MAC derived from the name.
func bridgeMAC(name string) net.HardwareAddr {
	sum := sha256.Sum256([]byte("banger-bridge:" + name))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&^0x01 | 0x02
	return mac
}

func prefixOf(ipn *net.IPNet) (netip.Prefix, bool) {
	if ipn == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(ipn.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := ipn.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// CreateTap creates the persistent tap device name, owned by ownerUID and
// ownerGID so that an unprivileged VMM in the same namespace can attach to it
// (TUNSETIFF), enslaves it to bridge and sets it up. The kernel lets a
// process without CAP_NET_ADMIN attach only if its effective uid is ownerUID
// and ownerGID is among its groups.
//
// If a tap called name already exists it is accepted when it has the same
// owner and group and is enslaved to bridge (or to nothing yet, as after an
// interrupted CreateTap, in which case it is enslaved now). Any other link
// called name is an error; it is never taken over or changed.
func (n *Net) CreateTap(name, bridge string, ownerUID, ownerGID int) error {
	if ownerUID < 0 || ownerGID < 0 || ownerUID > 1<<32-2 || ownerGID > 1<<32-2 {
		return fmt.Errorf("hostnet: tap %s: invalid owner %d:%d", name, ownerUID, ownerGID)
	}
	if name == "" || len(name) >= unix.IFNAMSIZ {
		return fmt.Errorf("hostnet: tap name %q must be 1..%d bytes", name, unix.IFNAMSIZ-1)
	}
	br, err := n.h.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("hostnet: tap %s: bridge %s: %w", name, bridge, err)
	}
	if br.Type() != "bridge" {
		return fmt.Errorf("hostnet: tap %s: %s is a %s, not a bridge", name, bridge, br.Type())
	}

	link, created, err := n.ensureTap(name, br, ownerUID, ownerGID)
	if err != nil {
		return err
	}

	fail := func(err error) error {
		if created {
			n.h.LinkDel(link) // roll back what this call created
		}
		return fmt.Errorf("hostnet: tap %s: %w", name, err)
	}
	if link.Attrs().MasterIndex != br.Attrs().Index {
		if err := n.h.LinkSetMasterByIndex(link, br.Attrs().Index); err != nil {
			return fail(fmt.Errorf("attach to %s: %w", bridge, err))
		}
	}
	if err := n.h.LinkSetUp(link); err != nil {
		return fail(fmt.Errorf("set up: %w", err))
	}
	return nil
}

// tapSettle bounds how long CreateTap waits for a tap that a concurrent
// CreateTap is creating right now to become persistent.
const tapSettle = 2 * time.Second

// ensureTap finds or creates the tap for CreateTap. created says whether
// this call created it. A concurrent creator shows up as TUNSETIFF failing
// with EBUSY (IFF_TUN_EXCL) or as a tap that is not persistent yet; both are
// waited out for up to tapSettle, then the tap is checked like any existing
// one.
func (n *Net) ensureTap(name string, br netlink.Link, ownerUID, ownerGID int) (netlink.Link, bool, error) {
	deadline := time.Now().Add(tapSettle)
	for {
		link, err := n.h.LinkByName(name)
		var notFound netlink.LinkNotFoundError
		switch {
		case errors.As(err, &notFound):
			err := n.inNS(func() error { return makeTap(name, ownerUID, ownerGID) })
			if errors.Is(err, unix.EBUSY) && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
				continue // created concurrently since we looked
			}
			if err != nil {
				return nil, false, fmt.Errorf("hostnet: create tap %s: %w", name, err)
			}
			if link, err = n.h.LinkByName(name); err != nil {
				return nil, false, fmt.Errorf("hostnet: tap %s: %w", name, err)
			}
			return link, true, nil
		case err != nil:
			return nil, false, fmt.Errorf("hostnet: tap %s: %w", name, err)
		}
		tap, ok := link.(*netlink.Tuntap)
		if !ok || tap.Mode != netlink.TUNTAP_MODE_TAP {
			return nil, false, fmt.Errorf("hostnet: %s exists and is a %s, not a tap", name, linkKind(link))
		}
		if tap.NonPersist {
			if time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond) // perhaps a concurrent CreateTap between TUNSETIFF and TUNSETPERSIST
				continue
			}
			return nil, false, fmt.Errorf("hostnet: tap %s exists but is not persistent (owned by a running process)", name)
		}
		if int(tap.Owner) != ownerUID || int(tap.Group) != ownerGID {
			return nil, false, fmt.Errorf("hostnet: tap %s exists with owner %d:%d, want %d:%d", name, tap.Owner, tap.Group, ownerUID, ownerGID)
		}
		if m := link.Attrs().MasterIndex; m != 0 && m != br.Attrs().Index {
			return nil, false, fmt.Errorf("hostnet: tap %s exists and is attached to %s, not %s", name, n.linkName(m), br.Attrs().Name)
		}
		return link, false, nil
	}
}

// makeTap creates a persistent tap in the calling thread's namespace.
// IFF_TUN_EXCL makes TUNSETIFF fail instead of attaching to a tap that
// appeared since the caller looked. Until TUNSETPERSIST succeeds the device
// vanishes with the fd, so a failure leaves nothing behind.
func makeTap(name string, uid, gid int) error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_TUN_EXCL)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("TUNSETIFF: %w", err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, uid); err != nil {
		return fmt.Errorf("TUNSETOWNER: %w", err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETGROUP, gid); err != nil {
		return fmt.Errorf("TUNSETGROUP: %w", err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return fmt.Errorf("TUNSETPERSIST: %w", err)
	}
	return nil
}

// DeleteTap deletes the tap called name and its pin (UnpinTap). A missing
// tap is not an error (its pin, if any, is still removed); a link of any
// other kind called name is, and is left alone.
func (n *Net) DeleteTap(name string) error {
	if err := n.DeleteTapLink(name); err != nil {
		return err
	}
	return n.UnpinTap(name)
}

// ListLinks returns the sorted names of all links whose name starts with
// prefix (all links if prefix is "").
func (n *Net) ListLinks(prefix string) ([]string, error) {
	links, err := n.h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("hostnet: list links: %w", err)
	}
	var names []string
	for _, l := range links {
		if name := l.Attrs().Name; strings.HasPrefix(name, prefix) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names, nil
}

func (n *Net) linkName(index int) string {
	if l, err := n.h.LinkByIndex(index); err == nil {
		return l.Attrs().Name
	}
	return fmt.Sprintf("ifindex %d", index)
}

func linkKind(l netlink.Link) string {
	if t, ok := l.(*netlink.Tuntap); ok {
		if t.Mode == netlink.TUNTAP_MODE_TUN {
			return "tun"
		}
		return "tap"
	}
	return l.Type()
}
