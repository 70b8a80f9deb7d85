package hostnet

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Names of banger's nftables objects.
const (
	NATTable         = "banger" // family inet
	PostroutingChain = "postrouting"
	ForwardChain     = "forward"
)

// Roles of the rules AddNAT installs for one VM.
const (
	RoleMasquerade = "masquerade"  // postrouting: saddr guest, oifname != bridge → masquerade
	RoleForwardOut = "forward-out" // forward: iifname bridge, saddr guest, oifname != bridge → accept
	RoleForwardIn  = "forward-in"  // forward: oifname bridge, daddr guest, ct established,related → accept
)

// roleIsolation is the per-bridge rule that drops forwarded traffic from
// guests without NAT. It is not a VM's rule and NATRules does not list it.
const roleIsolation = "isolation"

// NATRule is one VM's rule as found in the kernel.
type NATRule struct {
	Guest   netip.Addr
	Tap     string
	Bridge  string
	Role    string // RoleMasquerade, RoleForwardOut or RoleForwardIn
	Chain   string // PostroutingChain or ForwardChain
	Handle  uint64
	Packets uint64 // the rule's counter
	Bytes   uint64
}

var (
	natTable = &nftables.Table{Name: NATTable, Family: nftables.TableFamilyINet}
	postRtg  = &nftables.Chain{
		Name: PostroutingChain, Table: natTable, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
		Policy: policy(nftables.ChainPolicyAccept),
	}
	fwd = &nftables.Chain{
		Name: ForwardChain, Table: natTable, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter,
		Policy: policy(nftables.ChainPolicyAccept),
	}
)

func policy(p nftables.ChainPolicy) *nftables.ChainPolicy { return &p }

// tag is what a rule's comment says about it: "banger nat role=R guest=G
// tap=T bridge=B" for a VM's rule, "banger isolation bridge=B" for a bridge's.
type tag struct {
	role   string
	guest  netip.Addr
	tap    string
	bridge string
}

func (t tag) String() string {
	if t.role == roleIsolation {
		return "banger isolation bridge=" + t.bridge
	}
	return fmt.Sprintf("banger nat role=%s guest=%s tap=%s bridge=%s", t.role, t.guest, t.tap, t.bridge)
}

func parseTag(s string) (tag, bool) {
	f := strings.Fields(s)
	if len(f) < 2 || f[0] != "banger" {
		return tag{}, false
	}
	var t tag
	kv := map[string]string{}
	for _, p := range f[2:] {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			return tag{}, false
		}
		kv[k] = v
	}
	t.bridge = kv["bridge"]
	switch f[1] {
	case "isolation":
		t.role = roleIsolation
		return t, t.bridge != ""
	case "nat":
		var err error
		t.role, t.tap = kv["role"], kv["tap"]
		if t.guest, err = netip.ParseAddr(kv["guest"]); err != nil {
			return tag{}, false
		}
		return t, t.role != "" && t.tap != "" && t.bridge != ""
	}
	return tag{}, false
}

