package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// DefaultSerialName is the name of banger's virtio-serial port for the agent.
const DefaultSerialName = "banger.agent"

// Where virtio-serial ports show up.
const (
	sysVirtioPorts = "/sys/class/virtio-ports"
	devDir         = "/dev"
)

// ErrNoSerialPort means no virtio-serial port has the wanted name (yet).
var ErrNoSerialPort = errors.New("no virtio-serial port with that name")

// FindSerialPort returns the device path (/dev/vportNpM) of the
// virtio-serial port called name.
func FindSerialPort(name string) (string, error) {
	return findSerialPort(sysVirtioPorts, devDir, name)
}

func findSerialPort(sysDir, devDir, name string) (string, error) {
	ents, err := os.ReadDir(sysDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(sysDir, e.Name(), "name"))
		if err == nil && strings.TrimSpace(string(b)) == name {
			return filepath.Join(devDir, e.Name()), nil
		}
	}
	return "", fmt.Errorf("%w: %q in %s", ErrNoSerialPort, name, sysDir)
}

// OpenSerial returns an opener for ServeSerial that opens the device at path
// read-write.
func OpenSerial(path string) func() (io.ReadWriteCloser, error) {
	return func() (io.ReadWriteCloser, error) {
		return os.OpenFile(path, os.O_RDWR|syscall.O_NOCTTY, 0)
	}
}

// Delays of the serial transport, variables for tests.
var (
	serialReopenDelay = 500 * time.Millisecond // after EOF (host disconnected) or an error
	serialScanEvery   = time.Second            // re-scan for a late port...
	serialScanFor     = 10 * time.Second       // ...during this long after start
)

// ServeSerial serves the protocol on a single stream returned by open (a
// virtio-serial port) until ctx is done: whenever the stream ends (EOF when
// the host side disconnects) or fails, it is closed and reopened after a
// short sleep. Each stream is served as one client; the host side
// multiplexes its clients onto it and drops responses it did not ask for.
func ServeSerial(ctx context.Context, open func() (io.ReadWriteCloser, error), logf func(string, ...any)) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	lastErr := ""
	for ctx.Err() == nil {
		rw, err := open()
		if err == nil {
			err = ServeStream(ctx, rw)
		}
		// EOF is the normal "host not connected" state and is not logged;
		// other errors are logged when they change, so a port that stays
		// broken does not flood the log.
		if err != nil && err.Error() != lastErr {
			logf("serial: %v", err)
		}
		if err != nil {
			lastErr = err.Error()
		} else {
			lastErr = ""
		}
		select {
		case <-ctx.Done():
		case <-time.After(serialReopenDelay):
		}
	}
}
