package vm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/store"
)

// TestCapSerialLog: a serial log past the cap is cut to its newest part,
// from a line start, after a line saying how much was dropped; a log under
// the cap and a missing log are left alone.
func TestCapSerialLog(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "serial.log")
	const max = 64 << 10
	var b bytes.Buffer
	for i := 0; b.Len() < 3*max; i++ {
		fmt.Fprintf(&b, "line %06d of the guest console\n", i)
	}
	full := b.Bytes()
	if err := os.WriteFile(path, full, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CapSerialLog(path, max); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if len(got) > max {
		t.Fatalf("log is %d bytes after capping at %d", len(got), max)
	}
	first, rest, _ := bytes.Cut(got, []byte("\n"))
	dropped := len(full) - len(rest)
	if want := fmt.Sprintf("[banger: %d bytes of older console output dropped]", dropped); string(first) != want {
		t.Errorf("first line %q, want %q", first, want)
	}
	if !bytes.HasSuffix(full, rest) || !bytes.HasPrefix(rest, []byte("line ")) || len(rest) < max/2-64 {
		t.Errorf("kept %d bytes that are not the newest whole lines: %.40q…", len(rest), rest)
	}

	// Under the cap: untouched.
	before, _ := os.ReadFile(path)
	if err := CapSerialLog(path, max); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("a log under the cap was changed")
	}
	// No log yet: nothing to do.
	if err := CapSerialLog(filepath.Join(dir, "none.log"), max); err != nil {
		t.Errorf("missing log: %v", err)
	}
}

// TestCapSerialLogWhileAppending: the VMM keeps its O_APPEND descriptor, so
// after the cut its writes land at the new end, and the file stays bounded
// however much a guest writes.
func TestCapSerialLogWhileAppending(t *testing.T) {
	path := filepath.Join(t.TempDir(), "serial.log")
	vmm, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer vmm.Close()
	const max = 256 << 10
	line := []byte(strings.Repeat("spam from a hostile guest ", 3) + "\n")
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			vmm.Write(line)
		}
	}()
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if err := CapSerialLog(path, max); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if err := CapSerialLog(path, max); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	if fi.Size() > max {
		t.Fatalf("log is %d bytes, over the %d cap", fi.Size(), max)
	}
	vmm.Write([]byte("last words\n"))
	got, _ := os.ReadFile(path)
	if !bytes.HasSuffix(got, []byte("\nlast words\n")) || bytes.Contains(got, []byte{0}) {
		t.Errorf("the VMM's next write did not land at the end of the cut log: %q", got[len(got)-min(80, len(got)):])
	}
}

// TestCapSerialLogRefusesSymlink: a serial.log that is a symlink is never
// followed (the target is not cut); neither is anything but a regular file
// touched.
func TestCapSerialLogRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	big := bytes.Repeat([]byte("precious\n"), 10000)
	if err := os.WriteFile(victim, big, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "serial.log")
	if err := os.Symlink(victim, link); err != nil {
		t.Fatal(err)
	}
	err := CapSerialLog(link, 4096)
	if err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("err = %v", err)
	}
	if got, _ := os.ReadFile(victim); !bytes.Equal(got, big) {
		t.Error("the symlink's target was changed")
	}
	fifo := filepath.Join(dir, "fifo.log")
	if err := mkfifo(fifo); err != nil {
		t.Skip(err)
	}
	if err := CapSerialLog(fifo, 4096); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("fifo: err = %v", err)
	}
}

// TestCapSerialLogsMonitorHook: the monitor's per-tick hook caps the logs
// of VMs whose VMM may be running and leaves the others alone.
func TestCapSerialLogsMonitorHook(t *testing.T) {
	dir := t.TempDir()
	big := bytes.Repeat([]byte("x\n"), SerialLogMax/2+1024) // over the cap
	var recs []store.VMRecord
	for _, st := range []string{api.StateRunning, api.StateStarting, api.StateError, api.StateStopped} {
		p := filepath.Join(dir, st+".log")
		if err := os.WriteFile(p, big, 0o600); err != nil {
			t.Fatal(err)
		}
		recs = append(recs, store.VMRecord{ID: st, Name: st, State: st, Runtime: store.RuntimeRecord{SerialLog: p}})
	}
	(&Service{}).CapSerialLogs(context.Background(), recs)
	for _, r := range recs {
		fi, _ := os.Stat(r.Runtime.SerialLog)
		capped := fi.Size() <= SerialLogMax
		if want := r.State != api.StateStopped; capped != want {
			t.Errorf("%s VM: log is %d bytes (cap %d)", r.State, fi.Size(), SerialLogMax)
		}
	}
}

func mkfifo(p string) error { return syscall.Mkfifo(p, 0o600) }
