package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// VsockAddr is an AF_VSOCK address.
type VsockAddr struct {
	CID  uint32
	Port uint32
}

// Network returns "vsock".
func (a VsockAddr) Network() string { return "vsock" }

func (a VsockAddr) String() string { return fmt.Sprintf("vsock:%d:%d", a.CID, a.Port) }

// VsockUnavailable reports whether err means the kernel has no usable AF_VSOCK
// (no vsock support, or no transport for the address).
func VsockUnavailable(err error) bool {
	return errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.ENODEV) ||
		errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.ENETUNREACH) ||
		errors.Is(err, unix.EHOSTUNREACH) || errors.Is(err, unix.ESOCKTNOSUPPORT) ||
		errors.Is(err, unix.EPROTONOSUPPORT)
}

// vsockSocket returns a non-blocking AF_VSOCK stream socket wrapped in an
// *os.File, so that it uses the runtime poller (deadlines, Close wakes
// blocked calls).
func vsockSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	return fd, nil
}

type vsockListener struct {
	f    *os.File
	addr VsockAddr
}

// ListenVsock listens on AF_VSOCK, any CID, the given port
// (unix.VMADDR_PORT_ANY picks a free one; Addr reports it).
func ListenVsock(port uint32) (net.Listener, error) {
	fd, err := vsockSocket()
	if err != nil {
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("bind", err)
	}
	if err := unix.Listen(fd, 128); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("listen", err)
	}
	addr := VsockAddr{CID: unix.VMADDR_CID_ANY, Port: port}
	if sa, err := unix.Getsockname(fd); err == nil {
		if vm, ok := sa.(*unix.SockaddrVM); ok {
			addr = VsockAddr{CID: vm.CID, Port: vm.Port}
		}
	}
	return &vsockListener{f: os.NewFile(uintptr(fd), addr.String()), addr: addr}, nil
}

func (l *vsockListener) Addr() net.Addr { return l.addr }

func (l *vsockListener) Close() error { return l.f.Close() }

func (l *vsockListener) Accept() (net.Conn, error) {
	rc, err := l.f.SyscallConn()
	if err != nil {
		return nil, closedErr(err)
	}
	var (
		nfd  int
		sa   unix.Sockaddr
		aerr error
	)
	err = rc.Read(func(fd uintptr) bool {
		nfd, sa, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		return aerr != unix.EAGAIN
	})
	if err == nil {
		err = aerr
	}
	if err != nil {
		return nil, &net.OpError{Op: "accept", Net: "vsock", Addr: l.addr, Err: closedErr(err)}
	}
	remote := VsockAddr{}
	if vm, ok := sa.(*unix.SockaddrVM); ok {
		remote = VsockAddr{CID: vm.CID, Port: vm.Port}
	}
	return &vsockConn{File: os.NewFile(uintptr(nfd), remote.String()), local: l.addr, remote: remote}, nil
}

// closedErr turns the os package's closed-file error into net.ErrClosed.
func closedErr(err error) error {
	if errors.Is(err, os.ErrClosed) {
		return net.ErrClosed
	}
	return err
}

var _ net.Conn = (*vsockConn)(nil)

// vsockConn is a connected AF_VSOCK stream socket.
type vsockConn struct {
	*os.File
	local, remote VsockAddr
}

func (c *vsockConn) LocalAddr() net.Addr  { return c.local }
func (c *vsockConn) RemoteAddr() net.Addr { return c.remote }

// DialVsock connects to an AF_VSOCK address (for example CID 2, the host, from
// a guest; or CID 1, the local loopback) and returns a client for the agent
// listening there.
func DialVsock(ctx context.Context, cid, port uint32) (*Conn, error) {
	c, err := dialVsock(ctx, cid, port)
	if err != nil {
		return nil, fmt.Errorf("agent at %s: %w", VsockAddr{cid, port}, err)
	}
	return NewConn(c), nil
}

func dialVsock(ctx context.Context, cid, port uint32) (net.Conn, error) {
	fd, err := vsockSocket()
	if err != nil {
		return nil, err
	}
	remote := VsockAddr{CID: cid, Port: port}
	// Wrap (and so register with the poller) before connecting, so the
	// completion event cannot be missed.
	f := os.NewFile(uintptr(fd), remote.String())
	if err := connect(ctx, f, &unix.SockaddrVM{CID: cid, Port: port}); err != nil {
		f.Close()
		return nil, err
	}
	local := VsockAddr{}
	if sa, err := unix.Getsockname(fd); err == nil {
		if vm, ok := sa.(*unix.SockaddrVM); ok {
			local = VsockAddr{CID: vm.CID, Port: vm.Port}
		}
	}
	return &vsockConn{File: f, local: local, remote: remote}, nil
}

// connect runs a non-blocking connect on f's socket, honouring ctx.
func connect(ctx context.Context, f *os.File, sa unix.Sockaddr) error {
	if dl, ok := ctx.Deadline(); ok {
		f.SetWriteDeadline(dl)
	}
	done := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(done)
		f.SetWriteDeadline(time.Unix(1, 0))
	})
	defer func() {
		if !stop() {
			<-done
		}
		f.SetWriteDeadline(time.Time{})
	}()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var cerr error
	started := false
	err = rc.Write(func(fd uintptr) bool {
		if !started {
			started = true
			cerr = unix.Connect(int(fd), sa)
			return cerr != unix.EINPROGRESS
		}
		n, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			cerr = err
		case n != 0:
			cerr = syscall.Errno(n)
		default:
			if _, err := unix.Getpeername(int(fd)); err == unix.ENOTCONN {
				return false // spurious wake-up: still connecting
			}
			cerr = nil
		}
		return true
	})
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("connect: %w", ctx.Err())
		}
		return fmt.Errorf("connect: %w", err)
	}
	if cerr != nil {
		return os.NewSyscallError("connect", cerr)
	}
	return nil
}
