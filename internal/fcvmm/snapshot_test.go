package fcvmm

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAPISnapshotRules: PUT /snapshot/create and /snapshot/load refuse what
// Firecracker refuses, with its words, without touching QEMU: the body's
// shape, create before boot or while running, Diff snapshots, a load after
// a boot-specific resource; a failed load answers, then ends the VMM.
func TestAPISnapshotRules(t *testing.T) {
	tv := newTestVMM(t)
	des := "An error occurred when deserializing the json body of a request: "
	expect(t, "no op", tv.do(t, "PUT", "/snapshot", `{"snapshot_path":"s"}`), 400, "Missing snapshot operation type.")
	expect(t, "bad op", tv.do(t, "PUT", "/snapshot/take", `{"snapshot_path":"s"}`), 400, "Invalid request method and/or path: …")
	expect(t, "create: no mem", tv.do(t, "PUT", "/snapshot/create", `{"snapshot_path":"s"}`), 400, des+"missing field `mem_file_path`.")
	expect(t, "create: version", tv.do(t, "PUT", "/snapshot/create", `{"snapshot_path":"s","mem_file_path":"m","version":"1.0.0"}`), 400, des+"unknown field `version`, …")
	expect(t, "create: bad type", tv.do(t, "PUT", "/snapshot/create", `{"snapshot_path":"s","mem_file_path":"m","snapshot_type":"Half"}`), 400, des+"unknown variant `Half`, expected `Full` or `Diff`.")
	expect(t, "load: both", tv.do(t, "PUT", "/snapshot/load", `{"snapshot_path":"s","mem_file_path":"m","mem_backend":{"backend_path":"m","backend_type":"File"}}`), 400,
		des+"too many fields: either `mem_backend` or `mem_file_path` exclusively is required.")
	expect(t, "load: neither", tv.do(t, "PUT", "/snapshot/load", `{"snapshot_path":"s"}`), 400, des+"missing field: either `mem_backend` or `mem_file_path` is required.")
	expect(t, "load: bad backend", tv.do(t, "PUT", "/snapshot/load", `{"snapshot_path":"s","mem_backend":{"backend_path":"m","backend_type":"Disk"}}`), 400, des+"unknown variant `Disk`, expected `File` or `Uffd`.")
	expect(t, "load: uffd", tv.do(t, "PUT", "/snapshot/load", `{"snapshot_path":"s","mem_backend":{"backend_path":"m","backend_type":"Uffd"}}`), 400, "The requested operation is not supported: a Uffd memory backend is not supported by banger-vmm")

	// The logger is not boot-specific; a drive is.
	expect(t, "logger", tv.do(t, "PUT", "/logger", `{"log_path":"`+filepath.Join(tv.dir, "l.log")+`"}`), 204, "")
	img := writeFile(t, filepath.Join(tv.dir, "d.img"), make([]byte, 4096))
	expect(t, "drive", tv.do(t, "PUT", "/drives/root", `{"drive_id":"root","path_on_host":"`+img+`","is_root_device":true}`), 204, "")
	expect(t, "load after a drive", tv.do(t, "PUT", "/snapshot/load", `{"snapshot_path":"s","mem_file_path":"m"}`), 400,
		"Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources.")

	tv.v.mu.Lock()
	tv.v.started = true
	tv.v.mu.Unlock()
	expect(t, "load after boot", tv.do(t, "PUT", "/snapshot/load", `{"snapshot_path":"s","mem_file_path":"m"}`), 400,
		"The requested operation is not supported after starting the microVM.")
	expect(t, "create running", tv.do(t, "PUT", "/snapshot/create", `{"snapshot_path":"s","mem_file_path":"m"}`), 400,
		"Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running")
	expect(t, "create diff", tv.do(t, "PUT", "/snapshot/create", `{"snapshot_path":"s","mem_file_path":"m","snapshot_type":"Diff"}`), 400,
		"The requested operation is not supported: a Diff snapshot is not supported by banger-vmm")
}

// TestSnapshotLoadFailureEndsVMM: a load that cannot restore (no file, a
// foreign file, another layout, a memory file of the wrong size) answers
// Firecracker's "Load snapshot error" and then exits with status 1.
func TestSnapshotLoadFailureEndsVMM(t *testing.T) {
	dir := t.TempDir()
	mem := writeFile(t, filepath.Join(dir, "vm.mem"), make([]byte, 8192))
	rec := snapshotRecord{Magic: snapshotMagic, Format: snapshotFormat, Layout: snapshotLayout, QEMU: "7.2.0", Accel: "tcg",
		Machine: machineCfg{VcpuCount: 1, MemSizeMib: 128}, Kernel: filepath.Join(dir, "vmlinux"), Cmdline: "console=ttyS0", MemBytes: 4096}
	write := func(name string, r snapshotRecord) string {
		b, _ := json.Marshal(r)
		return writeFile(t, filepath.Join(dir, name), b)
	}
	other := rec
	other.Layout = snapshotLayout + 1
	from := "Load snapshot error: Failed to restore from snapshot: "
	for _, c := range []struct{ name, snap, want string }{
		{"missing", filepath.Join(dir, "none.snap"), from + "Failed to get snapshot state from file: Failed to open snapshot file: No such file or directory (os error 2)"},
		{"foreign", writeFile(t, filepath.Join(dir, "fc.snap"), []byte("\x00\x01firecracker")), from + "Failed to get snapshot state from file: Failed to load snapshot state from file: not a banger-vmm snapshot file …"},
		{"layout", write("layout.snap", other), from + "Failed to get snapshot state from file: Failed to load snapshot state from file: Invalid data version: …"},
		{"mem size", write("ok.snap", rec), from + "Failed to load guest memory: the memory file " + mem + " is 8192 bytes where the snapshot recorded 4096 (truncated, or another snapshot's)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tv := newTestVMM(t)
			exited := make(chan int, 1)
			tv.v.sup.exit = func(c int) { exited <- c }
			expect(t, c.name, tv.do(t, "PUT", "/snapshot/load", `{"snapshot_path":"`+c.snap+`","mem_backend":{"backend_path":"`+mem+`","backend_type":"File"}}`), 400, c.want)
			select {
			case code := <-exited:
				if code != exitGeneric {
					t.Errorf("exit status %d after a failed load, want %d", code, exitGeneric)
				}
			case <-time.After(5 * time.Second):
				t.Error("the VMM did not exit after a failed load")
			}
		})
	}
	if _, err := os.Stat(mem); err != nil {
		t.Fatal("a failed load touched the memory file")
	}
}

// TestAPIStopsAtSignal ([P9] item 5): once a signal starts ending the VMM,
// its API answers nothing more, neither on a kept-alive connection nor on
// a new one: Firecracker dies at once, and banger-vmm answered PATCH /vm
// and GET / for 13-60 ms while it took QEMU down.
func TestAPIStopsAtSignal(t *testing.T) {
	tv := newTestVMM(t)
	expect(t, "GET / before", tv.do(t, "GET", "/", ""), 200, "")
	tv.v.sup.beginStop()
	for _, r := range []struct{ method, path, body string }{{"GET", "/", ""}, {"PATCH", "/vm", `{"state":"Paused"}`}} {
		req, _ := http.NewRequest(r.method, "http://localhost"+r.path, strings.NewReader(r.body))
		if resp, err := tv.client.Do(req); err == nil {
			resp.Body.Close()
			t.Errorf("%s %s answered %d after the signal", r.method, r.path, resp.StatusCode)
		}
	}
}
