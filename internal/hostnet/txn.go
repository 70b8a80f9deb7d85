package hostnet

import (
	"fmt"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// nftAttempts bounds how often nftTxn rebuilds and resends a batch that the
// kernel refused.
const nftAttempts = 3

// nftTxn runs a read-modify-write of banger's nftables state as one atomic
// batch. build reads what is there through c and queues the changes; nftTxn
// commits them.
//
// Every banger writer serialises here: goroutines of one Net by natMu, and
// separate Nets and processes acting in the same namespace by an exclusive
// flock(2) on the namespace itself (the nsfs inode that /run/netns/NAME,
// /proc/PID/ns/net and our pinned descriptor all share). That needs no lock
// file anywhere, so there is no path another user could pre-create or swap,
// and it lets "read, then add what is missing" be exact: two helpers setting
// up the same bridge at once cannot both add the same rule.
//
// A batch can still fail if something that does not take the lock (an admin
// running nft) changes the tables between the read and the commit; then the
// state is read again and the batch rebuilt, up to nftAttempts times.
func (n *Net) nftTxn(build func(c *nftables.Conn) error) error {
	n.natMu.Lock()
	defer n.natMu.Unlock()
	if err := flock(int(n.ns), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock netns %s: %w", nsName(n.nsPath), err)
	}
	defer flock(int(n.ns), unix.LOCK_UN)

	var err error
	for attempt := 0; attempt < nftAttempts; attempt++ {
		var c *nftables.Conn
		if c, err = n.nft(); err != nil {
			return err
		}
		if err = build(c); err != nil {
			return err
		}
		if err = c.Flush(); err == nil {
			return nil
		}
	}
	return err
}

func flock(fd, how int) error {
	for {
		err := unix.Flock(fd, how)
		if err != unix.EINTR {
			return err
		}
	}
}
