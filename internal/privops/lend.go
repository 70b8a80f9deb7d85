package privops

import (
	"context"
	"net"
	"net/netip"

	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/logging"
)

// Lending a tap name for a fork's restore (hostnet.RenameTap has why). The
// caller holds lendMu from lendName to giveBack.

// lendName moves the tap called j.PinnedTap (its owner's, if it exists) to
// its aside name and makes a fresh tap, on no bridge, under the name.
func lendName(n *hostnet.Net, j *LendReq, uid, gid int) error {
	aside := asideName(j.PinnedTap)
	if err := takeBack(n, j.PinnedTap); err != nil { // a dead helper's lend
		return err
	}
	if ok, err := n.LinkExists(j.PinnedTap); err != nil {
		return err
	} else if ok {
		if err := n.RenameTap(j.PinnedTap, aside); err != nil {
			return err
		}
	}
	// A tap of the VM's own name left by an earlier run goes (with its pin:
	// giveBack pins the new one).
	if err := n.DeleteTap(j.Tap); err != nil {
		return err
	}
	return n.MakeTap(j.PinnedTap, uid, gid)
}

// dropLent deletes the fresh tap under j.PinnedTap, if any, keeping the
// pin of that name (its owner's).
func dropLent(n *hostnet.Net, j *LendReq) error { return n.DeleteTapLink(j.PinnedTap) }

// giveBack ends a lend. loaded: the VMM holds the fresh tap, which becomes
// the VM's own (renamed, enslaved, up, pinned to its MAC and address);
// otherwise the fresh tap is deleted. Either way the owner's tap gets its
// name back.
func (l *Local) giveBack(ctx context.Context, j *LendReq, loaded bool) error {
	mac, _ := net.ParseMAC(j.MAC)
	ip, _ := netip.ParseAddr(j.GuestIP)
	var err error
	werr := l.withNet(func(n *hostnet.Net) error {
		if loaded {
			if err = n.RenameTap(j.PinnedTap, j.Tap); err == nil {
				if err = n.CreateTap(j.Tap, j.Bridge, l.Policy.OwnerUID, l.Policy.OwnerGID); err == nil {
					err = n.PinTap(j.Tap, mac, ip)
				}
			}
		}
		if !loaded || err != nil {
			if derr := dropLent(n, j); derr != nil {
				logging.From(ctx).Warn("drop a lent tap", "tap", j.PinnedTap, "error", derr)
			}
		}
		return takeBack(n, j.PinnedTap)
	})
	if err == nil {
		err = werr
	}
	return err
}

// takeBack gives tap its name back if it waits aside. Whatever holds the
// name meanwhile is a fresh tap of a lend that a dead helper never ended
// (only a lend makes both): it goes, keeping the name's pin.
func takeBack(n *hostnet.Net, tap string) error {
	aside := asideName(tap)
	ok, err := n.LinkExists(aside)
	if err != nil || !ok {
		return err
	}
	if err := n.DeleteTapLink(tap); err != nil {
		return err
	}
	return n.RenameTap(aside, tap)
}
