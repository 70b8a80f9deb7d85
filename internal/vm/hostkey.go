package vm

// SSH host keys are pinned from the guest's own console, never from the
// network: whatever answers on a guest's IP first may be another guest on the
// bridge. Each VM's serial console goes to its own <vmdir>/serial.log, which
// only that guest (through its VMM) writes. Every banger guest prints its
// host keys there ("BANGER-HOSTKEY <type> <base64>", docs/guest.md) once
// they exist and before its "BANGER-READY" line; start() pins exactly those
// keys for the VM's IP before its first SSH dial, and guestssh refuses any
// other key (and any host without a pin).
//
// The serial log is appended across boots (the VMM opens it O_APPEND), so
// the output of the boot being started is everything after the log's size
// just before the VMM is launched (markConsole). Only the BANGER-HOSTKEY
// lines before that boot's first BANGER-READY line count: a stale log from
// an earlier boot cannot supply keys, nor can the guest's later output.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/guestssh"
	"github.com/banger-dev/banger/internal/store"
	"golang.org/x/crypto/ssh"
)

// consoleScanLimit bounds how much of one boot's console output is read to
// find the host keys. They come early (before sshd starts); a guest that
// prints more than this before its ready line gets no pin.
const consoleScanLimit = 2 << 20

// consolePoll is how often the serial log is read while waiting for the
// ready line. A variable for tests.
var consolePoll = 50 * time.Millisecond

// consoleMark is where one boot's console output starts in a VM's serial
// log.
type consoleMark struct {
	path     string
	off      int64
	dev, ino uint64 // the log's identity when marked; 0, 0 if it did not exist
}

// markConsole records where the output of the boot about to be launched will
// start in the serial log at path: its current end. Call it immediately
// before launching the VMM, after anything that rotates or truncates the log.
func markConsole(path string) consoleMark {
	m := consoleMark{path: path}
	if fi, err := os.Stat(path); err == nil {
		m.off = fi.Size()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			m.dev, m.ino = uint64(st.Dev), st.Ino
		}
	}
	return m
}

// read returns this boot's console output so far, at most consoleScanLimit
// bytes (full reports that the limit was reached). A log that was replaced
// (another inode) or truncated (shorter than the mark) since the mark holds
// only newer output, so it is read from its start.
func (m consoleMark) read() (data []byte, full bool, err error) {
	f, err := os.OpenFile(m.path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil // the VMM has not created it yet
	}
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, false, err
	}
	if !fi.Mode().IsRegular() {
		return nil, false, fmt.Errorf("%s is not a regular file", m.path)
	}
	off := m.off
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && m.ino != 0 && (uint64(st.Dev) != m.dev || st.Ino != m.ino) {
		off = 0
	}
	if fi.Size() < off {
		off = 0
	}
	data, err = io.ReadAll(io.NewSectionReader(f, off, consoleScanLimit))
	return data, len(data) >= consoleScanLimit, err
}

// consoleHostKeys waits until this boot's console shows its BANGER-READY line
// and returns the host keys announced before it (guestssh.ConsoleHostKeys).
// It fails when ctx ends first, when the guest printed consoleScanLimit bytes
// without being ready, and (wrapping guestssh.ErrNoConsoleHostKeys) when it
// was ready without announcing a key: an image made before console pinning,
// which fails closed, never falling back to the network.
func (m consoleMark) consoleHostKeys(ctx context.Context) ([]ssh.PublicKey, error) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the guest's SSH host keys on its console (%s): %w", m.path, ctx.Err())
		case <-t.C:
		}
		data, full, err := m.read()
		if err != nil {
			return nil, fmt.Errorf("read the guest's console: %w", err)
		}
		keys, ready, err := guestssh.ConsoleHostKeys(data)
		if err != nil {
			return nil, err
		}
		if ready {
			return keys, nil
		}
		if full {
			return nil, fmt.Errorf("the guest printed %d MiB on its console without its %s line; no SSH host key was pinned (%s)",
				consoleScanLimit>>20, guestssh.ConsoleReadyMarker, m.path)
		}
		t.Reset(consolePoll)
	}
}

// pinHostKeys waits for this boot's host keys on the console (see
// consoleHostKeys) and makes them the only keys pinned in kh for addr (the
// guest IP; "host:port" in tests), replacing an earlier VM's pin for a reused
// IP. Call it after the VMM is launched and before the first SSH dial. On
// failure the address's earlier pins are removed too, so nothing is trusted
// for it; the error is one line, and for an image whose guest does not print
// its keys it says how to rebuild the image.
func (m consoleMark) pinHostKeys(ctx context.Context, kh *guestssh.KnownHosts, addr string, img store.ImageRecord) error {
	keys, err := m.consoleHostKeys(ctx)
	if err == nil {
		if err = kh.Pin(addr, keys...); err == nil {
			return nil
		}
	}
	_ = kh.Remove(addr)
	if errors.Is(err, guestssh.ErrNoConsoleHostKeys) {
		return fmt.Errorf("%w: banger pins a guest's SSH host keys from its console and never trusts the network for them, "+
			"and image %s is too old to print them; %s", err, img.Name, rebuildHint(img))
	}
	return fmt.Errorf("pin the guest's SSH host keys: %w", err)
}

// rebuildHint says how to get a version of img whose guest announces its
// host keys on the console.
func rebuildHint(img store.ImageRecord) string {
	src := img.Meta["source"]
	switch {
	case strings.HasPrefix(src, "guestbuild"):
		return fmt.Sprintf("rebuild it with 'banger image build %s'", img.Name)
	case strings.HasPrefix(src, "oci "):
		ref, _, _ := strings.Cut(strings.TrimPrefix(src, "oci "), "@")
		return fmt.Sprintf("import it again with 'banger image pull %s --name %s --force'", ref, img.Name)
	case strings.HasPrefix(src, "catalog "):
		return fmt.Sprintf("pull a newer build with 'banger image pull %s --force'", img.Name)
	default:
		return fmt.Sprintf("rebuild it (for a built-in image: 'banger image build %s') so that its guest prints "+
			"'%s<type> <base64>' on ttyS0 before '%s' (docs/guest.md)", img.Name, guestssh.ConsoleHostKeyMarker, guestssh.ConsoleReadyMarker)
	}
}
