package fcvmm

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"
	"golang.org/x/sys/unix"
)

// Firecracker's vsock, host side, carried over a virtio-serial port.
//
// QEMU's vhost-vsock needs /dev/vhost-vsock, which banger's hosts lack, so
// banger-vmm keeps Firecracker's host-facing half of the hybrid vsock model
// (the Unix socket at uds_path, "CONNECT <port>\n", "OK <hostport>\n", then
// raw bytes) and carries the bytes of one guest port to the guest through a
// virtio-serial port named banger.agent instead. A serial port is a single
// byte stream, so host connections are served one at a time.

const (
	// agentVsockPort is the only guest port carried: banger's agent's.
	agentVsockPort = 1024
	// agentPortName is the virtserialport's name; the guest finds it as
	// /sys/class/virtio-ports/vportNpM/name.
	agentPortName = "banger.agent"
	// agentPortID is the QEMU device id, which VSERPORT_CHANGE events name.
	agentPortID = "agent0"
	// vsockHostPortBase is where Firecracker starts numbering host-side
	// ports (2^30), reported in "OK <hostport>".
	vsockHostPortBase = 1 << 30
	// vsockConnectMax is the longest CONNECT line Firecracker reads.
	vsockConnectMax = 32
	// vsockHandshakeTimeout bounds the wait for a CONNECT line once a
	// connection's turn has come.
	vsockHandshakeTimeout = 5 * time.Second
	// vsockQueueWait bounds how long a host connection may wait for the
	// connection ahead of it to end.
	vsockQueueWait = 30 * time.Second
)

// vsockCfg is PUT /vsock: the device and its host socket, bound at PUT time
// as Firecracker does.
type vsockCfg struct {
	cid  uint32
	path string
	ln   *net.UnixListener
}

// vsockJSON is the vsock object of GET /vm/config (Firecracker leaves out
// the deprecated vsock_id there).
type vsockJSON struct {
	GuestCid uint32 `json:"guest_cid"`
	UdsPath  string `json:"uds_path"`
}

// vsockReq is Firecracker v1.14.1's VsockDeviceConfig, in its field order.
type vsockReq struct {
	VsockID  *string `json:"vsock_id"`
	GuestCid *int64  `json:"guest_cid"`
	UdsPath  *string `json:"uds_path"`
}

func vsockBindError(err error) *apiError {
	return badRequest("Vsock config error: Cannot create backend for vsock device: Error binding to the host-side Unix socket: %s", rustIOError(err))
}

func (v *vmm) putVsock(body []byte) (int, any, *apiError) {
	var req vsockReq
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	switch {
	case req.GuestCid == nil:
		return 0, nil, deserializeError("missing field `guest_cid`")
	case req.UdsPath == nil:
		return 0, nil, deserializeError("missing field `uds_path`")
	case *req.GuestCid < 0 || *req.GuestCid > math.MaxUint32:
		return 0, nil, deserializeError(fmt.Sprintf("invalid value: integer `%d`, expected u32", *req.GuestCid))
	}
	// The API's schema (and the SDK's model) want guest_cid >= 3: 0-2 are
	// the hypervisor's, the loopback's and the host's.
	if e := validateModel(&models.Vsock{GuestCid: req.GuestCid, UdsPath: req.UdsPath}); e != nil {
		return 0, nil, e
	}
	if req.VsockID != nil {
		v.deprecation = "PUT /vsock: vsock_id field is deprecated."
	}
	v.bootPath = true
	if v.started {
		return 0, nil, errPostBoot
	}
	// A repeat PUT replaces the device: Firecracker removes the old socket
	// file before binding the new one.
	if old := v.cfg.vsock; old != nil {
		v.cfg.vsock = nil
		old.ln.Close()
		if err := os.Remove(old.path); err != nil {
			return 0, nil, vsockBindError(err)
		}
	}
	ln, err := listenVsock(*req.UdsPath)
	if err != nil {
		return 0, nil, vsockBindError(err)
	}
	v.cfg.vsock = &vsockCfg{cid: uint32(*req.GuestCid), path: *req.UdsPath, ln: ln}
	return 0, nil, nil
}

