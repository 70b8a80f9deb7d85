// Package hostnet configures the host side of VM networking: one bridge whose
// address is the guests' gateway, one persistent tap per VM enslaved to it,
// IPv4 forwarding, and opt-in per-VM NAT.
//
// Everything goes through Go libraries (vishvananda/netlink for links and
// addresses, google/nftables for NAT); no ip, iptables or nft program is run.
//
// A Net is bound to one network namespace for its whole life: Open takes a
// namespace path (or "" for the caller's own) and every later call acts in
// that namespace only, even the ones that must run on a thread inside it
// (tap creation through /dev/net/tun, the ip_forward sysctl). Tests use this
// to run the real code inside throwaway namespaces without ever touching the
// host's.
//
// NAT lives in a single nftables table owned by banger, "inet banger"; see
// AddNAT for the rules. Each rule carries a comment naming what it belongs to,
// so the rules of one VM can be found, listed and removed without touching
// anything else, and reconcile/doctor can read them back with NATRules. The
// same table's input chain limits what guests reach on the host itself
// (RestrictHostInput).
//
// A guest may only send as itself: table "bridge banger" (guard.go) drops
// every frame from a banger tap unless the tap is pinned (PinTap) and the
// frame carries exactly the pinned MAC and IPv4 address, ARP included.
//
// Every call is idempotent, also against concurrent callers in other
// processes: link and address creation treat "already exists, and is what
// we want" as success, and nftables changes are read-modify-write batches
// serialised by a lock on the namespace itself (see nftTxn).
//
// This package does not decide which names and addresses are allowed: the
// root helper validates and pins them (bridge name and CIDR, tap prefixes)
// before calling in. It does refuse to act on links of the wrong kind, e.g.
// to delete a non-tap or to reuse a non-bridge as the bridge.
package hostnet

import (
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Net configures links and NAT in one network namespace. Its methods are safe
// for concurrent use, and several Nets or processes may act on the same
// namespace at once (see nftTxn).
type Net struct {
	ns     netns.NsHandle
	nsPath string // for messages; "" = the namespace Open was called in
	h      *netlink.Handle

	natMu sync.Mutex // serialises this Net's nftables transactions (nftTxn)
}

// Open binds a Net to the network namespace at nsPath (for example
// /run/netns/NAME or /proc/PID/ns/net), or, if nsPath is "", to the namespace
// of the calling thread (for an ordinary program, the process's namespace).
// The namespace stays pinned by an open file descriptor until Close.
func Open(nsPath string) (*Net, error) {
	var (
		ns  netns.NsHandle
		err error
	)
	if nsPath == "" {
		runtime.LockOSThread()
		ns, err = netns.Get()
		runtime.UnlockOSThread()
	} else {
		ns, err = netns.GetFromPath(nsPath)
	}
	if err != nil {
		return nil, fmt.Errorf("hostnet: open netns %s: %w", nsName(nsPath), err)
	}
	typ, err := unix.IoctlRetInt(int(ns), unix.NS_GET_NSTYPE)
	if err != nil || typ != unix.CLONE_NEWNET {
		ns.Close()
		return nil, fmt.Errorf("hostnet: %s is not a network namespace", nsName(nsPath))
	}
	// In the caller's own namespace, use plain sockets: joining a namespace
	// (setns) needs CAP_SYS_ADMIN, which the root helper does not have.
	var h *netlink.Handle
	if nsPath == "" {
		h, err = netlink.NewHandle()
	} else {
		h, err = netlink.NewHandleAt(ns)
	}
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("hostnet: netlink in netns %s: %w", nsName(nsPath), err)
	}
	return &Net{ns: ns, nsPath: nsPath, h: h}, nil
}

// Close releases the netlink sockets and the namespace reference.
func (n *Net) Close() error {
	n.h.Close()
	return n.ns.Close()
}

func nsName(p string) string {
	if p == "" {
		return "(current)"
	}
	return p
}

// nft returns a fresh nftables connection into the namespace. Connections
// are cheap (a netlink socket per operation) and a fresh one never carries a
// failed batch over from an earlier call.
func (n *Net) nft() (*nftables.Conn, error) {
	if n.nsPath == "" {
		return nftables.New()
	}
	return nftables.New(nftables.WithNetNSFd(int(n.ns)))
}

// inNS runs f on an OS thread that has joined the namespace. The thread is
// locked and never unlocked, so the Go runtime destroys it when f returns and
// the namespace switch cannot leak into other goroutines.
func (n *Net) inNS(f func() error) error {
	if n.nsPath == "" {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(n.ns), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", nsName(n.nsPath), err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// EnableForwarding sets net.ipv4.ip_forward=1 in the namespace.
func (n *Net) EnableForwarding() error {
	const p = "/proc/sys/net/ipv4/ip_forward"
	err := n.inNS(func() error {
		// /proc/sys/net resolves against the opening thread's namespace.
		f, err := unix.Open(p, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(f)
		if _, err := unix.Write(f, []byte("1\n")); err != nil {
			return err
		}
		var b [4]byte
		k, err := unix.Pread(f, b[:], 0)
		if err != nil {
			return err
		}
		if k == 0 || b[0] != '1' {
			return errors.New("value did not stick")
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("hostnet: enable ip_forward in netns %s: %w", nsName(n.nsPath), err)
	}
	return nil
}
