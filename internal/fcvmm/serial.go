package fcvmm

import (
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// serialBufferLimit bounds the console bytes held for a slow stdout; past it
// bytes are dropped rather than stalling the guest's UART.
const serialBufferLimit = 4 << 20

// serialPump copies ttyS0's output from QEMU to the VMM's stdout (or the
// PUT /serial file), byte for byte. Reading from QEMU never waits for the
// destination: a writer that blocks or fails (a full pipe, a closed stdout)
// costs dropped bytes, never a stalled guest or a dead VMM.
type serialPump struct {
	conn net.Conn
	out  int // destination descriptor

	mu      sync.Mutex
	cond    *sync.Cond
	buf     []byte
	eof     bool
	dropped uint64
	done    chan struct{} // closed when everything read was written (or dropped)
}

func newSerialPump(conn net.Conn, out int) *serialPump {
	p := &serialPump{conn: conn, out: out, done: make(chan struct{})}
	p.cond = sync.NewCond(&p.mu)
	go p.read()
	go p.write()
	return p
}

func (p *serialPump) read() {
	b := make([]byte, 32<<10)
	for {
		n, err := p.conn.Read(b)
		if n > 0 {
			p.mu.Lock()
			if len(p.buf)+n > serialBufferLimit {
				p.dropped += uint64(n)
			} else {
				p.buf = append(p.buf, b[:n]...)
			}
			p.cond.Signal()
			p.mu.Unlock()
		}
		if err != nil {
			p.mu.Lock()
			p.eof = true
			p.cond.Signal()
			p.mu.Unlock()
			return
		}
	}
}

func (p *serialPump) write() {
	defer close(p.done)
	for {
		p.mu.Lock()
		for len(p.buf) == 0 && !p.eof {
			p.cond.Wait()
		}
		if len(p.buf) == 0 && p.eof {
			p.mu.Unlock()
			return
		}
		chunk := p.buf
		p.buf = nil
		p.mu.Unlock()
		for len(chunk) > 0 {
			n, err := unix.Write(p.out, chunk)
			if err == unix.EINTR {
				continue
			}
			if err == unix.EAGAIN {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			if err != nil || n <= 0 {
				p.mu.Lock()
				p.dropped += uint64(len(chunk))
				p.mu.Unlock()
				break
			}
			chunk = chunk[n:]
		}
	}
}

// drain waits until QEMU closed its end and every byte was written, at most
// timeout.
func (p *serialPump) drain(timeout time.Duration) {
	select {
	case <-p.done:
	case <-time.After(timeout):
	}
}

// stdinForwardable reports whether Firecracker would read the guest's
// console input from stdin: only from a terminal or a FIFO (v1.5.0+).
func stdinForwardable() (isTTY, ok bool) {
	fi, err := os.Stdin.Stat()
	if err != nil {
		return false, false
	}
	if fi.Mode()&os.ModeCharDevice != 0 {
		if _, err := unix.IoctlGetTermios(0, unix.TCGETS); err == nil {
			return true, true
		}
		return false, false
	}
	return false, fi.Mode()&os.ModeNamedPipe != 0
}

// forwardStdin copies stdin to the guest's UART.
func forwardStdin(conn net.Conn) {
	io.Copy(conn, os.Stdin)
}

// rawTerminal puts the terminal on fd into raw mode, as Firecracker does with
// a TTY stdin, and returns a function that restores it.
func rawTerminal(fd int) func() {
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return func() {}
	}
	t := *old
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN] = 1
	t.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &t); err != nil {
		return func() {}
	}
	return func() { unix.IoctlSetTermios(fd, unix.TCSETS, old) }
}
