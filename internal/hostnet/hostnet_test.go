package hostnet

// These tests need root, ip and nft. Each creates its own network namespaces
// (ip netns add banger-t-<random>, deleted in cleanup) and drives the real
// code inside them through Open("/run/netns/..."). The root namespace must
// never change: every test checks that on cleanup, and TestMain checks it once
// more over the whole run. ip and nft are only used to look, never to set
// up what the package under test is responsible for.

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const helperEnv = "BANGER_HOSTNET_TEST_OPEN_TAP"

func TestMain(m *testing.M) {
	if name := os.Getenv(helperEnv); name != "" {
		os.Exit(helperOpenTap(name))
	}
	if !canRun() {
		os.Exit(m.Run()) // the tests skip themselves
	}
	before, err := rootState()
	if err != nil {
		fmt.Fprintln(os.Stderr, "snapshot root netns:", err)
		os.Exit(1)
	}
	code := m.Run()
	after, err := rootState()
	if err != nil {
		fmt.Fprintln(os.Stderr, "snapshot root netns:", err)
		os.Exit(1)
	}
	if after != before {
		fmt.Fprintf(os.Stderr, "ROOT NETWORK NAMESPACE CHANGED during the tests\n--- before\n%s\n--- after\n%s\n", before, after)
		code = 1
	}
	os.Exit(code)
}

// helperOpenTap runs in a child process started as root inside a test
// namespace. Like a VMM, it opens /dev/net/tun there (this machine's
// /dev/net/tun is root-only), then drops to the uid:gid named in the
// environment, losing all capabilities, and attaches to the tap by name.
func helperOpenTap(name string) int {
	var uid, gid int
	if _, err := fmt.Sscanf(os.Getenv(helperEnv+"_AS"), "%d:%d", &uid, &gid); err != nil {
		fmt.Println("bad", helperEnv+"_AS:", err)
		return 2
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Println("open:", err)
		return 2
	}
	// Go applies these to every thread of the process.
	if err := unix.Setgroups(nil); err != nil {
		fmt.Println("setgroups:", err)
		return 2
	}
	if err := unix.Setresgid(gid, gid, gid); err != nil {
		fmt.Println("setresgid:", err)
		return 2
	}
	if err := unix.Setresuid(uid, uid, uid); err != nil {
		fmt.Println("setresuid:", err)
		return 2
	}
	status, _ := os.ReadFile("/proc/self/status")
	if !strings.Contains(string(status), "CapEff:\t0000000000000000") {
		fmt.Printf("capabilities not dropped:\n%s", status)
		return 2
	}
	ifr, _ := unix.NewIfreq(name)
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		fmt.Printf("uid %d gid %d: TUNSETIFF: %v\n", uid, gid, err)
		return 3
	}
	fmt.Printf("uid %d gid %d attached to %s\n", uid, gid, name)
	return 0
}

func canRun() bool {
	if os.Geteuid() != 0 {
		return false
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			return false
		}
	}
	_, err := os.Stat("/dev/net/tun")
	return err == nil
}

// rootState renders what must not change in the test process's own (root)
// namespace: links, addresses, routes, the nftables ruleset, ip_forward.
func rootState() (string, error) {
	var b strings.Builder
	links, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		return "", fmt.Errorf("ip link: %w", err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(links)), "\n") {
		// "4: eth0: <FLAGS> mtu ... master X state UP ..." — keep index,
		// name, master; ignore volatile state.
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		master := ""
		if i := slices.Index(f, "master"); i >= 0 && i+1 < len(f) {
			master = " master " + f[i+1]
		}
		fmt.Fprintf(&b, "link %s %s%s\n", f[0], f[1], master)
	}
	for _, args := range [][]string{{"ip", "-o", "addr", "show"}, {"ip", "route", "show", "table", "all"}, {"nft", "list", "ruleset"}} {
		out, err := exec.Command(args[0], args[1:]...).Output()
		if err != nil {
			return "", fmt.Errorf("%s: %w", strings.Join(args, " "), err)
		}
		fmt.Fprintf(&b, "%s:\n%s\n", strings.Join(args, " "), out)
	}
	fwd, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		return "", err
	}
	fmt.Fprintf(&b, "ip_forward %s", fwd)
	return b.String(), nil
}

