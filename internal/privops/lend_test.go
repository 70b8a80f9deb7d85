package privops

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/hostnet"
)

// lendNS makes a throwaway network namespace with banger's bridge and the
// parent's pinned tap, and a Local acting in it.
func lendNS(t *testing.T) (*Local, *hostnet.Net, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	b := make([]byte, 4)
	rand.Read(b)
	ns := "bgt-lend-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	p, _ := testPolicy(t)
	l := &Local{Policy: p, NetNS: "/run/netns/" + ns}
	ctx := context.Background()
	if err := l.EnsureBridge(ctx, BridgeReq{Name: "bangerl", Gateway: "172.31.9.1/24"}); err != nil {
		t.Fatal(err)
	}
	if err := l.CreateTap(ctx, TapReq{Name: "bgtapparent1", Bridge: "bangerl", MAC: "02:fc:ac:1f:09:02", GuestIP: "172.31.9.2"}); err != nil {
		t.Fatal(err)
	}
	n, err := hostnet.Open(l.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return l, n, ns
}

func linkLine(t *testing.T, ns, name string) string {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "-o", "link", "show", "dev", name).CombinedOutput()
	if err != nil {
		return ""
	}
	return string(out)
}

func ifindex(t *testing.T, ns, name string) string {
	line := linkLine(t, ns, name)
	i, _, _ := strings.Cut(line, ":")
	return i
}

func pinsOf(t *testing.T, n *hostnet.Net) map[string]string {
	t.Helper()
	pins, err := n.TapPins()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, p := range pins {
		m[p.Tap] = p.MAC.String() + " " + p.IP.String()
	}
	return m
}

var kidLend = &LendReq{PinnedTap: "bgtapparent1", Tap: "bgtapkid00001", Bridge: "bangerl", MAC: "02:fc:ac:1f:09:03", GuestIP: "172.31.9.3"}

// TestLendTapNameForARestore: during a lend the parent's tap waits aside
// (same device) and a fresh tap on no bridge holds the name; after a load
// the fresh tap is the fork's own (enslaved, up, pinned to the fork) and
// the parent's tap has its name, bridge, state and pin back.
func TestLendTapNameForARestore(t *testing.T) {
	l, n, ns := lendNS(t)
	ctx := context.Background()
	parent := ifindex(t, ns, "bgtapparent1")
	if err := lendName(n, kidLend, 0, 0); err != nil {
		t.Fatal(err)
	}
	if got := ifindex(t, ns, "bgasdparent1"); got != parent {
		t.Fatalf("the parent's tap is not aside (aside ifindex %q, parent %s)", got, parent)
	}
	fresh := linkLine(t, ns, "bgtapparent1")
	if fresh == "" || strings.Contains(fresh, "master") || ifindex(t, ns, "bgtapparent1") == parent {
		t.Fatalf("the lent name is not a fresh tap on no bridge: %q", fresh)
	}
	freshIdx := ifindex(t, ns, "bgtapparent1")
	if err := l.giveBack(ctx, kidLend, true); err != nil {
		t.Fatal(err)
	}
	if got := ifindex(t, ns, "bgtapparent1"); got != parent {
		t.Fatalf("the parent's name is on ifindex %s, want %s", got, parent)
	}
	if line := linkLine(t, ns, "bgtapparent1"); !strings.Contains(line, "master bangerl") || !strings.Contains(line, ",UP") {
		t.Fatalf("the parent's tap after the lend: %q", line)
	}
	kid := linkLine(t, ns, "bgtapkid00001")
	if ifindex(t, ns, "bgtapkid00001") != freshIdx || !strings.Contains(kid, "master bangerl") || !strings.Contains(kid, ",UP") {
		t.Fatalf("the fork's tap: %q (want ifindex %s)", kid, freshIdx)
	}
	if linkLine(t, ns, "bgasdparent1") != "" {
		t.Fatal("a tap is left aside")
	}
	pins := pinsOf(t, n)
	if pins["bgtapparent1"] != "02:fc:ac:1f:09:02 172.31.9.2" || pins["bgtapkid00001"] != "02:fc:ac:1f:09:03 172.31.9.3" {
		t.Fatalf("pins after the lend: %v", pins)
	}
}

// TestLendWithoutLoadDropsTheFreshTap: a failed load deletes the fresh tap
// (not the parent's pin) and gives the name back.
func TestLendWithoutLoadDropsTheFreshTap(t *testing.T) {
	l, n, ns := lendNS(t)
	parent := ifindex(t, ns, "bgtapparent1")
	if err := lendName(n, kidLend, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := l.giveBack(context.Background(), kidLend, false); err != nil {
		t.Fatal(err)
	}
	if got := ifindex(t, ns, "bgtapparent1"); got != parent {
		t.Fatalf("the parent's name is on ifindex %s, want %s", got, parent)
	}
	if linkLine(t, ns, "bgtapkid00001") != "" || linkLine(t, ns, "bgasdparent1") != "" {
		t.Fatal("a lend that never loaded left a tap")
	}
	if pins := pinsOf(t, n); pins["bgtapparent1"] != "02:fc:ac:1f:09:02 172.31.9.2" {
		t.Fatalf("the parent's pin: %v", pins)
	}
}

// TestHelperDiedMidLend: a helper killed between lending and giving back
// leaves the parent's tap aside; the next CreateTap of the parent (wake or
// reconcile) takes the name back, dropping the stale fresh tap.
func TestHelperDiedMidLend(t *testing.T) {
	l, n, ns := lendNS(t)
	parent := ifindex(t, ns, "bgtapparent1")
	if err := lendName(n, kidLend, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := l.CreateTap(context.Background(), TapReq{Name: "bgtapparent1", Bridge: "bangerl", MAC: "02:fc:ac:1f:09:02", GuestIP: "172.31.9.2"}); err != nil {
		t.Fatal(err)
	}
	if got := ifindex(t, ns, "bgtapparent1"); got != parent {
		t.Fatalf("after recovery the parent's name is on ifindex %s, want %s", got, parent)
	}
	if linkLine(t, ns, "bgasdparent1") != "" {
		t.Fatal("the parent's tap is still aside")
	}
	// And a lend after the crash works from the state it left.
	if err := lendName(n, kidLend, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := l.giveBack(context.Background(), kidLend, true); err != nil {
		t.Fatal(err)
	}
	if got := ifindex(t, ns, "bgtapparent1"); got != parent {
		t.Fatalf("after a second lend the parent's name is on ifindex %s, want %s", got, parent)
	}
}
