package hostnet

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Lending a tap's name (docs/snapshots.md, "One tap name, lent"): a VM
// forked from another is restored from a snapshot that names its parent's
// tap, and a VMM attaches to its tap by name when it loads. So, for the
// moment of the load, the name is lent: the parent's tap is renamed aside
// (RenameTap), a fresh tap is made under the name (MakeTap), the VMM loads
// and holds it by its file descriptor, and the fresh tap is renamed to the
// fork's own name (RenameTap) and enslaved (CreateTap adopts it), before the
// parent's tap gets its name back. Firecracker's docs recommend a network
// namespace per clone instead; making one needs CAP_SYS_ADMIN (or, through
// a user namespace mapping root, CAP_SETFCAP), which banger's root helper
// does not have, while renaming needs only CAP_NET_ADMIN.

// LinkExists reports whether a link called name exists.
func (n *Net) LinkExists(name string) (bool, error) {
	_, err := n.h.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return false, nil
	}
	return err == nil, err
}

// MakeTap creates the persistent tap name, owned by ownerUID:ownerGID, on
// no bridge and down: nothing it sends goes anywhere until CreateTap
// enslaves it.
func (n *Net) MakeTap(name string, ownerUID, ownerGID int) error {
	if err := n.inNS(func() error { return makeTap(name, ownerUID, ownerGID) }); err != nil {
		return fmt.Errorf("hostnet: create tap %s: %w", name, err)
	}
	return nil
}

// RenameTap renames the tap from to to. A link must be down to be renamed:
// a tap that was up is set down for the rename and up again after it (a
// guest behind it loses the frames of that moment). Only taps are renamed;
// to must be free.
func (n *Net) RenameTap(from, to string) error {
	link, err := n.h.LinkByName(from)
	if err != nil {
		return fmt.Errorf("hostnet: rename tap %s: %w", from, err)
	}
	if linkKind(link) != "tap" {
		return fmt.Errorf("hostnet: refusing to rename %s: it is a %s, not a tap", from, linkKind(link))
	}
	up := link.Attrs().Flags&net.FlagUp != 0
	if up {
		if err := n.h.LinkSetDown(link); err != nil {
			return fmt.Errorf("hostnet: rename tap %s: set down: %w", from, err)
		}
	}
	err = n.h.LinkSetName(link, to)
	if up {
		if uerr := n.h.LinkSetUp(link); err == nil && uerr != nil {
			err = fmt.Errorf("set up: %w", uerr)
		}
	}
	if err != nil {
		return fmt.Errorf("hostnet: rename tap %s to %s: %w", from, to, err)
	}
	return nil
}

// DeleteTapLink deletes the tap called name but, unlike DeleteTap, keeps
// the pin of that name (during a lend it belongs to the tap whose name was
// lent). A missing tap is not an error; a link of another kind is, and is
// left alone.
func (n *Net) DeleteTapLink(name string) error {
	link, err := n.h.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("hostnet: delete tap %s: %w", name, err)
	}
	if linkKind(link) != "tap" {
		return fmt.Errorf("hostnet: refusing to delete %s: it is a %s, not a tap", name, linkKind(link))
	}
	if err := n.h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("hostnet: delete tap %s: %w", name, err)
	}
	return nil
}
