package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/store"
)

// SerialLogMax is the most a VM's serial.log (its console, which the guest
// writes without limit) may hold on disk. The monitor cuts it back about
// once a second, so between two passes it can pass the cap by one second of
// console output.
const SerialLogMax = 16 << 20

// CapSerialLog keeps the console log at path to at most max bytes. When it
// is larger, its newest max/2 bytes (from the first line start in them) move
// to the front, after a line saying how many bytes were dropped, and the
// file is truncated there. The VMM keeps writing through its O_APPEND
// descriptor, so its next write lands at the new end. Output it writes
// during the cut is moved along; only what it writes between the last check
// and the truncation (microseconds) is lost.
//
// A missing log is not an error. path is opened with O_NOFOLLOW: a symlink
// is refused, never followed, and so is anything but a regular file.
func CapSerialLog(path string, max int64) error {
	if max < 4096 {
		return fmt.Errorf("serial log cap %d is under 4096 bytes", max)
	}
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if errors.Is(err, syscall.ELOOP) {
		return fmt.Errorf("serial log %s is a symlink; not following it", path)
	}
	if err != nil {
		return fmt.Errorf("serial log: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("serial log: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("serial log %s is not a regular file (%s)", path, fi.Mode().Type())
	}
	size := fi.Size()
	if size <= max {
		return nil
	}

	// Keep the newest max/2 bytes, starting after their first newline when
	// one comes early enough, so the kept part starts with a whole line.
	src := size - max/2
	buf := make([]byte, 64<<10)
	n, err := f.ReadAt(buf[:min(4096, int(max/2))], src)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("serial log %s: %w", path, err)
	}
	if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
		src += int64(i) + 1
	}
	marker := fmt.Sprintf("[banger: %d bytes of older console output dropped]\n", src)
	if _, err := f.WriteAt([]byte(marker), 0); err != nil {
		return fmt.Errorf("serial log %s: %w", path, err)
	}
	// dst stays behind src (src > max/2 > len(marker)), so copying forwards
	// never overwrites bytes still to be copied.
	dst := int64(len(marker))
	end := size
	for range 8 { // follow what the VMM appends meanwhile, within reason
		for src < end {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), end-src)], src)
			if n > 0 {
				if _, werr := f.WriteAt(buf[:n], dst); werr != nil {
					return fmt.Errorf("serial log %s: %w", path, werr)
				}
				src += int64(n)
				dst += int64(n)
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				return fmt.Errorf("serial log %s: %w", path, err)
			}
		}
		fi, err := f.Stat()
		if err != nil {
			return fmt.Errorf("serial log %s: %w", path, err)
		}
		if fi.Size() <= end {
			break
		}
		end = fi.Size()
	}
	if err := f.Truncate(dst); err != nil {
		return fmt.Errorf("serial log %s: %w", path, err)
	}
	return nil
}

// serialCapErrs remembers the last CapSerialLogs error per VM id, so a log
// that cannot be cut is reported once, not every second.
var serialCapErrs sync.Map

// CapSerialLogs runs CapSerialLog with SerialLogMax on the serial log of
// every VM in recs whose VMM may be running (starting, running, stopping or
// error). The daemon's monitor calls it once a second. A failure is logged
// when it first happens for a VM (and again if it changes), never returned.
func (s *Service) CapSerialLogs(ctx context.Context, recs []store.VMRecord) {
	for _, r := range recs {
		switch r.State {
		case api.StateStarting, api.StateRunning, api.StateStopping, api.StateError:
		default:
			continue
		}
		if r.Runtime.SerialLog == "" {
			continue
		}
		err := CapSerialLog(r.Runtime.SerialLog, SerialLogMax)
		if err == nil {
			serialCapErrs.Delete(r.ID)
			continue
		}
		if prev, ok := serialCapErrs.Swap(r.ID, err.Error()); !ok || prev != err.Error() {
			logging.From(ctx).Warn("cannot cap the serial log", "vm", r.Name, "error", err.Error())
		}
	}
}
