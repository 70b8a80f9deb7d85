// Package dnsroute routes the host's own lookups of <name>.vm to banger's
// DNS server where the host runs systemd-resolved: the bridge gets that
// server as its link DNS server and "~vm" as its routing-only domain, and
// is not a default route for other names (resolvectl dns / domain /
// default-route). Elsewhere it does nothing (doctor says what to add). It
// runs as root: the root helper applies it when it ensures the bridge, and
// 'system uninstall' reverts it. Imported by internal/privops and
// internal/cli.
package dnsroute

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"

	"github.com/banger-dev/banger/internal/sysexec"
)

// Domain is what is routed.
const Domain = "vm"

// resolvedDir exists while systemd-resolved runs.
var resolvedDir = "/run/systemd/resolve"

// resolvectl finds the tool.
var resolvectl = func() (string, error) { return sysexec.LookSystemPath("resolvectl") }

// Available reports whether the host runs systemd-resolved with resolvectl
// installed.
func Available() bool {
	if fi, err := os.Stat(resolvedDir); err != nil || !fi.IsDir() {
		return false
	}
	_, err := resolvectl()
	return err == nil
}

// done remembers the routes set in this process (link index → server), so
// that ensuring the bridge for every VM start costs nothing after the
// first; a new link (a recreated bridge) has a new index.
var (
	mu   sync.Mutex
	done = map[int]string{}
)

// Route makes resolved send the link's .vm lookups to server (IP:port),
// and only those. ifindex identifies the link instance (0: always apply).
// Without resolved it does nothing and returns false.
func Route(ctx context.Context, link string, ifindex int, server string) (bool, error) {
	if _, err := netip.ParseAddrPort(server); err != nil {
		return false, fmt.Errorf("dns route: server %q is not IP:port", server)
	}
	if !Available() {
		return false, nil
	}
	mu.Lock()
	defer mu.Unlock()
	if ifindex != 0 && done[ifindex] == server {
		return true, nil
	}
	tool, err := resolvectl()
	if err != nil {
		return false, err
	}
	for _, args := range [][]string{{"dns", link, server}, {"domain", link, "~" + Domain}, {"default-route", link, "no"}} {
		if _, err := sysexec.Run(ctx, sysexec.Cmd{Path: tool, Args: args}); err != nil {
			return false, fmt.Errorf("dns route for .%s on %s: %w", Domain, link, err)
		}
	}
	if ifindex != 0 {
		done[ifindex] = server
	}
	return true, nil
}

// Revert drops every resolved setting of link (resolvectl revert).
func Revert(ctx context.Context, link string) error {
	if _, err := net.InterfaceByName(link); err != nil || !Available() {
		return nil // no link, no settings
	}
	tool, err := resolvectl()
	if err != nil {
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	clear(done)
	if _, err := sysexec.Run(ctx, sysexec.Cmd{Path: tool, Args: []string{"revert", link}}); err != nil {
		return fmt.Errorf("dns route: revert %s: %w", link, err)
	}
	return nil
}