func requireRoot(t *testing.T) {
	t.Helper()
	if !canRun() {
		t.Skip("needs root, ip, nft and /dev/net/tun")
	}
}

// guardRoot fails the test if the root namespace differs at cleanup from
// when the test started. Register it first so it runs last.
func guardRoot(t *testing.T) {
	t.Helper()
	before, err := rootState()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		after, err := rootState()
		if err != nil {
			t.Error(err)
			return
		}
		if after != before {
			t.Errorf("root network namespace changed\n--- before\n%s\n--- after\n%s", before, after)
		}
	})
}

// newNS creates a uniquely named namespace with lo up and deletes it in
// cleanup.
func newNS(t *testing.T) string {
	t.Helper()
	var r [4]byte
	rand.Read(r[:])
	name := "banger-t-" + hex.EncodeToString(r[:])
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// setup guards the root namespace, makes a namespace and opens a Net on it.
func setup(t *testing.T) (*Net, string) {
	t.Helper()
	requireRoot(t)
	guardRoot(t)
	ns := newNS(t)
	n, err := Open("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n, ns
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

type ipLink struct {
	Name     string   `json:"ifname"`
	Flags    []string `json:"flags"`
	Master   string   `json:"master"`
	Address  string   `json:"address"`
	LinkInfo struct {
		Kind string         `json:"info_kind"`
		Data map[string]any `json:"info_data"`
	} `json:"linkinfo"`
	AddrInfo []struct {
		Family    string `json:"family"`
		Local     string `json:"local"`
		PrefixLen int    `json:"prefixlen"`
	} `json:"addr_info"`
}

// links lists the namespace's links as ip sees them, by name.
func links(t *testing.T, ns string) map[string]ipLink {
	t.Helper()
	var ls []ipLink
	if err := json.Unmarshal([]byte(run(t, "ip", "-n", ns, "-d", "-j", "link", "show")), &ls); err != nil {
		t.Fatal(err)
	}
	var as []ipLink
	if err := json.Unmarshal([]byte(run(t, "ip", "-n", ns, "-j", "addr", "show")), &as); err != nil {
		t.Fatal(err)
	}
	m := map[string]ipLink{}
	for _, l := range ls {
		m[l.Name] = l
	}
	for _, a := range as {
		l := m[a.Name]
		l.AddrInfo = a.AddrInfo
		m[a.Name] = l
	}
	return m
}

func (l ipLink) up() bool { return slices.Contains(l.Flags, "UP") }

func (l ipLink) inet() []string {
	var out []string
	for _, a := range l.AddrInfo {
		if a.Family == "inet" {
			out = append(out, fmt.Sprintf("%s/%d", a.Local, a.PrefixLen))
		}
	}
	return out
}

var gw = netip.MustParsePrefix("172.30.0.1/24")

func TestOpenRejectsNonNetns(t *testing.T) {
	requireRoot(t)
	for _, p := range []string{"/nonexistent/netns", "/etc/hostname", "/proc/self/ns/mnt"} {
		if n, err := Open(p); err == nil {
			n.Close()
			t.Errorf("Open(%s) succeeded", p)
		} else {
			t.Logf("Open(%s): %v", p, err)
		}
	}
}

// TestOpenCurrentNamespace: Open("") binds to the calling thread's
// namespace, and keeps acting there after the thread has left it.
func TestOpenCurrentNamespace(t *testing.T) {
	requireRoot(t)
	guardRoot(t)
	ns := newNS(t)
	nch := make(chan *Net, 1)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with us
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		n, err := Open("")
		errc <- err
		nch <- n
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	n := <-nch
	defer n.Close()
	if err := n.EnsureBridge("br-t", gw); err != nil {
		t.Fatal(err)
	}
	if _, ok := links(t, ns)["br-t"]; !ok {
		t.Fatalf("bridge not created in %s", ns)
	}
}

func TestEnsureBridgeIdempotent(t *testing.T) {
	n, ns := setup(t)
	for i := 0; i < 2; i++ {
		if err := n.EnsureBridge("br-t", gw); err != nil {
			t.Fatalf("EnsureBridge #%d: %v", i+1, err)
		}
	}
	ls := links(t, ns)
	var bridges []string
	for name, l := range ls {
		if l.LinkInfo.Kind == "bridge" {
			bridges = append(bridges, name)
		}
	}
	if !slices.Equal(bridges, []string{"br-t"}) {
		t.Fatalf("bridges = %v, want [br-t]", bridges)
	}
	br := ls["br-t"]
	if got := br.inet(); !slices.Equal(got, []string{"172.30.0.1/24"}) {
		t.Errorf("bridge addresses = %v, want [172.30.0.1/24]", got)
	}
	if !br.up() {
		t.Errorf("bridge not up: %v", br.Flags)
	}
	if br.Address != bridgeMAC("br-t").String() {
		t.Errorf("bridge MAC %s, want %s", br.Address, bridgeMAC("br-t"))
	}

	// Same IP with another prefix length: replaced, not added beside.
	if err := n.EnsureBridge("br-t", netip.MustParsePrefix("172.30.0.1/16")); err != nil {
		t.Fatal(err)
	}
	if got := links(t, ns)["br-t"].inet(); !slices.Equal(got, []string{"172.30.0.1/16"}) {
		t.Errorf("after prefix change: addresses = %v, want [172.30.0.1/16]", got)
	}

	// Set down by someone: brought back up.
	run(t, "ip", "-n", ns, "link", "set", "br-t", "down")
	if err := n.EnsureBridge("br-t", netip.MustParsePrefix("172.30.0.1/16")); err != nil {
		t.Fatal(err)
	}
	if !links(t, ns)["br-t"].up() {
		t.Error("bridge not brought back up")
	}
}

func TestEnsureBridgeRefusesNonBridgeAndBadGateway(t *testing.T) {
	n, ns := setup(t)
	run(t, "ip", "-n", ns, "link", "add", "veth-t", "type", "veth", "peer", "name", "veth-t-peer")
	if err := n.EnsureBridge("veth-t", gw); err == nil || !strings.Contains(err.Error(), "is a veth, not a bridge") {
		t.Errorf("EnsureBridge on a veth: %v", err)
	}
	if got := links(t, ns)["veth-t"].inet(); len(got) != 0 {
		t.Errorf("veth got addresses %v", got)
	}
	for _, bad := range []string{"2001:db8::1/64", "172.30.0.1/32", "172.30.0.1/31", "172.30.0.0/24", "172.30.0.255/24", "0.0.0.1/0"} {
		if err := n.EnsureBridge("br-t", netip.MustParsePrefix(bad)); err == nil {
			t.Errorf("EnsureBridge with gateway %s succeeded", bad)
		}
	}
	if err := n.EnsureBridge("br-t", netip.Prefix{}); err == nil {
		t.Error("EnsureBridge with a zero prefix succeeded")
	}
	if _, ok := links(t, ns)["br-t"]; ok {
		t.Error("bridge created despite a bad gateway")
	}
}

func TestCreateTap(t *testing.T) {
	n, ns := setup(t)
	if err := n.EnsureBridge("br-t", gw); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := n.CreateTap("tap-t0", "br-t", 1234, 5678); err != nil {
			t.Fatalf("CreateTap #%d: %v", i+1, err)
		}
	}
	ls := links(t, ns)
	tap := ls["tap-t0"]
	t.Logf("tap: kind %s data %v master %s flags %v", tap.LinkInfo.Kind, tap.LinkInfo.Data, tap.Master, tap.Flags)
	if tap.LinkInfo.Kind != "tun" || tap.LinkInfo.Data["type"] != "tap" {
		t.Errorf("tap-t0 is %s %v, want a tun/tap", tap.LinkInfo.Kind, tap.LinkInfo.Data["type"])
	}
	if tap.Master != "br-t" {
		t.Errorf("tap master = %q, want br-t", tap.Master)
	}
	if !tap.up() {
		t.Errorf("tap not up: %v", tap.Flags)
	}
	if tap.LinkInfo.Data["persist"] != true {
		t.Errorf("tap not persistent: %v", tap.LinkInfo.Data)
	}
	if fmt.Sprint(tap.LinkInfo.Data["user"]) != "1234" || fmt.Sprint(tap.LinkInfo.Data["group"]) != "5678" {
		t.Errorf("tap owner %v:%v, want 1234:5678", tap.LinkInfo.Data["user"], tap.LinkInfo.Data["group"])
	}
	if ls["br-t"].Address != bridgeMAC("br-t").String() {
		t.Errorf("bridge MAC changed to %s when the tap joined", ls["br-t"].Address)
	}

	// A process running as the owner, with the group, can attach without
	// privileges. The kernel requires both to match when both are set.
	if out, err := openTapAs(t, ns, "tap-t0", 1234, 5678); err != nil {
		t.Errorf("owner could not attach: %v: %s", err, out)
	}
	for _, as := range [][2]int{{1234, 1234}, {4321, 5678}, {4321, 4321}} {
		out, err := openTapAs(t, ns, "tap-t0", as[0], as[1])
		if err == nil || !strings.Contains(out, "TUNSETIFF: operation not permitted") {
			t.Errorf("%d:%d: want TUNSETIFF refused, got %v: %s", as[0], as[1], err, out)
		}
	}

	// Conflicts are errors and change nothing.
	if err := n.EnsureBridge("br-t2", netip.MustParsePrefix("172.31.0.1/24")); err != nil {
		t.Fatal(err)
	}
	if err := n.CreateTap("tap-t0", "br-t2", 1234, 5678); err == nil || !strings.Contains(err.Error(), "attached to br-t") {
		t.Errorf("CreateTap on another bridge: %v", err)
	}
	if err := n.CreateTap("tap-t0", "br-t", 1000, 5678); err == nil || !strings.Contains(err.Error(), "owner 1234:5678") {
		t.Errorf("CreateTap with another owner: %v", err)
	}
	if err := n.CreateTap("br-t2", "br-t", 1234, 5678); err == nil || !strings.Contains(err.Error(), "not a tap") {
		t.Errorf("CreateTap over a bridge: %v", err)
	}
	if err := n.CreateTap("tap-t1", "nobr", 1234, 5678); err == nil {
		t.Error("CreateTap onto a missing bridge succeeded")
	}
	if err := n.CreateTap("tap-t1", "tap-t0", 1234, 5678); err == nil || !strings.Contains(err.Error(), "not a bridge") {
		t.Errorf("CreateTap onto a tap: %v", err)
	}
	if err := n.CreateTap("tap-t1", "br-t", -1, 0); err == nil {
		t.Error("CreateTap with owner -1 succeeded")
	}
	ls = links(t, ns)
	if ls["tap-t0"].Master != "br-t" {
		t.Errorf("tap-t0 moved to %s", ls["tap-t0"].Master)
	}
	if _, ok := ls["tap-t1"]; ok {
		t.Error("failed CreateTap left tap-t1 behind")
	}

	// A tap left unattached (interrupted create) is adopted.
	run(t, "ip", "-n", ns, "link", "set", "tap-t0", "nomaster")
	if err := n.CreateTap("tap-t0", "br-t", 1234, 5678); err != nil {
		t.Fatal(err)
	}
	if m := links(t, ns)["tap-t0"].Master; m != "br-t" {
		t.Errorf("unattached tap not re-attached: master %q", m)
	}
}

// openTapAs attaches to a tap as an unprivileged uid:gid inside ns, using
// this test binary as the VMM stand-in.
func openTapAs(t *testing.T, ns, tap string, uid, gid int) (string, error) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, self)
	cmd.Env = append(os.Environ(), helperEnv+"="+tap, fmt.Sprintf("%s_AS=%d:%d", helperEnv, uid, gid))
	out, err := cmd.CombinedOutput()
	t.Logf("helper as %d:%d: %s", uid, gid, bytes.TrimSpace(out))
	return string(out), err
}

