package vm

import (
	"net/netip"
	"strings"
	"testing"
)

func TestAllocateIPSkipsUsedGatewayAndBroadcast(t *testing.T) {
	n := netip.MustParsePrefix("172.30.0.0/29") // .1 gateway, .2-.6 guests, .7 broadcast
	if g := gateway(n); g.String() != "172.30.0.1/29" {
		t.Fatalf("gateway %s", g)
	}
	used := map[string]bool{}
	var got []string
	for i := 0; i < 5; i++ {
		a, err := allocateIP(n, used)
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		used[a.String()] = true
		got = append(got, a.String())
	}
	if strings.Join(got, " ") != "172.30.0.2 172.30.0.3 172.30.0.4 172.30.0.5 172.30.0.6" {
		t.Fatalf("allocated %v", got)
	}
	if _, err := allocateIP(n, used); err == nil || !strings.Contains(err.Error(), "no free guest address") {
		t.Fatalf("full network: %v", err)
	}
	delete(used, "172.30.0.4")
	if a, _ := allocateIP(n, used); a.String() != "172.30.0.4" {
		t.Fatalf("freed address not reused first: %s", a)
	}
}

func TestNamesAndDerivedIdentifiers(t *testing.T) {
	for _, ok := range []string{"a", "dev", "brisk-otter", "x1", strings.Repeat("a", 63)} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "a-", "A", "a_b", "a.b", strings.Repeat("a", 64), "a b"} {
		if err := ValidateName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	for i := 0; i < 20; i++ {
		if n := GenerateName(); ValidateName(n) != nil {
			t.Fatalf("generated name %q is invalid", n)
		}
	}
	if m := macFor(netip.MustParseAddr("172.30.0.5")); m != "02:fc:ac:1e:00:05" {
		t.Fatalf("mac %s", m)
	}
	if tp := tapFor("0123456789abcdef"); tp != "bgtap01234567" || len(tp) > 15 {
		t.Fatalf("tap %s", tp)
	}
}
