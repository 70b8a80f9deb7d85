package hostnet

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// InputChain is the chain of table inet banger that limits what guests
// reach on the host itself (see RestrictHostInput).
const InputChain = "input"

var inputChain = &nftables.Chain{
	Name: InputChain, Table: natTable, Type: nftables.ChainTypeFilter,
	Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter,
	Policy: policy(nftables.ChainPolicyAccept),
}

const hostInputTaps = "banger host-input taps=" + TapPrefix + " drop"

func hostInputPrefix(bridge string) string { return "banger host-input bridge=" + bridge + " " }

// RestrictHostInput limits what guests on bridge may reach on the host
// itself, in chain input of table inet banger (hook input, so it sees only
// packets addressed to the host, never bridged or routed ones):
//
//	iifname bridge ct state established,related accept
//	iifname bridge ip daddr gateway tcp dport P accept    (each P in allowTCP)
//	iifname bridge ip daddr gateway udp dport P accept    (each P in allowUDP)
//	iifname bridge drop
//	iifname "bgtap*" drop                                  (a tap that lost its bridge)
//
// So a guest reaches only the listed ports on the gateway address, plus
// replies to connections the host opened (SSH, agent); not other host
// services, not other host addresses, not ICMP echo. Forwarding (NAT) and
// guest-to-guest traffic on the bridge are not affected. Every rule has a
// counter and a comment naming its bridge.
//
// It is idempotent, and atomic: calling it again with another gateway or
// port list replaces bridge's rules in one batch (when nothing changed,
// nothing is written). Empty port lists allow nothing but replies.
func (n *Net) RestrictHostInput(bridge string, gateway netip.Addr, allowTCP, allowUDP []uint16) error {
	if err := checkIfname(bridge); err != nil {
		return fmt.Errorf("hostnet: restrict host input: %w", err)
	}
	if err := checkGuest(gateway); err != nil {
		return fmt.Errorf("hostnet: restrict host input on %s: gateway: %w", bridge, err)
	}
	tcp, udp := ports(allowTCP), ports(allowUDP)
	if slices.Contains(tcp, 0) || slices.Contains(udp, 0) {
		return fmt.Errorf("hostnet: restrict host input on %s: port 0", bridge)
	}
	want := hostInputRules(bridge, gateway, tcp, udp)
	err := n.nftTxn(func(c *nftables.Conn) error {
		rules, present, err := readInput(c)
		if err != nil {
			return err
		}
		c.AddTable(natTable)
		if !present {
			c.AddChain(inputChain)
		}
		var mine []*nftables.Rule
		var have []string
		taps := false
		for _, r := range rules {
			s := ruleComment(r)
			switch {
			case s == hostInputTaps && !taps:
				taps = true
			case s == hostInputTaps:
				if err := c.DelRule(r); err != nil { // duplicate
					return err
				}
			case strings.HasPrefix(s, hostInputPrefix(bridge)):
				mine = append(mine, r)
				have = append(have, s)
			}
		}
		var wantTags []string
		for _, r := range want {
			wantTags = append(wantTags, ruleComment(r))
		}
		if !slices.Equal(have, wantTags) {
			for _, r := range mine {
				if err := c.DelRule(r); err != nil {
					return err
				}
			}
			for _, r := range want {
				c.AddRule(r)
			}
		}
		if !taps {
			c.AddRule(tapsInputRule())
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("hostnet: restrict host input on %s: %w", bridge, err)
	}
	return nil
}

// ports returns p sorted, without duplicates.
func ports(p []uint16) []uint16 {
	p = slices.Clone(p)
	slices.Sort(p)
	return slices.Compact(p)
}

func readInput(c *nftables.Conn) ([]*nftables.Rule, bool, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, false, fmt.Errorf("list tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == NATTable }) {
		return nil, false, nil
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, false, fmt.Errorf("list chains: %w", err)
	}
	if !slices.ContainsFunc(chains, func(ch *nftables.Chain) bool { return ch.Table.Name == NATTable && ch.Name == InputChain }) {
		return nil, false, nil
	}
	rules, err := c.GetRules(natTable, inputChain)
	if err != nil {
		return nil, true, fmt.Errorf("list rules of %s: %w", InputChain, err)
	}
	for _, r := range rules {
		r.Table, r.Chain = natTable, inputChain
	}
	return rules, true, nil
}

func hostInputRules(bridge string, gw netip.Addr, tcp, udp []uint16) []*nftables.Rule {
	br := metaCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, ifname(bridge))
	p := hostInputPrefix(bridge)
	rule := func(tag string, exprs ...[]expr.Any) *nftables.Rule {
		return &nftables.Rule{Table: natTable, Chain: inputChain, UserData: comment(p + tag), Exprs: concat(exprs...)}
	}
	accept := []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept}}
	out := []*nftables.Rule{rule("established", br, ctEstablishedRelated(), accept)}
	for _, l4 := range []struct {
		name  string
		proto byte
		ports []uint16
	}{{"tcp", 6, tcp}, {"udp", 17, udp}} {
		for _, port := range l4.ports {
			out = append(out, rule(fmt.Sprintf("gw=%s %s=%d", gw, l4.name, port),
				br, ipv4(), ip4Addr(16, gw),
				metaCmp(expr.MetaKeyL4PROTO, expr.CmpOpEq, []byte{l4.proto}),
				[]expr.Any{
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(port >> 8), byte(port)}},
				},
				accept))
		}
	}
	return append(out, rule("drop", br, []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}))
}

func tapsInputRule() *nftables.Rule {
	return &nftables.Rule{
		Table: natTable, Chain: inputChain, UserData: comment(hostInputTaps),
		Exprs: concat(metaCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, []byte(TapPrefix)),
			[]expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}),
	}
}