// AddNAT gives the guest at guest, attached through tap, NATed access to
// the outside. The tap must exist and be enslaved to a bridge that has an
// IPv4 address whose subnet contains guest. It installs, in table inet
// banger (created as needed, in one atomic batch):
//
//   - postrouting: ip saddr guest oifname != bridge → masquerade
//   - forward: iifname bridge oifname != bridge ip saddr guest → accept
//   - forward: oifname bridge iifname != bridge ip daddr guest
//     ct state established,related → accept
//   - once per bridge, last in forward: iifname bridge oifname != bridge →
//     drop, so guests without NAT are not routed out un-NATed (see
//     IsolateBridge).
//
// Routed packets carry the bridge, not the tap, as their interface, so the
// rules match the bridge and the guest's /32; the comment on each rule
// records guest, tap and bridge. Every rule has a counter.
//
// AddNAT is idempotent: rules already present are kept, and rules left by an
// earlier VM with the same guest address or tap are replaced.
func (n *Net) AddNAT(guest netip.Addr, tap string) error {
	if err := checkGuest(guest); err != nil {
		return fmt.Errorf("hostnet: add NAT for %s: %w", tap, err)
	}
	bridge, err := n.bridgeOf(tap, guest)
	if err != nil {
		return fmt.Errorf("hostnet: add NAT for %s on %s: %w", guest, tap, err)
	}

	err = n.nftTxn(func(c *nftables.Conn) error {
		existing, err := listTagged(c)
		if err != nil {
			return err
		}
		want := map[tag]bool{}
		for _, role := range []string{RoleMasquerade, RoleForwardOut, RoleForwardIn} {
			want[tag{role: role, guest: guest, tap: tap, bridge: bridge}] = true
		}
		for _, r := range existing {
			switch {
			case r.tag.role == roleIsolation:
			case want[r.tag]:
				delete(want, r.tag) // already there
			case r.tag.guest == guest || r.tag.tap == tap:
				c.DelRule(r.rule) // stale, or a duplicate
			}
		}
		ensureIsolation(c, existing, bridge)
		// Forward accepts go first, ahead of the isolation drop.
		for _, role := range []string{RoleMasquerade, RoleForwardOut, RoleForwardIn} {
			t := tag{role: role, guest: guest, tap: tap, bridge: bridge}
			if !want[t] {
				continue
			}
			r := vmRule(t)
			if r.Chain == fwd {
				c.InsertRule(r)
			} else {
				c.AddRule(r)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("hostnet: add NAT for %s on %s: %w", guest, tap, err)
	}
	return nil
}

// IsolateBridge installs, idempotently and in one atomic batch, the two
// guards every banger bridge needs before any guest runs on it:
//
//   - L3: the rule that drops packets routed from bridge to any other
//     interface unless a VM's NAT rules accepted them first (see AddNAT,
//     which also installs it), so guests without NAT are never routed out
//     un-NATed, even before the first AddNAT or on a host that already
//     forwards;
//   - L2: the port guard in table bridge banger (guard.go): every frame
//     entering a bridge from a port called TapPrefix* is dropped unless that
//     tap is pinned with PinTap and the frame carries exactly the pinned MAC
//     and IPv4 address. A tap that is not pinned sends nothing. (The guard is
//     not per bridge; installing it again for another bridge is a no-op.)
//
// Because of the L2 guard, every tap must be pinned (PinTap) before its
// guest can talk to anything, including the host and other guests.
func (n *Net) IsolateBridge(bridge string) error {
	if bridge == "" || len(bridge) >= unix.IFNAMSIZ {
		return fmt.Errorf("hostnet: isolate bridge: bad name %q", bridge)
	}
	err := n.nftTxn(func(c *nftables.Conn) error {
		existing, err := listTagged(c)
		if err != nil {
			return err
		}
		ensureIsolation(c, existing, bridge)
		g, err := readGuard(c)
		if err != nil {
			return err
		}
		return ensureGuard(c, g)
	})
	if err != nil {
		return fmt.Errorf("hostnet: isolate bridge %s: %w", bridge, err)
	}
	return nil
}

// ensureIsolation queues the creation of banger's table and chains and of
// bridge's isolation rule unless present, and the removal of duplicates.
func ensureIsolation(c *nftables.Conn, existing []taggedRule, bridge string) {
	isolation := tag{role: roleIsolation, bridge: bridge}
	have := false
	for _, r := range existing {
		if r.tag == isolation {
			if have {
				c.DelRule(r.rule) // duplicate
			}
			have = true
		}
	}
	c.AddTable(natTable)
	c.AddChain(postRtg)
	c.AddChain(fwd)
	if !have {
		c.AddRule(isolationRule(bridge))
	}
}

// RemoveNAT removes the rules AddNAT installed for exactly this guest and
// tap. Nothing to remove (no rules, no table) is not an error. The bridge's
// isolation rule stays.
func (n *Net) RemoveNAT(guest netip.Addr, tap string) error {
	err := n.nftTxn(func(c *nftables.Conn) error {
		existing, err := listTagged(c)
		if err != nil {
			return err
		}
		for _, r := range existing {
			if r.tag.role != roleIsolation && r.tag.guest == guest && r.tag.tap == tap {
				c.DelRule(r.rule)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("hostnet: remove NAT for %s on %s: %w", guest, tap, err)
	}
	return nil
}

// NATRules lists the per-VM rules in banger's table, in chain order
// (postrouting, then forward). No table means no rules.
func (n *Net) NATRules() ([]NATRule, error) {
	c, err := n.nft()
	if err != nil {
		return nil, fmt.Errorf("hostnet: list NAT rules: %w", err)
	}
	existing, err := listTagged(c)
	if err != nil {
		return nil, fmt.Errorf("hostnet: list NAT rules: %w", err)
	}
	var out []NATRule
	for _, r := range existing {
		if r.tag.role == roleIsolation {
			continue
		}
		nr := NATRule{
			Guest: r.tag.guest, Tap: r.tag.tap, Bridge: r.tag.bridge, Role: r.tag.role,
			Chain: r.rule.Chain.Name, Handle: r.rule.Handle,
		}
		for _, e := range r.rule.Exprs {
			if ctr, ok := e.(*expr.Counter); ok {
				nr.Packets, nr.Bytes = ctr.Packets, ctr.Bytes
			}
		}
		out = append(out, nr)
	}
	return out, nil
}

type taggedRule struct {
	tag  tag
	rule *nftables.Rule
}

// listTagged returns the rules in banger's chains that carry a banger tag.
func listTagged(c *nftables.Conn) ([]taggedRule, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	found := false
	for _, t := range tables {
		found = found || t.Name == NATTable
	}
	if !found {
		return nil, nil
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	var out []taggedRule
	for _, want := range []*nftables.Chain{postRtg, fwd} {
		present := false
		for _, ch := range chains {
			present = present || (ch.Table.Name == NATTable && ch.Name == want.Name)
		}
		if !present {
			continue
		}
		rules, err := c.GetRules(natTable, want)
		if err != nil {
			return nil, fmt.Errorf("list rules of %s: %w", want.Name, err)
		}
		for _, r := range rules {
			comment, ok := userdata.GetString(r.UserData, userdata.TypeComment)
			if !ok {
				continue
			}
			t, ok := parseTag(comment)
			if !ok {
				continue
			}
			r.Table, r.Chain = natTable, want
			out = append(out, taggedRule{tag: t, rule: r})
		}
	}
	return out, nil
}

func checkGuest(g netip.Addr) error {
	if !g.Is4() || g.IsUnspecified() || g.IsMulticast() || g.IsLoopback() || g == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return fmt.Errorf("guest address %s is not a unicast IPv4 address", g)
	}
	return nil
}

// bridgeOf returns the name of the bridge tap is enslaved to, checking that
// one of the bridge's IPv4 subnets holds guest (and that guest is not the
// bridge's own address).
func (n *Net) bridgeOf(tap string, guest netip.Addr) (string, error) {
	link, err := n.h.LinkByName(tap)
	if err != nil {
		return "", fmt.Errorf("tap: %w", err)
	}
	m := link.Attrs().MasterIndex
	if m == 0 {
		return "", fmt.Errorf("%s is not attached to a bridge", tap)
	}
	br, err := n.h.LinkByIndex(m)
	if err != nil {
		return "", fmt.Errorf("master of %s: %w", tap, err)
	}
	if br.Type() != "bridge" {
		return "", fmt.Errorf("master of %s, %s, is a %s, not a bridge", tap, br.Attrs().Name, br.Type())
	}
	addrs, err := n.h.AddrList(br, unix.AF_INET)
	if err != nil {
		return "", fmt.Errorf("addresses of %s: %w", br.Attrs().Name, err)
	}
	var subnets []string
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if !ok {
			continue
		}
		if p.Addr() == guest {
			return "", fmt.Errorf("guest address %s is the address of bridge %s", guest, br.Attrs().Name)
		}
		if p.Masked().Contains(guest) {
			return br.Attrs().Name, nil
		}
		subnets = append(subnets, p.String())
	}
	if len(subnets) == 0 {
		return "", fmt.Errorf("bridge %s has no IPv4 address", br.Attrs().Name)
	}
	return "", fmt.Errorf("guest address %s is outside bridge %s's subnets (%s)", guest, br.Attrs().Name, strings.Join(subnets, ", "))
}

// Rule building. Registers: everything loads into register 1.

func ifname(s string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, s)
	return b
}

func metaCmp(key expr.MetaKey, op expr.CmpOp, data []byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: data},
	}
}

func ipv4() []expr.Any {
	return metaCmp(expr.MetaKeyNFPROTO, expr.CmpOpEq, []byte{unix.NFPROTO_IPV4})
}

// ip4Addr matches the IPv4 source (offset 12) or destination (16) address.
func ip4Addr(offset uint32, a netip.Addr) []expr.Any {
	b := a.As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b[:]},
	}
}

