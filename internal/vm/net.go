package vm

import (
	"fmt"
	"net/netip"

	"github.com/banger-dev/banger/internal/errdefs"
)

// gateway is the bridge's address: the network's first host.
func gateway(network netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(network.Masked().Addr().Next(), network.Bits())
}

// allocateIP returns the lowest free guest address after the gateway.
func allocateIP(network netip.Prefix, used map[string]bool) (netip.Addr, error) {
	network = network.Masked()
	a := network.Addr().Next().Next()
	for ; network.Contains(a); a = a.Next() {
		if !network.Contains(a.Next()) { // broadcast
			break
		}
		if !used[a.String()] {
			return a, nil
		}
	}
	return netip.Addr{}, errdefs.New(errdefs.OperationFailed, "no free guest address left in %s; delete VMs or widen 'cidr'", network)
}

// macFor derives a stable, locally administered MAC from the guest IP.
func macFor(ip netip.Addr) string {
	b := ip.As4()
	return fmt.Sprintf("02:fc:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}

// tapFor names a VM's tap (at most 15 characters).
func tapFor(id string) string { return "bgtap" + id[:8] }