func TestDeleteTap(t *testing.T) {
	n, ns := setup(t)
	if err := n.EnsureBridge("br-t", gw); err != nil {
		t.Fatal(err)
	}
	if err := n.CreateTap("tap-t0", "br-t", 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := n.DeleteTap("tap-t0"); err != nil {
		t.Fatal(err)
	}
	if _, ok := links(t, ns)["tap-t0"]; ok {
		t.Fatal("tap still there")
	}
	if err := n.DeleteTap("tap-t0"); err != nil {
		t.Fatalf("deleting an absent tap: %v", err)
	}
	run(t, "ip", "-n", ns, "link", "add", "tap-veth", "type", "veth", "peer", "name", "tap-veth-peer")
	run(t, "ip", "-n", ns, "tuntap", "add", "dev", "tun-t0", "mode", "tun")
	for _, name := range []string{"tap-veth", "tun-t0", "br-t"} {
		if err := n.DeleteTap(name); err == nil || !strings.Contains(err.Error(), "not a tap") {
			t.Errorf("DeleteTap(%s): %v", name, err)
		}
		if _, ok := links(t, ns)[name]; !ok {
			t.Errorf("%s was deleted", name)
		}
	}
}

func TestListLinks(t *testing.T) {
	n, _ := setup(t)
	if err := n.EnsureBridge("br-t", gw); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"tap-t2", "tap-t0", "tap-t1"} {
		if err := n.CreateTap(name, "br-t", 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	got, err := n.ListLinks("tap-t")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"tap-t0", "tap-t1", "tap-t2"}; !slices.Equal(got, want) {
		t.Errorf("ListLinks(tap-t) = %v, want %v", got, want)
	}
	all, _ := n.ListLinks("")
	if want := []string{"br-t", "lo", "tap-t0", "tap-t1", "tap-t2"}; !slices.Equal(all, want) {
		t.Errorf("ListLinks() = %v, want %v", all, want)
	}
	none, _ := n.ListLinks("eth")
	if len(none) != 0 {
		t.Errorf("ListLinks(eth) = %v", none)
	}
}

func TestEnableForwarding(t *testing.T) {
	n, ns := setup(t)
	read := func() string {
		return strings.TrimSpace(run(t, "ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ip_forward"))
	}
	if v := read(); v != "0" {
		t.Fatalf("fresh namespace has ip_forward=%s", v)
	}
	for i := 0; i < 2; i++ {
		if err := n.EnableForwarding(); err != nil {
			t.Fatal(err)
		}
	}
	if v := read(); v != "1" {
		t.Fatalf("ip_forward=%s after EnableForwarding", v)
	}
	// (guardRoot checks that the root namespace's ip_forward is unchanged.)
}

// nftRules reads the namespace's ruleset with nft -j and returns banger's
// rules by chain, as "comment" strings.
type nftRule struct {
	Family, Table, Chain, Comment string
	Handle                        int
}

func nftRules(t *testing.T, ns string) []nftRule {
	t.Helper()
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(run(t, "ip", "netns", "exec", ns, "nft", "-j", "list", "ruleset")), &doc); err != nil {
		t.Fatal(err)
	}
	var out []nftRule
	for _, obj := range doc.Nftables {
		raw, ok := obj["rule"]
		if !ok {
			continue
		}
		var r nftRule
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func comments(rules []nftRule) []string {
	var out []string
	for _, r := range rules {
		if r.Family != "inet" || r.Table != NATTable {
			continue
		}
		out = append(out, r.Chain+": "+r.Comment)
	}
	return out
}

func vmComments(guest, tap, bridge string) []string {
	return []string{
		"postrouting: banger nat role=masquerade guest=" + guest + " tap=" + tap + " bridge=" + bridge,
		"forward: banger nat role=forward-out guest=" + guest + " tap=" + tap + " bridge=" + bridge,
		"forward: banger nat role=forward-in guest=" + guest + " tap=" + tap + " bridge=" + bridge,
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func natSetup(t *testing.T) (*Net, string) {
	t.Helper()
	n, ns := setup(t)
	if err := n.EnsureBridge("br-t", gw); err != nil {
		t.Fatal(err)
	}
	for _, tap := range []string{"tap-a", "tap-b"} {
		if err := n.CreateTap(tap, "br-t", 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	return n, ns
}

var (
	guestA = netip.MustParseAddr("172.30.0.2")
	guestB = netip.MustParseAddr("172.30.0.3")
)

func TestNATAddRemove(t *testing.T) {
	n, ns := natSetup(t)
	if got, err := n.NATRules(); err != nil || len(got) != 0 {
		t.Fatalf("NATRules before any NAT = %v, %v", got, err)
	}
	if err := n.RemoveNAT(guestA, "tap-a"); err != nil {
		t.Fatalf("RemoveNAT without a table: %v", err)
	}

	for i := 0; i < 2; i++ {
		if err := n.AddNAT(guestA, "tap-a"); err != nil {
			t.Fatalf("AddNAT #%d: %v", i+1, err)
		}
	}
	isolation := "forward: banger isolation bridge=br-t"
	want := append(vmComments("172.30.0.2", "tap-a", "br-t"), isolation)
	if got := comments(nftRules(t, ns)); !slices.Equal(sorted(got), sorted(want)) {
		t.Fatalf("after AddNAT twice:\n got %q\nwant %q", got, want)
	}

	if err := n.AddNAT(guestB, "tap-b"); err != nil {
		t.Fatal(err)
	}
	text := run(t, "ip", "netns", "exec", ns, "nft", "list", "table", "inet", NATTable)
	t.Logf("nft list table inet banger:\n%s", text)
	// The rules say what the comments claim, and the forward accepts come
	// before the isolation drop.
	for _, line := range []string{
		`type nat hook postrouting priority srcnat; policy accept;`,
		`type filter hook forward priority filter; policy accept;`,
		`ip saddr 172.30.0.2 oifname != "br-t" counter packets 0 bytes 0 masquerade comment "banger nat role=masquerade guest=172.30.0.2 tap=tap-a bridge=br-t"`,
		`iifname "br-t" oifname != "br-t" ip saddr 172.30.0.3 counter packets 0 bytes 0 accept comment "banger nat role=forward-out guest=172.30.0.3 tap=tap-b bridge=br-t"`,
		`oifname "br-t" iifname != "br-t" ip daddr 172.30.0.2 ct state established,related counter packets 0 bytes 0 accept comment "banger nat role=forward-in guest=172.30.0.2 tap=tap-a bridge=br-t"`,
		`iifname "br-t" oifname != "br-t" counter packets 0 bytes 0 drop comment "banger isolation bridge=br-t"`,
	} {
		if !strings.Contains(text, line) {
			t.Errorf("ruleset lacks:\n%s", line)
		}
	}
	var fwdOrder []string
	for _, r := range nftRules(t, ns) {
		if r.Chain == ForwardChain {
			fwdOrder = append(fwdOrder, r.Comment)
		}
	}
	if len(fwdOrder) != 5 || fwdOrder[4] != "banger isolation bridge=br-t" {
		t.Errorf("forward chain order: %q (isolation must be last)", fwdOrder)
	}

	got, err := n.NATRules()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 6 {
		t.Fatalf("NATRules = %+v, want 6 rules", got)
	}
	for _, r := range got {
		if r.Bridge != "br-t" || r.Handle == 0 || (r.Guest == guestA) != (r.Tap == "tap-a") {
			t.Errorf("bad NATRule %+v", r)
		}
	}

	if err := n.RemoveNAT(guestA, "tap-a"); err != nil {
		t.Fatal(err)
	}
	want = append(vmComments("172.30.0.3", "tap-b", "br-t"), isolation)
	if got := comments(nftRules(t, ns)); !slices.Equal(sorted(got), sorted(want)) {
		t.Fatalf("after RemoveNAT(A):\n got %q\nwant %q", got, want)
	}
	if err := n.RemoveNAT(guestA, "tap-a"); err != nil {
		t.Fatalf("RemoveNAT again: %v", err)
	}
	// Only the exact guest+tap pair is removed.
	if err := n.RemoveNAT(guestB, "tap-a"); err != nil {
		t.Fatal(err)
	}
	if got := comments(nftRules(t, ns)); len(got) != 4 {
		t.Fatalf("RemoveNAT with a mismatched tap removed rules: %q", got)
	}
	if err := n.RemoveNAT(guestB, "tap-b"); err != nil {
		t.Fatal(err)
	}
	if got := comments(nftRules(t, ns)); !slices.Equal(got, []string{isolation}) {
		t.Fatalf("after removing both: %q", got)
	}
}

func TestIsolateBridgeIdempotent(t *testing.T) {
	n, ns := natSetup(t)
	for i := 0; i < 2; i++ {
		if err := n.IsolateBridge("br-t"); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.AddNAT(guestA, "tap-a"); err != nil {
		t.Fatal(err)
	}
	if err := n.IsolateBridge("br-t"); err != nil {
		t.Fatal(err)
	}
	want := append(vmComments("172.30.0.2", "tap-a", "br-t"), "forward: banger isolation bridge=br-t")
	if got := comments(nftRules(t, ns)); !slices.Equal(sorted(got), sorted(want)) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	if rules, _ := n.NATRules(); len(rules) != 3 {
		t.Errorf("NATRules lists %d rules, want the VM's 3", len(rules))
	}
}

func TestNATLeavesForeignRules(t *testing.T) {
	n, ns := natSetup(t)
	// Someone else's table and an untagged rule in ours survive.
	run(t, "ip", "netns", "exec", ns, "nft", "add table inet other; add chain inet other c; add rule inet other c ip saddr 172.30.0.2 counter")
	if err := n.AddNAT(guestA, "tap-a"); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "netns", "exec", ns, "nft", "add rule inet banger forward ip saddr 172.30.0.2 counter comment \"admin\"")
	if err := n.RemoveNAT(guestA, "tap-a"); err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, r := range nftRules(t, ns) {
		left = append(left, r.Table+"/"+r.Chain+": "+r.Comment)
	}
	want := []string{"banger/forward: banger isolation bridge=br-t", "banger/forward: admin", "other/c: "}
	if !slices.Equal(sorted(left), sorted(want)) {
		t.Errorf("rules left: %q, want %q", left, want)
	}
}

func TestNATReplacesStaleRules(t *testing.T) {
	n, ns := natSetup(t)
	if err := n.AddNAT(guestA, "tap-a"); err != nil {
		t.Fatal(err)
	}
	if err := n.AddNAT(guestB, "tap-b"); err != nil {
		t.Fatal(err)
	}
	// A new VM reuses tap-a with another address: the old rules go.
	guestC := netip.MustParseAddr("172.30.0.4")
	if err := n.AddNAT(guestC, "tap-a"); err != nil {
		t.Fatal(err)
	}
	want := append(append(vmComments("172.30.0.3", "tap-b", "br-t"), vmComments("172.30.0.4", "tap-a", "br-t")...),
		"forward: banger isolation bridge=br-t")
	if got := comments(nftRules(t, ns)); !slices.Equal(sorted(got), sorted(want)) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
}

func TestNATRefusesBadInput(t *testing.T) {
	n, ns := natSetup(t)
	run(t, "ip", "-n", ns, "tuntap", "add", "dev", "tap-loose", "mode", "tap")
	cases := []struct {
		guest netip.Addr
		tap   string
		want  string
	}{
		{netip.MustParseAddr("2001:db8::2"), "tap-a", "not a unicast IPv4"},
		{netip.Addr{}, "tap-a", "not a unicast IPv4"},
		{netip.MustParseAddr("10.0.0.2"), "tap-a", "outside bridge br-t's subnets (172.30.0.1/24)"},
		{netip.MustParseAddr("172.30.0.1"), "tap-a", "is the address of bridge br-t"},
		{guestA, "tap-missing", "tap-missing"},
		{guestA, "tap-loose", "not attached to a bridge"},
	}
	for _, c := range cases {
		err := n.AddNAT(c.guest, c.tap)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("AddNAT(%s, %s) = %v, want %q", c.guest, c.tap, err, c.want)
		}
	}
	if got := comments(nftRules(t, ns)); len(got) != 0 {
		t.Errorf("rules created by failed calls: %q", got)
	}
}

// TestNATTraffic runs real packets through the rules. Namespaces:
//
//	guest A (172.30.0.2) ─veth "tap-a"─┐
//	                                   br-t 172.30.0.1 [host ns] up0 198.51.100.1 ── uplink (198.51.100.2)
//	guest B (172.30.0.3) ─veth "tap-b"─┘
//
// veths stand in for taps (nothing here can drive a tap), so they are created
// with ip. The uplink has a route back to the guests, so without the
// isolation rule B's un-NATed packets would get through.
func TestNATTraffic(t *testing.T) {
	n, host := setup(t)
	up, ga, gb := newNS(t), newNS(t), newNS(t)
	if err := n.EnsureBridge("br-t", gw); err != nil {
		t.Fatal(err)
	}
	for _, g := range []struct{ ns, tap, addr string }{{ga, "tap-a", "172.30.0.2/24"}, {gb, "tap-b", "172.30.0.3/24"}} {
		run(t, "ip", "-n", host, "link", "add", g.tap, "type", "veth", "peer", "name", "eth0", "netns", g.ns)
		run(t, "ip", "-n", host, "link", "set", g.tap, "master", "br-t", "up")
		run(t, "ip", "-n", g.ns, "addr", "add", g.addr, "dev", "eth0")
		run(t, "ip", "-n", g.ns, "link", "set", "eth0", "up")
		run(t, "ip", "-n", g.ns, "route", "add", "default", "via", "172.30.0.1")
	}
	run(t, "ip", "-n", host, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", up)
	run(t, "ip", "-n", host, "addr", "add", "198.51.100.1/24", "dev", "up0")
	run(t, "ip", "-n", host, "link", "set", "up0", "up")
	run(t, "ip", "-n", up, "addr", "add", "198.51.100.2/24", "dev", "eth0")
	run(t, "ip", "-n", up, "link", "set", "eth0", "up")
	run(t, "ip", "-n", up, "route", "add", "172.30.0.0/24", "via", "198.51.100.1")

	if err := n.EnableForwarding(); err != nil {
		t.Fatal(err)
	}
	addr := echoSourceServer(t, up)

	// Before any NAT (no table yet): B's packets are forwarded un-NATed.
	// This shows the uplink's return route works, so the later refusals
	// are the rules' doing.
	if src, err := dialFrom(t, gb, addr); err != nil || src != "172.30.0.3" {
		t.Fatalf("before NAT, B: source %q, %v; want 172.30.0.3 (un-NATed)", src, err)
	}

	// Isolated bridge, no NAT yet: nobody gets out.
	if err := n.IsolateBridge("br-t"); err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{ga, gb} {
		if src, err := dialFrom(t, g, addr); err == nil {
			t.Fatalf("got through an isolated bridge as %s", src)
		}
	}

	if err := n.AddNAT(guestA, "tap-a"); err != nil {
		t.Fatal(err)
	}
	src, err := dialFrom(t, ga, addr)
	if err != nil {
		t.Fatalf("A with NAT: %v", err)
	}
	if src != "198.51.100.1" {
		t.Fatalf("uplink saw A as %s, want the masqueraded 198.51.100.1", src)
	}
	if src, err := dialFrom(t, gb, addr); err == nil {
		t.Fatalf("B without NAT got through as %s", src)
	}
	rules, err := n.NATRules()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if r.Packets == 0 {
			t.Errorf("rule %s for %s matched no packets", r.Role, r.Guest)
		}
	}

	if err := n.RemoveNAT(guestA, "tap-a"); err != nil {
		t.Fatal(err)
	}
	if src, err := dialFrom(t, ga, addr); err == nil {
		t.Fatalf("A got through as %s after RemoveNAT", src)
	}
	t.Logf("final ruleset:\n%s", run(t, "ip", "netns", "exec", host, "nft", "list", "table", "inet", NATTable))
}

// inNetNS runs f on a thread inside the named namespace; sockets made there
// stay there.
func inNetNS(t *testing.T, ns string, f func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with us
		fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

// echoSourceServer listens in ns and answers each connection with the source
// address it sees.
func echoSourceServer(t *testing.T, ns string) string {
	t.Helper()
	var ln net.Listener
	if err := inNetNS(t, ns, func() (err error) {
		ln, err = net.Listen("tcp4", "198.51.100.2:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			io.WriteString(c, host)
			c.Close()
		}
	}()
	return ln.Addr().String()
}

func dialFrom(t *testing.T, ns, addr string) (string, error) {
	t.Helper()
	var src string
	err := inNetNS(t, ns, func() error {
		c, err := net.DialTimeout("tcp4", addr, 1500*time.Millisecond)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		b, err := io.ReadAll(c)
		src = string(bytes.TrimSpace(b))
		return err
	})
	return src, err
}
