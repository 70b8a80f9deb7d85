//go:build linux

package agent

import (
	"context"
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestVsockLoopback runs the agent's vsock listener and talks to it through
// AF_VSOCK on the local CID. It needs the kernel's vsock loopback transport
// (vsock_loopback) and skips without it.
func TestVsockLoopback(t *testing.T) {
	l, err := ListenVsock(unix.VMADDR_PORT_ANY)
	if err != nil {
		if VsockUnavailable(err) {
			t.Skipf("AF_VSOCK unavailable: %v", err)
		}
		t.Fatal(err)
	}
	port := l.Addr().(VsockAddr).Port
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l, t.Logf) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	}()

	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	c, err := DialVsock(cctx, unix.VMADDR_CID_LOCAL, port)
	if err != nil {
		// Without vsock_loopback, CID 1 goes to another transport (for
		// example virtio, to a host that never answers: ETIMEDOUT) or none.
		if VsockUnavailable(err) || errors.Is(err, unix.ETIMEDOUT) || errors.Is(err, unix.ECONNRESET) {
			t.Skipf("no vsock loopback (modprobe vsock_loopback): %v", err)
		}
		t.Fatal(err)
	}
	defer c.Close()
	t.Logf("vsock loopback: agent on port %d", port)
	h, err := c.Health(cctx)
	if err != nil || h.Protocol != ProtocolVersion {
		t.Fatalf("health: %+v, %v", h, err)
	}

	// Many connections at once, each with several calls.
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			c, err := DialVsock(cctx, unix.VMADDR_CID_LOCAL, port)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			for range 3 {
				if _, err := c.Ports(cctx); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}

	// A port nobody listens on is refused, not hung.
	if _, err := DialVsock(cctx, unix.VMADDR_CID_LOCAL, port+1); err == nil {
		t.Error("dial to an unused vsock port succeeded")
	} else {
		t.Logf("unused port: %v", err)
	}
}
