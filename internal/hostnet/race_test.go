package hostnet

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
)

// macFor4 is the MAC banger gives the guest at a (vm.macFor).
func macFor4(a netip.Addr) net.HardwareAddr {
	b := a.As4()
	return net.HardwareAddr{0x02, 0xfc, b[0], b[1], b[2], b[3]}
}

// TestConcurrentSetup hammers the ensure-style calls from several workers
// at once, each with its own Net (its own netlink and nftables sockets and
// its own lock file description, as separate helper processes would have),
// in a fresh namespace: every round a new bridge is set up by all workers
// together, each worker creates its own tap and all of them the same shared
// tap, and NAT, pins and host-input rules are added for both. Afterwards
// every rule and pin exists exactly once. Before the fix (with the calls that
// existed then) 15 of 48 worker runs failed: "add 10.1.0.1/24: file
// exists", "TUNSETIFF: device or resource busy", "tap ... exists but is not
// persistent (owned by a running process)", and nftables batches refused
// with ENOENT after a concurrent writer changed the rules in between.
func TestConcurrentSetup(t *testing.T) {
	_, ns := setup(t)
	const workers, rounds = 4, 12
	failures := 0
	for r := 0; r < rounds; r++ {
		br := fmt.Sprintf("br-r%d", r)
		gwr := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(r + 1), 0, 1}), 24)
		shared := fmt.Sprintf("bgtap-r%d", r)
		sharedGuest := netip.AddrFrom4([4]byte{10, byte(r + 1), 0, 2})
		nets := make([]*Net, workers)
		for w := range nets {
			n, err := Open("/run/netns/" + ns)
			if err != nil {
				t.Fatal(err)
			}
			nets[w] = n
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make(chan error, workers*16)
		for w, n := range nets {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer n.Close()
				own := fmt.Sprintf("bgtap-r%dw%d", r, w)
				guest := netip.AddrFrom4([4]byte{10, byte(r + 1), 0, byte(10 + w)})
				<-start
				step := func(what string, err error) bool {
					if err != nil {
						errs <- fmt.Errorf("round %d worker %d: %s: %w", r, w, what, err)
						return false
					}
					return true
				}
				_ = step("EnsureBridge", n.EnsureBridge(br, gwr)) &&
					step("IsolateBridge", n.IsolateBridge(br)) &&
					step("EnableForwarding", n.EnableForwarding()) &&
					step("CreateTap shared", n.CreateTap(shared, br, 0, 0)) &&
					step("CreateTap own", n.CreateTap(own, br, 0, 0)) &&
					step("AddNAT shared", n.AddNAT(sharedGuest, shared)) &&
					step("AddNAT own", n.AddNAT(guest, own)) &&
					step("PinTap shared", n.PinTap(shared, macFor4(sharedGuest), sharedGuest)) &&
					step("PinTap own", n.PinTap(own, macFor4(guest), guest)) &&
					step("RestrictHostInput", n.RestrictHostInput(br, gwr.Addr(), []uint16{53}, []uint16{53}))
			}()
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			failures++
			t.Error(err)
		}
	}
	if failures > 0 {
		t.Fatalf("%d failures in %d rounds of %d concurrent workers", failures, rounds, workers)
	}

	// Exactly one of each rule: nothing duplicated by the races.
	seen := map[string]int{}
	for _, c := range comments(nftRules(t, ns)) {
		seen[c]++
	}
	for c, k := range seen {
		if k != 1 {
			t.Errorf("rule %q present %d times", c, k)
		}
	}
	// Per round: the isolation rule, 3 NAT rules per tap, 4 host-input
	// rules; and one host-input rule for all taps.
	if want := rounds*(1+3*(1+workers)+4) + 1; len(seen) != want {
		t.Errorf("%d distinct inet rules, want %d", len(seen), want)
	}
	var guard []string
	for _, r := range nftRules(t, ns) {
		if r.Family == "bridge" {
			guard = append(guard, r.Chain+": "+r.Comment)
		}
	}
	if want := []string{"prerouting: " + guardTagTaps, "guard: " + guardTagIPv4, "guard: " + guardTagARP, "guard: " + guardTagDrop}; !slices.Equal(guard, want) {
		t.Errorf("bridge guard rules %q, want %q", guard, want)
	}
	n, err := Open("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	pins, err := n.TapPins()
	if err != nil {
		t.Fatal(err)
	}
	if len(pins) != rounds*(1+workers) {
		t.Errorf("%d pins, want one per tap (%d): %v", len(pins), rounds*(1+workers), pins)
	}
	ls := links(t, ns)
	for r := 0; r < rounds; r++ {
		br := fmt.Sprintf("br-r%d", r)
		if got := ls[br].inet(); len(got) != 1 {
			t.Errorf("%s addresses %v, want one", br, got)
		}
		for _, tap := range append([]string{fmt.Sprintf("bgtap-r%d", r)}, func() (o []string) {
			for w := 0; w < workers; w++ {
				o = append(o, fmt.Sprintf("bgtap-r%dw%d", r, w))
			}
			return
		}()...) {
			if l, ok := ls[tap]; !ok || l.Master != br || !l.up() {
				t.Errorf("tap %s: present %v master %q up %v", tap, ok, l.Master, l.up())
			}
		}
	}

	// Teardown, also all at once: two workers remove each VM's NAT and tap
	// at the same time. Nothing fails, nothing is left.
	type vmNet struct {
		guest netip.Addr
		tap   string
	}
	var vms []vmNet
	for r := 0; r < rounds; r++ {
		vms = append(vms, vmNet{netip.AddrFrom4([4]byte{10, byte(r + 1), 0, 2}), fmt.Sprintf("bgtap-r%d", r)})
		for w := 0; w < workers; w++ {
			vms = append(vms, vmNet{netip.AddrFrom4([4]byte{10, byte(r + 1), 0, byte(10 + w)}), fmt.Sprintf("bgtap-r%dw%d", r, w)})
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers*len(vms)*2)
	for w := 0; w < workers; w++ {
		wn, err := Open("/run/netns/" + ns)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer wn.Close()
			for i, v := range vms {
				if i%workers != w && (i+1)%workers != w {
					continue
				}
				if err := wn.RemoveNAT(v.guest, v.tap); err != nil {
					errs <- err
				}
				if err := wn.DeleteTap(v.tap); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("teardown: %v", err)
	}
	if rules, err := n.NATRules(); err != nil || len(rules) != 0 {
		t.Errorf("NAT rules left: %v, %v", rules, err)
	}
	if pins, err := n.TapPins(); err != nil || len(pins) != 0 {
		t.Errorf("pins left: %v, %v", pins, err)
	}
	if taps, err := n.ListLinks(TapPrefix); err != nil || len(taps) != 0 {
		t.Errorf("taps left: %v, %v", taps, err)
	}
}
