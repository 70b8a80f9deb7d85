package hostnet

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The port guard: table bridge banger.
//
// A guest is hostile, so it may only ever send as itself. Bridged frames
// are checked where they enter the bridge (hook prerouting of the bridge
// family, before the bridge learns their source MAC or forwards them to a
// guest or the host):
//
//	table bridge banger {
//	  set pins { type ifname . ether_addr . ipv4_addr }   # one element per pinned tap
//	  chain prerouting { type filter hook prerouting priority -300; policy accept;
//	    iifname "bgtap*" jump guard                        # every banger tap, on any bridge
//	  }
//	  chain guard {
//	    ether type ip  iifname . ether saddr . ip saddr @pins accept
//	    ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4
//	      iifname . ether saddr . arp saddr ip @pins
//	      iifname . arp saddr ether . arp saddr ip @pins accept
//	    drop
//	  }
//	}
//
// So a frame from a port is accepted only if it is IPv4 or ARP, its Ethernet
// source (and for ARP, its sender hardware address) is the tap's pinned MAC
// and its IPv4 source (for ARP, the sender protocol address) is the tap's
// pinned address. IPv6, VLAN tags, any other ethertype, and everything from
// a port without a pin are dropped. The checks cost the same for one VM or a
// thousand: one set lookup keyed by the input port.
//
// Ports are recognised by name (TapPrefix), not by bridge: "meta ibrname"
// needs CONFIG_NFT_BRIDGE_META, which not every kernel has (this project's
// CI kernel does not), while the ifname match is core nf_tables. banger
// attaches nothing but its own taps to its bridge.

// Names of the port guard's nftables objects.
const (
	GuardTable      = "banger" // family bridge
	GuardPrerouting = "prerouting"
	GuardChain      = "guard"
	PinSet          = "pins"
)

// TapPrefix is the name prefix of banger's taps. Frames from any port so
// named are guarded whatever bridge it is on, and packets that reach the host
// through such a port unbridged are dropped (RestrictHostInput).
const TapPrefix = "bgtap"

// guardPriority runs the guard before anything else on the bridge
// prerouting hook (bridge filter is -200, br_netfilter's IP hooks 0).
const guardPriority = -300

// pinSetID names the pin set within a batch that also creates it. Setting it
// keeps AddSet off the nftables package's unsynchronised global counter.
const pinSetID = 0x62616e67

var (
	guardTable = &nftables.Table{Name: GuardTable, Family: nftables.TableFamilyBridge}
	guardPre   = &nftables.Chain{
		Name: GuardPrerouting, Table: guardTable, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(guardPriority),
		Policy: policy(nftables.ChainPolicyAccept),
	}
	guardChain = &nftables.Chain{Name: GuardChain, Table: guardTable}
	pinKeyType = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr, nftables.TypeIPAddr)
)

// The pin key as the kernel stores it: ifname (16 bytes), ether_addr (6,
// padded to 8), ipv4_addr (4).
const pinKeyLen = unix.IFNAMSIZ + 8 + 4

// Comments on the guard's rules.
const (
	guardTagIPv4 = "banger guard ipv4"
	guardTagARP  = "banger guard arp"
	guardTagDrop = "banger guard drop"
	guardTagTaps = "banger guard taps=" + TapPrefix
)

var guardTags = []string{guardTagIPv4, guardTagARP, guardTagDrop}

// TapPin is one tap's pinned identity as found in the kernel.
type TapPin struct {
	Tap string
	MAC net.HardwareAddr
	IP  netip.Addr
}