// listenVsock binds uds_path. Firecracker fails if the path exists; banger-vmm
// first removes a stale socket (a socket file nobody listens on, left by a
// VMM that died), and still refuses anything else.
func listenVsock(path string) (*net.UnixListener, error) {
	if path == "" {
		return nil, unix.ENOENT
	}
	ln, err := listenAPI(path)
	if err == nil || !errors.Is(err, unix.EADDRINUSE) {
		return ln, err
	}
	fi, lerr := os.Lstat(path)
	if lerr != nil || fi.Mode().Type() != os.ModeSocket {
		return nil, err
	}
	c, derr := net.DialTimeout("unix", path, time.Second)
	if derr == nil {
		c.Close()
		return nil, err // alive: someone listens there
	}
	if !errors.Is(derr, unix.ECONNREFUSED) {
		return nil, err
	}
	if os.Remove(path) != nil {
		return nil, err
	}
	return listenAPI(path)
}

// vsockBridge serves the host connections of uds_path, one at a time, over
// the virtio-serial port's byte stream.
type vsockBridge struct {
	log       *logger
	ln        net.Listener
	serial    net.Conn // the VMM's end of the virtserialport's chardev
	queueWait time.Duration

	mu        sync.Mutex
	wake      *sync.Cond
	queue     []*queuedConn // accepted, waiting for their turn
	guestOpen bool          // the guest has the port open (VSERPORT_CHANGE)
	cur       net.Conn      // the host connection being carried
	closed    bool
	nextPort  uint32 // serve's only
}

type queuedConn struct {
	c     net.Conn
	timer *time.Timer
}

func newVsockBridge(ln net.Listener, serial net.Conn, log *logger) *vsockBridge {
	b := &vsockBridge{log: log, ln: ln, serial: serial, queueWait: vsockQueueWait, nextPort: vsockHostPortBase}
	b.wake = sync.NewCond(&b.mu)
	return b
}

// start accepts host connections and carries them; the listener may have
// queued connections since PUT /vsock.
func (b *vsockBridge) start() {
	go b.accept()
	go b.serve()
	go b.fromGuest()
}

// close stops the bridge (tests; the VMM keeps its bridge until it exits).
func (b *vsockBridge) close() {
	b.mu.Lock()
	b.closed = true
	q := b.queue
	b.queue = nil
	cur := b.cur
	b.cur = nil
	b.wake.Broadcast()
	b.mu.Unlock()
	b.ln.Close()
	b.serial.Close()
	for _, w := range q {
		w.timer.Stop()
		w.c.Close()
	}
	if cur != nil {
		cur.Close()
	}
}

func (b *vsockBridge) accept() {
	for {
		c, err := b.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			b.log.warn("fc_vmm", "vsock: accepting on the host socket: %v", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		w := &queuedConn{c: c}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			c.Close()
			return
		}
		w.timer = time.AfterFunc(b.queueWait, func() { b.expire(w) })
		b.queue = append(b.queue, w)
		b.wake.Signal()
		b.mu.Unlock()
	}
}

// expire closes a connection that waited too long for its turn.
func (b *vsockBridge) expire(w *queuedConn) {
	b.mu.Lock()
	found := false
	for i, o := range b.queue {
		if o == w {
			b.queue = append(b.queue[:i], b.queue[i+1:]...)
			found = true
			break
		}
	}
	b.mu.Unlock()
	if found {
		b.log.warn("fc_vmm", "vsock: a host connection waited %v for the one ahead of it; closing it", b.queueWait)
		w.c.Close()
	}
}

func (b *vsockBridge) serve() {
	for {
		b.mu.Lock()
		for len(b.queue) == 0 && !b.closed {
			b.wake.Wait()
		}
		if b.closed {
			b.mu.Unlock()
			return
		}
		w := b.queue[0]
		b.queue = b.queue[1:]
		w.timer.Stop() // an expire already waiting on mu finds w gone
		b.mu.Unlock()
		b.session(w.c)
	}
}

