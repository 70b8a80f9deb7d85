package fcvmm

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// qmp is a minimal QEMU Machine Protocol client over the socket QEMU got as
// an inherited descriptor (-chardev socket,fd=N -mon mode=control): one
// command at a time, events handed to onEvent.
type qmp struct {
	conn    net.Conn
	mu      sync.Mutex // one command at a time
	replies chan qmpMsg
	greeted chan struct{}
	closed  chan struct{}
	onEvent func(name string, data json.RawMessage)
}

type qmpMsg struct {
	QMP    json.RawMessage `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
}

var errQMPClosed = errors.New("QEMU's QMP connection closed")

func newQMP(conn net.Conn, onEvent func(string, json.RawMessage)) *qmp {
	q := &qmp{conn: conn, replies: make(chan qmpMsg, 1), greeted: make(chan struct{}), closed: make(chan struct{}), onEvent: onEvent}
	go q.read()
	return q
}

func (q *qmp) read() {
	defer close(q.closed)
	sc := bufio.NewScanner(q.conn)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	greeted := false
	for sc.Scan() {
		var m qmpMsg
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			continue
		}
		switch {
		case m.QMP != nil:
			if !greeted {
				greeted = true
				close(q.greeted)
			}
		case m.Event != "":
			if q.onEvent != nil {
				q.onEvent(m.Event, m.Data)
			}
		default:
			select {
			case q.replies <- m:
			default: // nobody waits (a timed-out command): drop
			}
		}
	}
}

// handshake waits for QEMU's greeting and leaves capabilities negotiation
// mode. QEMU answers only once its main loop runs, that is once the machine
// is built and the kernel loaded, so a nil return means QEMU is up.
func (q *qmp) handshake(timeout time.Duration) error {
	select {
	case <-q.greeted:
	case <-q.closed:
		return errQMPClosed
	case <-time.After(timeout):
		return errors.New("timed out waiting for QEMU's QMP greeting")
	}
	_, err := q.execute("qmp_capabilities", nil, timeout)
	return err
}

// execute runs one QMP command and returns its "return" value.
func (q *qmp) execute(cmd string, args any, timeout time.Duration) (json.RawMessage, error) {
	return q.executeFD(cmd, args, nil, timeout)
}

// executeFD is execute with a descriptor passed along (SCM_RIGHTS), as
// QMP's getfd wants it.
func (q *qmp) executeFD(cmd string, args any, fd *os.File, timeout time.Duration) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	q.conn.SetWriteDeadline(time.Now().Add(timeout))
	if fd != nil {
		uc, ok := q.conn.(*net.UnixConn)
		if !ok {
			return nil, fmt.Errorf("QMP %s: the QMP connection cannot pass descriptors", cmd)
		}
		if _, _, err := uc.WriteMsgUnix(append(b, '\n'), unix.UnixRights(int(fd.Fd())), nil); err != nil {
			return nil, fmt.Errorf("QMP %s: %w", cmd, err)
		}
	} else if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("QMP %s: %w", cmd, err)
	}
	select {
	case m := <-q.replies:
		if m.Error != nil {
			return nil, fmt.Errorf("QMP %s: %s: %s", cmd, m.Error.Class, m.Error.Desc)
		}
		return m.Return, nil
	case <-q.closed:
		return nil, errQMPClosed
	case <-time.After(timeout):
		return nil, fmt.Errorf("QMP %s: timed out after %v", cmd, timeout)
	}
}

func (q *qmp) close() { q.conn.Close() }