// PinTap lets frames from tap through the port guard when, and only when,
// they carry mac as Ethernet source and ip as IPv4 source (or, for ARP, as
// sender hardware and protocol address). The tap need not exist yet. It is
// idempotent; pinning a tap again with another MAC or address replaces its
// pin in the same atomic batch. A MAC or address already pinned to another
// tap that exists is refused (the other tap's stale pin is replaced if that
// tap is gone). It creates the port guard as needed (see
// IsolateBridge). Only taps named TapPrefix* are guarded, so a pin for any
// other name, which would protect nothing, is refused.
func (n *Net) PinTap(tap string, mac net.HardwareAddr, ip netip.Addr) error {
	if err := checkIfname(tap); err != nil {
		return fmt.Errorf("hostnet: pin tap: %w", err)
	}
	if !strings.HasPrefix(tap, TapPrefix) {
		return fmt.Errorf("hostnet: pin tap %s: only taps named %s* are guarded", tap, TapPrefix)
	}
	if len(mac) != 6 || mac[0]&1 != 0 || bytes.Equal(mac, make([]byte, 6)) {
		return fmt.Errorf("hostnet: pin tap %s: MAC %s is not a unicast Ethernet address", tap, mac)
	}
	if err := checkGuest(ip); err != nil {
		return fmt.Errorf("hostnet: pin tap %s: %w", tap, err)
	}
	want := pinKey(tap, mac, ip)
	err := n.nftTxn(func(c *nftables.Conn) error {
		g, err := readGuard(c)
		if err != nil {
			return err
		}
		if err := ensureGuard(c, g); err != nil {
			return err
		}
		have := false
		var stale []nftables.SetElement
		for _, e := range g.pins {
			other := pinTapOf(e.Key)
			switch {
			case bytes.Equal(e.Key, want) && !have:
				have = true
			case other == tap:
				stale = append(stale, e) // another identity, or a duplicate
			case len(e.Key) == pinKeyLen && (bytes.Equal(e.Key[16:22], mac) || bytes.Equal(e.Key[24:28], want[24:28])):
				// Two taps with one identity could impersonate each
				// other. A pin whose tap is gone is stale (a crash
				// between deleting a tap and unpinning it).
				var notFound netlink.LinkNotFoundError
				if _, err := n.h.LinkByName(other); !errors.As(err, &notFound) {
					if err != nil {
						return fmt.Errorf("tap %s: %w", other, err)
					}
					return fmt.Errorf("%s or %s is already pinned to tap %s", mac, ip, other)
				}
				stale = append(stale, e)
			}
		}
		set := pinSet()
		if len(stale) > 0 {
			if err := c.SetDeleteElements(set, stale); err != nil {
				return err
			}
		}
		if !have {
			return c.SetAddElements(set, []nftables.SetElement{{Key: want}})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("hostnet: pin tap %s to %s %s: %w", tap, mac, ip, err)
	}
	return nil
}

// UnpinTap removes tap's pin, so the port guard drops everything from it
// again. A tap without a pin, or no guard table at all, is not an error.
func (n *Net) UnpinTap(tap string) error {
	if err := checkIfname(tap); err != nil {
		return fmt.Errorf("hostnet: unpin tap: %w", err)
	}
	err := n.nftTxn(func(c *nftables.Conn) error {
		g, err := readGuard(c)
		if err != nil || !g.set {
			return err
		}
		var drop []nftables.SetElement
		for _, e := range g.pins {
			if pinTapOf(e.Key) == tap {
				drop = append(drop, e)
			}
		}
		if len(drop) == 0 {
			return nil
		}
		return c.SetDeleteElements(pinSet(), drop)
	})
	if err != nil {
		return fmt.Errorf("hostnet: unpin tap %s: %w", tap, err)
	}
	return nil
}

// TapPins lists the pinned taps, sorted by name. No guard table means none.
func (n *Net) TapPins() ([]TapPin, error) {
	c, err := n.nft()
	if err != nil {
		return nil, fmt.Errorf("hostnet: list tap pins: %w", err)
	}
	g, err := readGuard(c)
	if err != nil {
		return nil, fmt.Errorf("hostnet: list tap pins: %w", err)
	}
	var out []TapPin
	for _, e := range g.pins {
		if len(e.Key) != pinKeyLen {
			continue
		}
		ip, _ := netip.AddrFromSlice(e.Key[24:28])
		out = append(out, TapPin{
			Tap: pinTapOf(e.Key),
			MAC: net.HardwareAddr(bytes.Clone(e.Key[16:22])),
			IP:  ip,
		})
	}
	slices.SortFunc(out, func(a, b TapPin) int { return strings.Compare(a.Tap, b.Tap) })
	return out, nil
}

func pinKey(tap string, mac net.HardwareAddr, ip netip.Addr) []byte {
	k := make([]byte, pinKeyLen)
	copy(k, tap)
	copy(k[16:], mac)
	a := ip.As4()
	copy(k[24:], a[:])
	return k
}

func pinTapOf(key []byte) string {
	if len(key) < unix.IFNAMSIZ {
		return ""
	}
	name, _, _ := bytes.Cut(key[:unix.IFNAMSIZ], []byte{0})
	return string(name)
}

func checkIfname(s string) error {
	if s == "" || len(s) >= unix.IFNAMSIZ || strings.ContainsAny(s, "\x00/ \t\n") {
		return fmt.Errorf("bad interface name %q", s)
	}
	return nil
}

// pinSet is a fresh description of the pin set (AddSet writes to it).
func pinSet() *nftables.Set {
	return &nftables.Set{
		Table: guardTable, Name: PinSet, ID: pinSetID,
		KeyType: pinKeyType, Concatenation: true,
	}
}

// guardState is what readGuard found of table bridge banger.
type guardState struct {
	table, pre, guard, set bool
	preRules, guardRules   []*nftables.Rule
	pins                   []nftables.SetElement
}

func readGuard(c *nftables.Conn) (guardState, error) {
	var g guardState
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyBridge)
	if err != nil {
		return g, fmt.Errorf("list bridge tables: %w", err)
	}
	for _, t := range tables {
		g.table = g.table || t.Name == GuardTable
	}
	if !g.table {
		return g, nil
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyBridge)
	if err != nil {
		return g, fmt.Errorf("list bridge chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name != GuardTable {
			continue
		}
		g.pre = g.pre || ch.Name == GuardPrerouting
		g.guard = g.guard || ch.Name == GuardChain
	}
	if g.pre {
		if g.preRules, err = c.GetRules(guardTable, guardPre); err != nil {
			return g, fmt.Errorf("list rules of %s: %w", GuardPrerouting, err)
		}
	}
	if g.guard {
		if g.guardRules, err = c.GetRules(guardTable, guardChain); err != nil {
			return g, fmt.Errorf("list rules of %s: %w", GuardChain, err)
		}
	}
	sets, err := c.GetSets(guardTable)
	if err != nil {
		return g, fmt.Errorf("list sets: %w", err)
	}
	for _, s := range sets {
		if s.Name != PinSet {
			continue
		}
		if s.KeyType.Bytes != pinKeyLen || s.IsMap {
			return g, fmt.Errorf("set bridge %s %s exists with another type (%s)", GuardTable, PinSet, s.KeyType.Name)
		}
		g.set = true
		s.Table = guardTable
		if g.pins, err = c.GetSetElements(s); err != nil {
			return g, fmt.Errorf("list %s: %w", PinSet, err)
		}
	}
	return g, nil
}

func ruleComment(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}

// ensureGuard queues whatever of the port guard is missing: table, set,
// chains, the guard chain's rules (rewritten whole unless exactly right) and
// the TapPrefix dispatch (a duplicate of which is removed).
func ensureGuard(c *nftables.Conn, g guardState) error {
	if !g.table {
		c.AddTable(guardTable)
	}
	if !g.set {
		if err := c.AddSet(pinSet(), nil); err != nil {
			return err
		}
	}
	if !g.pre {
		c.AddChain(guardPre)
	}
	if !g.guard {
		c.AddChain(guardChain)
	}
	var have []string
	for _, r := range g.guardRules {
		have = append(have, ruleComment(r))
	}
	if !slices.Equal(have, guardTags) {
		if g.guard {
			c.FlushChain(guardChain)
		}
		for _, t := range guardTags {
			c.AddRule(guardRule(t))
		}
	}
	found := false
	for _, r := range g.preRules {
		if ruleComment(r) != guardTagTaps {
			continue
		}
		if found {
			r.Table, r.Chain = guardTable, guardPre
			if err := c.DelRule(r); err != nil {
				return err
			}
		}
		found = true
	}
	if !found {
		c.AddRule(dispatchRule())
	}
	return nil
}

func comment(s string) []byte { return userdata.AppendString(nil, userdata.TypeComment, s) }

// dispatchRule sends every frame from a TapPrefix* port to the guard chain.
// Comparing only len(TapPrefix) bytes makes it a prefix match (nft shows
// it as iifname "bgtap*").
func dispatchRule() *nftables.Rule {
	return &nftables.Rule{
		Table: guardTable, Chain: guardPre, UserData: comment(guardTagTaps),
		Exprs: concat(metaCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, []byte(TapPrefix)),
			[]expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: GuardChain}}),
	}
}

