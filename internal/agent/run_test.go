//go:build linux

package agent

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMainFlags(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{[]string{"--version"}, 0, "banger-agent " + Version + " (protocol 4)\n", ""},
		{[]string{"--bogus"}, 2, "", "flag provided but not defined: -bogus"},
		{[]string{"--listen", "1.2.3.4:5"}, 2, "", `listen address "1.2.3.4:5": want unix:/path or tcp:HOST:PORT`},
		{[]string{"--vsock-port", "x"}, 2, "", "invalid value"},
		{[]string{"--vsock-port", "4294967296"}, 2, "", "out of range"},
		{[]string{"extra"}, 2, "", `unexpected argument "extra"`},
	} {
		var out, errOut bytes.Buffer
		code := Main(context.Background(), tc.args, &out, &errOut)
		if code != tc.code || out.String() != tc.stdout || !strings.Contains(errOut.String(), tc.stderr) {
			t.Errorf("%q: code %d stdout %q stderr %q", tc.args, code, out.String(), errOut.String())
		}
	}
}

// TestMainServes runs the command line with every transport: vsock and
// serial are skipped or served as this machine allows, the unix listener
// answers, and cancelling ends Main with 0.
func TestMainServes(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "a.sock")
	ctx, cancel := context.WithCancel(context.Background())
	var errOut syncBuffer
	code := make(chan int, 1)
	go func() {
		code <- Main(ctx, []string{"--vsock-port", "0", "--serial-name", "", "--listen", "unix:" + sock}, &bytes.Buffer{}, &errOut)
	}()
	var c *Conn
	for deadline := time.Now().Add(5 * time.Second); c == nil && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if nc, err := net.Dial("unix", sock); err == nil {
			c = NewConn(nc)
		}
	}
	if c == nil {
		t.Fatalf("agent did not listen; log:\n%s", errOut.String())
	}
	defer c.Close()
	if _, err := c.Health(context.Background()); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case n := <-code:
		if n != 0 {
			t.Errorf("exit code %d", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Main did not return after cancel")
	}
	if !strings.Contains(errOut.String(), "serving on unix:"+sock) {
		t.Errorf("log: %q", errOut.String())
	}
}