func ctEstablishedRelated() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{
			SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0),
		},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func vmRule(t tag) *nftables.Rule {
	br := ifname(t.bridge)
	r := &nftables.Rule{Table: natTable, UserData: userdata.AppendString(nil, userdata.TypeComment, t.String())}
	switch t.role {
	case RoleMasquerade:
		r.Chain = postRtg
		r.Exprs = concat(ipv4(), ip4Addr(12, t.guest), metaCmp(expr.MetaKeyOIFNAME, expr.CmpOpNeq, br),
			[]expr.Any{&expr.Counter{}, &expr.Masq{}})
	case RoleForwardOut:
		r.Chain = fwd
		r.Exprs = concat(metaCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, br), metaCmp(expr.MetaKeyOIFNAME, expr.CmpOpNeq, br),
			ipv4(), ip4Addr(12, t.guest),
			[]expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept}})
	case RoleForwardIn:
		r.Chain = fwd
		r.Exprs = concat(metaCmp(expr.MetaKeyOIFNAME, expr.CmpOpEq, br), metaCmp(expr.MetaKeyIIFNAME, expr.CmpOpNeq, br),
			ipv4(), ip4Addr(16, t.guest), ctEstablishedRelated(),
			[]expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept}})
	default:
		panic("hostnet: unknown NAT role " + t.role)
	}
	return r
}

func isolationRule(bridge string) *nftables.Rule {
	br := ifname(bridge)
	return &nftables.Rule{
		Table: natTable, Chain: fwd,
		UserData: userdata.AppendString(nil, userdata.TypeComment, tag{role: roleIsolation, bridge: bridge}.String()),
		Exprs: concat(metaCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, br), metaCmp(expr.MetaKeyOIFNAME, expr.CmpOpNeq, br),
			[]expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}),
	}
}
