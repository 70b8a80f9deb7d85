//go:build linux

package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func fakeSysfs(t *testing.T, ports map[string]string) string {
	t.Helper()
	sys := t.TempDir()
	for dir, name := range ports {
		if err := os.MkdirAll(filepath.Join(sys, dir), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sys, dir, "name"), []byte(name+"\n"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	return sys
}

func TestFindSerialPort(t *testing.T) {
	sys := fakeSysfs(t, map[string]string{"vport0p0": "org.qemu.guest_agent.0", "vport1p1": "banger.agent", "vport1p2": ""})
	got, err := findSerialPort(sys, "/dev", "banger.agent")
	if err != nil || got != "/dev/vport1p1" {
		t.Errorf("got %q, %v", got, err)
	}
	if _, err := findSerialPort(sys, "/dev", "other"); !errors.Is(err, ErrNoSerialPort) {
		t.Errorf("missing name: %v", err)
	}
	if _, err := findSerialPort(filepath.Join(sys, "absent"), "/dev", "banger.agent"); !errors.Is(err, ErrNoSerialPort) {
		t.Errorf("no virtio-ports class: %v", err)
	}
}

// TestServeSerialReopen serves a socketpair as the serial port: the host
// side disconnecting (EOF) makes the agent reopen the port.
func TestServeSerialReopen(t *testing.T) {
	old := serialReopenDelay
	serialReopenDelay = 10 * time.Millisecond
	defer func() { serialReopenDelay = old }()

	hosts := make(chan *os.File, 3)
	opens := 0
	open := func() (io.ReadWriteCloser, error) {
		opens++
		if opens == 2 {
			return nil, errors.New("port busy") // logged, retried
		}
		guest, host := socketpair(t)
		hosts <- host
		return guest, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		ServeSerial(ctx, open, t.Logf)
	}()
	for i := range 2 {
		host := <-hosts
		c := NewConn(host)
		cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
		h, err := c.Health(cctx)
		ccancel()
		if err != nil || h.Protocol != ProtocolVersion {
			t.Fatalf("session %d: %+v, %v", i, h, err)
		}
		c.Close() // host disconnects: EOF for the agent
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("ServeSerial did not return after cancel")
	}
	if opens < 3 {
		t.Errorf("opened %d times, want 3", opens)
	}
}

// openPty returns a pty master in raw mode and its slave's path.
func openPty(t *testing.T) (*os.File, string) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no ptys: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	fd := int(m.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	tio, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	tio.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	tio.Oflag &^= unix.OPOST
	tio.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	tio.Cflag &^= unix.CSIZE | unix.PARENB
	tio.Cflag |= unix.CS8
	tio.Cc[unix.VMIN], tio.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, tio); err != nil {
		t.Fatal(err)
	}
	return m, "/dev/pts/" + strconv.Itoa(n)
}

// TestServeSerialPty goes through the whole device path: a fake
// /sys/class/virtio-ports names a "/dev" entry that is a pty slave, and the
// agent finds, opens and serves it while the test plays the host on the
// master.
func TestServeSerialPty(t *testing.T) {
	master, slave := openPty(t)
	dev := t.TempDir()
	if err := os.Symlink(slave, filepath.Join(dev, "vport2p1")); err != nil {
		t.Fatal(err)
	}
	sys := fakeSysfs(t, map[string]string{"vport2p1": DefaultSerialName})
	path, err := findSerialPort(sys, dev, DefaultSerialName)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		ServeSerial(ctx, OpenSerial(path), t.Logf)
	}()

	// The host side of a shared serial stream: a request of another client
	// (its answer is stale for us), and a partial line left by a client that
	// went away, which the client's leading newline cuts off.
	fmt.Fprintln(master, `{"v":1,"id":"someone-else","op":"health"}`)
	fmt.Fprint(master, `{"v":1,"id":"gone","op":"hea`)
	c := NewConn(master)
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	h, err := c.Health(cctx)
	if err != nil || h.Protocol != ProtocolVersion {
		t.Fatalf("health over pty: %+v, %v", h, err)
	}
	if _, err := c.Ports(cctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("ServeSerial did not return after cancel")
	}
}
