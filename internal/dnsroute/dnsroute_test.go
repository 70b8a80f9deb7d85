package dnsroute

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeResolved makes resolved look present, with a resolvectl that logs
// its arguments (a fake: the real one changes the host's resolver).
func fakeResolved(t *testing.T, present bool) (log string) {
	t.Helper()
	dir := t.TempDir()
	log = filepath.Join(dir, "calls")
	tool := filepath.Join(dir, "resolvectl")
	os.WriteFile(tool, []byte("#!/bin/sh\necho \"$@\" >> "+log+"\n"), 0o755)
	savedDir, savedTool := resolvedDir, resolvectl
	t.Cleanup(func() { resolvedDir, resolvectl = savedDir, savedTool; clear(done) })
	resolvedDir = filepath.Join(dir, "resolve")
	if present {
		os.Mkdir(resolvedDir, 0o755)
	}
	resolvectl = func() (string, error) { return tool, nil }
	return log
}

func calls(log string) string {
	b, _ := os.ReadFile(log)
	return strings.TrimSpace(string(b))
}

// TestRoute: the bridge gets the server, the ~vm routing domain and no
// default route, once per link instance; a new instance (index) is set
// again; without resolved nothing runs.
func TestRoute(t *testing.T) {
	log := fakeResolved(t, true)
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if ok, err := Route(ctx, "banger0", 7, "127.0.0.1:42069"); !ok || err != nil {
			t.Fatalf("Route: %v %v", ok, err)
		}
	}
	want := "dns banger0 127.0.0.1:42069\ndomain banger0 ~vm\ndefault-route banger0 no"
	if got := calls(log); got != want {
		t.Errorf("calls:\n%s\nwant\n%s", got, want)
	}
	Route(ctx, "banger0", 8, "127.0.0.1:42069")
	if n := strings.Count(calls(log), "dns banger0"); n != 2 {
		t.Errorf("a recreated bridge (new index) was routed %d times in all, want 2", n)
	}
	if _, err := Route(ctx, "banger0", 9, "nope"); err == nil {
		t.Error("a server that is not IP:port was accepted")
	}

	log = fakeResolved(t, false)
	if ok, err := Route(ctx, "banger0", 7, "127.0.0.1:42069"); ok || err != nil || calls(log) != "" {
		t.Errorf("without resolved: %v %v %q", ok, err, calls(log))
	}
}

// TestRevert: revert runs for a link that exists (lo stands in), and not
// for one that does not.
func TestRevert(t *testing.T) {
	log := fakeResolved(t, true)
	if err := Revert(context.Background(), "no-such-link0"); err != nil || calls(log) != "" {
		t.Errorf("missing link: %v %q", err, calls(log))
	}
	if err := Revert(context.Background(), "lo"); err != nil || calls(log) != "revert lo" {
		t.Errorf("lo: %v %q", err, calls(log))
	}
}
