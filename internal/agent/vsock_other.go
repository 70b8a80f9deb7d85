//go:build !linux

package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
)

var errNoVsock = errors.New("AF_VSOCK is only supported on Linux")

// VsockAddr is an AF_VSOCK address.
type VsockAddr struct {
	CID  uint32
	Port uint32
}

// Network returns "vsock".
func (a VsockAddr) Network() string { return "vsock" }

func (a VsockAddr) String() string { return fmt.Sprintf("vsock:%d:%d", a.CID, a.Port) }

// VsockUnavailable reports whether err means AF_VSOCK is not usable.
func VsockUnavailable(err error) bool { return errors.Is(err, errNoVsock) }

// ListenVsock is not supported on this platform.
func ListenVsock(port uint32) (net.Listener, error) { return nil, errNoVsock }

// DialVsock is not supported on this platform.
func DialVsock(ctx context.Context, cid, port uint32) (*Conn, error) { return nil, errNoVsock }