// session is one host connection: Firecracker's handshake, then bytes both
// ways until either side ends it.
func (b *vsockBridge) session(c net.Conn) {
	port, err := readConnect(c, vsockHandshakeTimeout)
	if err != nil {
		b.log.debug("fc_vmm", "vsock: bad connection request from the host: %v", err)
		c.Close()
		return
	}
	b.mu.Lock()
	open := b.guestOpen
	b.mu.Unlock()
	if port != agentVsockPort || !open {
		// Firecracker closes the host connection when the guest answers
		// with a reset: nothing listens on that port.
		b.log.debug("fc_vmm", "vsock: nothing listens on guest port %d", port)
		c.Close()
		return
	}
	hostPort := b.nextPort
	b.nextPort++
	c.SetWriteDeadline(time.Now().Add(vsockHandshakeTimeout))
	if _, err := fmt.Fprintf(c, "OK %d\n", hostPort); err != nil {
		c.Close()
		return
	}
	c.SetWriteDeadline(time.Time{})
	b.serial.SetWriteDeadline(time.Time{})
	b.mu.Lock()
	if !b.guestOpen || b.closed {
		b.mu.Unlock()
		c.Close()
		return
	}
	b.cur = c
	b.mu.Unlock()
	b.log.debug("fc_vmm", "vsock: host port %d connected to guest port %d", hostPort, port)

	// Host to guest, until the host closes (Firecracker treats EOF as the
	// end of the connection in both directions) or the session is ended.
	buf := make([]byte, 32<<10)
	for {
		n, rerr := c.Read(buf)
		if n > 0 {
			if _, werr := b.serial.Write(buf[:n]); werr != nil {
				break
			}
		}
		if rerr != nil {
			break
		}
	}
	b.drop(c)
	b.log.debug("fc_vmm", "vsock: host port %d closed", hostPort)
}

// drop ends the session of c, if it is still the current one.
func (b *vsockBridge) drop(c net.Conn) {
	b.mu.Lock()
	if b.cur == c {
		b.cur = nil
	}
	b.mu.Unlock()
	c.Close()
}

// fromGuest copies what the guest writes to the current host connection and
// discards it while there is none.
func (b *vsockBridge) fromGuest() {
	buf := make([]byte, 32<<10)
	for {
		n, err := b.serial.Read(buf)
		if n > 0 {
			b.mu.Lock()
			c := b.cur
			b.mu.Unlock()
			if c != nil {
				if _, werr := c.Write(buf[:n]); werr != nil {
					b.drop(c)
				}
			}
		}
		if err != nil {
			b.guestPort(false) // QEMU is gone
			return
		}
	}
}

// guestPort records whether the guest has the port open. A guest closing it
// ends the current host connection, as a guest closing its vsock socket
// would.
// isGuestOpen reports whether the guest has its port open.
func (b *vsockBridge) isGuestOpen() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.guestOpen
}

// dropCurrent ends the connection being carried (a snapshot ends open vsock
// connections, as Firecracker's does; listeners stay).
func (b *vsockBridge) dropCurrent() {
	b.mu.Lock()
	c := b.cur
	b.cur = nil
	if c != nil {
		b.serial.SetWriteDeadline(time.Now())
	}
	b.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

func (b *vsockBridge) guestPort(open bool) {
	b.mu.Lock()
	b.guestOpen = open
	var c net.Conn
	if !open && b.cur != nil {
		c = b.cur
		b.cur = nil
		// Unblock a write the guest will no longer read.
		b.serial.SetWriteDeadline(time.Now())
	}
	b.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// readConnect reads Firecracker's connection request, "CONNECT <port>\n",
// byte by byte so that nothing after the newline is consumed.
func readConnect(c net.Conn, timeout time.Duration) (uint32, error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	var line []byte
	one := make([]byte, 1)
	for len(line) < vsockConnectMax {
		n, err := c.Read(one)
		if n == 1 {
			if one[0] == '\n' {
				return parseConnect(line)
			}
			line = append(line, one[0])
			continue
		}
		if err != nil {
			return 0, err
		}
	}
	return 0, fmt.Errorf("no newline within %d bytes", vsockConnectMax)
}

// parseConnect is Firecracker's read_local_stream_port: the keyword
// CONNECT in any case, then a decimal u32.
func parseConnect(line []byte) (uint32, error) {
	bad := fmt.Errorf("invalid request %q", line)
	if !utf8.Valid(line) {
		return 0, bad
	}
	f := strings.Fields(string(line))
	if len(f) < 2 || strings.ToLower(f[0]) != "connect" {
		return 0, bad
	}
	p, err := strconv.ParseUint(strings.TrimPrefix(f[1], "+"), 10, 32)
	if err != nil {
		return 0, bad
	}
	return uint32(p), nil
}