// Registers for the pin lookup: the key is the concatenation of the 16-byte
// register 1 (= 32-bit registers 0-3, the ifname), 32-bit registers 4-5 (the
// MAC) and 32-bit register 6 (the IPv4 address).
const (
	regIfname = unix.NFT_REG_1
	regMAC    = unix.NFT_REG32_04
	regIP     = unix.NFT_REG32_06
)

func etherType(t uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(t >> 8), byte(t)}},
	}
}

func load(reg uint32, base expr.PayloadBase, offset, n uint32) expr.Any {
	return &expr.Payload{DestRegister: reg, Base: base, Offset: offset, Len: n}
}

func lookupPin() expr.Any {
	return &expr.Lookup{SourceRegister: regIfname, SetName: PinSet, SetID: pinSetID}
}

func guardRule(t string) *nftables.Rule {
	r := &nftables.Rule{Table: guardTable, Chain: guardChain, UserData: comment(t)}
	accept := []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept}}
	switch t {
	case guardTagIPv4:
		r.Exprs = concat(etherType(unix.ETH_P_IP), []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: regIfname},
			load(regMAC, expr.PayloadBaseLLHeader, 6, 6),      // ether saddr
			load(regIP, expr.PayloadBaseNetworkHeader, 12, 4), // ip saddr
			lookupPin(),
		}, accept)
	case guardTagARP:
		r.Exprs = concat(etherType(unix.ETH_P_ARP), []expr.Any{
			// Ethernet/IPv4 ARP only: htype 1, ptype 0x0800, hlen 6, plen 4.
			load(1, expr.PayloadBaseNetworkHeader, 0, 6),
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 1, 8, 0, 6, 4}},
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: regIfname},
			load(regMAC, expr.PayloadBaseLLHeader, 6, 6),      // ether saddr
			load(regIP, expr.PayloadBaseNetworkHeader, 14, 4), // arp saddr ip
			lookupPin(),
			load(regMAC, expr.PayloadBaseNetworkHeader, 8, 6), // arp saddr ether
			lookupPin(),
		}, accept)
	case guardTagDrop:
		r.Exprs = []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}
	default:
		panic("hostnet: unknown guard rule " + t)
	}
	return r
}
