package fcvmm

// Fuzz target for banger-vmm's Firecracker API: whoever holds the API socket
// sends these bodies. scripts/fuzz.sh lists it. Names carry an "fz" prefix
// so they cannot collide with the package's other test helpers.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// The API opens what bodies name: drives read-write, log and metrics files
// (created), kernels, vsock sockets (bound, stale ones removed) and taps. A
// fuzzer running that as root must not reach the host, so:
//   - a body holding '/' or '\' is not sent: every path in what is sent is a
//     single relative name (JSON can spell '/' only as "\/" or "\u002f"),
//     and the target runs in a scratch directory, so files stay in it;
//   - requests run on one OS thread in a network namespace of its own, so a
//     tap a body names is created (and dies) there, not on the host. Where
//     no namespace can be made, PUTs on network-interfaces are not sent when
//     running as root (without root a tap cannot be created anyway).

var (
	fzNetnsOnce sync.Once
	fzNetnsRun  chan func()
)

// fzRun runs fn on the namespaced thread, or reports false if there is none.
func fzRun(fn func()) bool {
	fzNetnsOnce.Do(func() {
		ready := make(chan bool)
		ch := make(chan func())
		go func() {
			// Never unlocked: the thread is discarded with its namespace
			// should this goroutine ever end.
			runtime.LockOSThread()
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				ready <- false
				return
			}
			ready <- true
			for f := range ch {
				f()
			}
		}()
		if <-ready {
			fzNetnsRun = ch
		}
	})
	if fzNetnsRun == nil {
		return false
	}
	done := make(chan struct{})
	fzNetnsRun <- func() { defer close(done); fn() }
	<-done
	return true
}

// fzMaxBody is the payload limit the target sets, small enough that the
// fuzzer reaches it.
const fzMaxBody = 2048

// fzConfig renders what a post-boot request must never change: what the
// guest is given (drives, kernel, taps, vsock, machine, serial) and where
// logs and metrics go.
func fzConfig(v *vmm) string {
	var b strings.Builder
	fmt.Fprintf(&b, "machine=%+v entropy=%v serial=%q log=%d metrics=%d\n", v.cfg.machine, v.cfg.entropy, v.cfg.serialOut, v.log.fd, v.met.fd)
	if bc := v.cfg.boot; bc != nil {
		fmt.Fprintf(&b, "boot kernel=%q initrd=%q args=%v\n", bc.kernelPath, bc.initrdPath, bootArgsOf(bc))
	}
	for _, d := range v.cfg.drives {
		fmt.Fprintf(&b, "drive id=%q path=%q root=%v ro=%v partuuid=%q rw=%v\n", d.id, d.path, d.root, d.readOnly, d.partuuid, d.rw != nil)
	}
	for _, n := range v.cfg.nets {
		fmt.Fprintf(&b, "net id=%q dev=%q mac=%q\n", n.id, n.hostDev, n.mac)
	}
	if vs := v.cfg.vsock; vs != nil {
		fmt.Fprintf(&b, "vsock cid=%d path=%q\n", vs.cid, vs.path)
	}
	return b.String()
}

// fzRelease closes everything the VMM holds open.
func fzRelease(v *vmm) {
	for _, d := range v.cfg.drives {
		d.close()
	}
	if v.cfg.boot != nil {
		v.cfg.boot.close()
	}
	for _, n := range v.cfg.nets {
		if n.tap != nil {
			n.tap.Close()
		}
	}
	if v.cfg.vsock != nil && v.cfg.vsock.ln != nil {
		v.cfg.vsock.ln.Close()
	}
	if v.log.fd >= 0 {
		unix.Close(v.log.fd)
		v.log.fd = -1
	}
	if v.met.fd >= 0 {
		unix.Close(v.met.fd)
		v.met.fd = -1
	}
}

// fzCheckResponse checks the response shapes every answer must have.
func fzCheckResponse(t *testing.T, what string, rec *httptest.ResponseRecorder) {
	t.Helper()
	body := rec.Body.Bytes()
	if rec.Header().Get("Server") != "Firecracker API" {
		t.Fatalf("%s: Server header %q", what, rec.Header().Get("Server"))
	}
	switch rec.Code {
	case 204:
		if len(body) != 0 || rec.Header().Get("Content-Type") != "" {
			t.Fatalf("%s: 204 with body %q", what, body)
		}
		return
	case 200, 400:
	default:
		t.Fatalf("%s: status %d", what, rec.Code)
	}
	if rec.Header().Get("Content-Type") != "application/json" || rec.Header().Get("Content-Length") != strconv.Itoa(len(body)) {
		t.Fatalf("%s: Content-Type %q Content-Length %q for %d bytes", what, rec.Header().Get("Content-Type"), rec.Header().Get("Content-Length"), len(body))
	}
	if !json.Valid(body) {
		t.Fatalf("%s: body is not JSON: %q", what, body)
	}
	if rec.Code == 400 {
		var fault map[string]any
		if err := json.Unmarshal(body, &fault); err != nil || len(fault) != 1 {
			t.Fatalf("%s: 400 body %q is not {\"fault_message\": ...}", what, body)
		}
		if msg, ok := fault["fault_message"].(string); !ok || msg == "" {
			t.Fatalf("%s: 400 body %q has no fault_message", what, body)
		}
	}
}

// fzSeeds are FuzzAPI's seed scripts.
var fzSeeds = []string{
	"GET /\nGET /version\nGET /vm/config\nGET /machine-config",
	`PUT /machine-config {"vcpu_count":2,"mem_size_mib":256,"smt":false}` + "\n" + `PATCH /machine-config {"mem_size_mib":512,"huge_pages":"2M"}` + "\nGET /machine-config",
	`PUT /boot-source {"kernel_image_path":"vmlinux","boot_args":"console=ttyS0 reboot=k panic=1"}` + "\n" +
		`PUT /drives/rootfs {"drive_id":"rootfs","path_on_host":"rootfs","is_root_device":true,"is_read_only":false}` + "\n" +
		`PUT /drives/data {"drive_id":"data","path_on_host":"data","is_root_device":false,"is_read_only":true}` + "\n" +
		`PUT /network-interfaces/eth0 {"iface_id":"eth0","host_dev_name":"fztap0","guest_mac":"06:00:ac:1e:00:02"}` + "\n" +
		`PUT /vsock {"guest_cid":3,"uds_path":"v.sock"}` + "\n" +
		`PUT /logger {"log_path":"fc.log","level":"Debug","show_level":true,"show_log_origin":true}` + "\n" +
		`PUT /metrics {"metrics_path":"metrics.json"}` + "\n" +
		`PUT /entropy {}` + "\n" + `PUT /serial {"serial_out_path":"serial.log"}` + "\nGET /vm/config\n" +
		`PUT /actions {"action_type":"InstanceStart"}`,
	`PUT /drives/rootfs {"drive_id":"rootfs","path_on_host":"rootfs","is_root_device":true}` + "\nBOOT\n" +
		`PUT /drives/evil {"drive_id":"evil","path_on_host":"data","is_root_device":false,"is_read_only":false}` + "\n" +
		`PATCH /drives/rootfs {"drive_id":"rootfs","path_on_host":"data"}` + "\n" +
		`PATCH /drives/rootfs {"drive_id":"rootfs","rate_limiter":{"bandwidth":{"size":1,"refill_time":100}}}` + "\n" +
		`PUT /boot-source {"kernel_image_path":"data"}` + "\n" + `PUT /actions {"action_type":"FlushMetrics"}` + "\n" +
		`PUT /actions {"action_type":"SendCtrlAltDel"}` + "\n" + `PATCH /vm {"state":"Paused"}` + "\n" +
		`PUT /machine-config {"vcpu_count":1,"mem_size_mib":128}` + "\n" + `PUT /network-interfaces/eth1 {"iface_id":"eth1","host_dev_name":"fztap1"}`,
	`PUT /drives/a {"drive_id":"b","path_on_host":"rootfs","is_root_device":false}` + "\n" + `PUT /drives/a {"drive_id":"a","path_on_host":"rootfs","is_root_device":true,"unknown":1}` + "\n" +
		`PUT /drives/a {"drive_id":"a","path_on_host":"rootfs","is_root_device":true}` + "\n" + `PUT /drives/b {"drive_id":"b","path_on_host":"rootfs","is_root_device":true}`,
	`PUT /machine-config {"vcpu_count":3,"mem_size_mib":1,"smt":true}` + "\n" + `PUT /machine-config {"vcpu_count":"x"}` + "\n" + `PUT /machine-config null` + "\n" + `GET / {"body":1}` + "\n" + `PUT /machine-config ` + strings.Repeat(" ", fzMaxBody),
	`PUT /logger {"level":"loud"}` + "\n" + `PUT /vsock {"guest_cid":2,"uds_path":"v.sock","vsock_id":"x"}` + "\n" + `PUT /mmds/config {}` + "\n" + `DELETE /drives/a` + "\n" + `PUT /snapshot/load {}`,
	`PUT /snapshot/load {"snapshot_path":"data","mem_backend":{"backend_path":"data","backend_type":"File"},"resume_vm":true}`,
	`PUT /logger {"level":"info"}` + "\n" + `PUT /snapshot/load {"snapshot_path":"nope","mem_file_path":"data"}`,
	`PUT /drives/a {"drive_id":"a","path_on_host":"rootfs","is_root_device":true}` + "\n" + `PUT /snapshot/load {"snapshot_path":"data","mem_file_path":"data"}`,
	"BOOT\n" + `PUT /snapshot/create {"snapshot_path":"s","mem_file_path":"m","snapshot_type":"Diff"}`,
}

// FuzzAPI feeds banger-vmm's API handler a script: one request per line,
// "METHOD /path body", and "BOOT" to mark the microVM started (as
// InstanceStart would, without QEMU). It never panics. Every answer is a
// 200 with JSON, a 204 without a body, or a 400 whose body is exactly
// {"fault_message": "..."}, with Firecracker's headers; a body over the
// payload limit is refused and changes nothing. Before boot the config stays
// consistent (unique drive and interface ids, the root drive first and only
// one, open descriptors for what was accepted, a valid machine config that
// survives GET then PUT unchanged). After boot no request changes what the
// guest is given or where logs go, and no PUT but /actions succeeds
// (Firecracker's post-boot rules; a PUT /drives after boot would attach a
// host file to a running guest).
func FuzzAPI(f *testing.F) {
	for _, s := range fzSeeds {
		f.Add([]byte(s))
	}

	f.Fuzz(func(t *testing.T, script []byte) {
		dir := t.TempDir()
		for _, name := range []string{"vmlinux", "rootfs", "data"} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte("not a kernel, not a disk: "+name), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		t.Chdir(dir)
		lg := newLogger("fuzz-vm")
		logPath := filepath.Join(dir, "vmm.log")
		if err := lg.configure(&logPath, nil, nil, nil); err != nil {
			t.Fatal(err)
		}
		v := newVMM("fuzz-vm", lg)
		v.maxBody = fzMaxBody
		exited := false
		v.sup.exit = func(code int) {
			// Only a failed snapshot load ends the VMM (after answering), as
			// it ends Firecracker.
			if !v.fatal || code != exitGeneric {
				t.Errorf("the VMM wanted to exit %d", code)
			}
			exited = true
		}
		v.sup.stdoutFd = -1
		namespaced := fzRun(func() {})
		defer fzRun(func() { fzRelease(v) })
		if !namespaced {
			defer fzRelease(v)
		}

		do := func(method, path string, body []byte) *httptest.ResponseRecorder {
			// As a server sees it: Body is never nil.
			req, err := http.NewRequest(method, "http://localhost"+path, bytes.NewReader(body))
			if err != nil {
				return nil
			}
			rec := httptest.NewRecorder()
			if !fzRun(func() { v.ServeHTTP(rec, req) }) {
				v.ServeHTTP(rec, req)
			}
			return rec
		}

		lines := strings.Split(string(script), "\n")
		if len(lines) > 24 {
			lines = lines[:24]
		}
		for i, line := range lines {
			line = strings.TrimRight(line, "\r")
			if line == "BOOT" {
				v.mu.Lock()
				v.started = true
				v.mu.Unlock()
				continue
			}
			method, rest, _ := strings.Cut(line, " ")
			path, body, _ := strings.Cut(rest, " ")
			if !strings.HasPrefix(path, "/") || strings.ContainsAny(body, `/\`) {
				continue // see the note at the top of the file
			}
			if !namespaced && os.Geteuid() == 0 && method == http.MethodPut && strings.HasPrefix(strings.TrimLeft(path, "/"), "network-interfaces") {
				continue
			}
			before := fzConfig(v)
			started := v.started
			rec := do(method, path, []byte(body))
			if rec == nil {
				continue
			}
			what := fmt.Sprintf("line %d %q", i+1, line)
			fzCheckResponse(t, what, rec)
			if exited {
				if rec.Code != http.StatusBadRequest || !strings.HasPrefix(strings.TrimPrefix(rec.Body.String(), `{"fault_message":"`), "Load snapshot error: ") {
					t.Errorf("%s: the VMM exited after %d %s", what, rec.Code, rec.Body.String())
				}
				return // the process would be gone
			}
			after := fzConfig(v)
			if len(body) > fzMaxBody {
				if rec.Code != 400 || !strings.Contains(rec.Body.String(), "larger than the limit") || after != before {
					t.Fatalf("%s: a %d-byte body over the limit got %d %s", what, len(body), rec.Code, rec.Body.String())
				}
			}
			if started {
				if after != before {
					t.Fatalf("%s changed the config after boot:\nbefore %s\nafter  %s", what, before, after)
				}
				if method == http.MethodPut && rec.Code < 300 && !strings.HasPrefix(strings.TrimLeft(path, "/"), "actions") {
					t.Fatalf("%s: a PUT after boot succeeded (%d)", what, rec.Code)
				}
				continue
			}
			fzCheckPreBoot(t, what, v)
			if rec.Code < 300 && strings.HasPrefix(strings.TrimLeft(path, "/"), "machine-config") {
				fzMachineRoundTrip(t, what, do)
			}
		}
	})
}

// fzCheckPreBoot checks the configuration's invariants.
func fzCheckPreBoot(t *testing.T, what string, v *vmm) {
	t.Helper()
	ids := map[string]bool{}
	for i, d := range v.cfg.drives {
		if ids[d.id] {
			t.Fatalf("%s: drive %q configured twice", what, d.id)
		}
		ids[d.id] = true
		if d.root && i != 0 {
			t.Fatalf("%s: root drive %q at position %d", what, d.id, i)
		}
		if d.ro == nil || d.readOnly != (d.rw == nil) {
			t.Fatalf("%s: drive %q read-only %v holds ro %v rw %v", what, d.id, d.readOnly, d.ro != nil, d.rw != nil)
		}
		if strings.ContainsAny(d.path, `/\`) {
			t.Fatalf("%s: drive %q has path %q, which no body sent", what, d.id, d.path)
		}
	}
	nets := map[string]bool{}
	for _, n := range v.cfg.nets {
		if nets[n.id] {
			t.Fatalf("%s: interface %q configured twice", what, n.id)
		}
		nets[n.id] = true
		if n.tap == nil {
			t.Fatalf("%s: interface %q has no tap open", what, n.id)
		}
	}
	if b := v.cfg.boot; b != nil {
		if b.kernel == nil || (b.initrdPath != "") != (b.initrd != nil) {
			t.Fatalf("%s: boot source without its open files", what)
		}
		if b.bootArgs != nil && checkCmdline(*b.bootArgs) != nil {
			t.Fatalf("%s: accepted boot args %q", what, *b.bootArgs)
		}
	}
	m := v.cfg.machine
	if m.VcpuCount < 1 || m.VcpuCount > 32 || m.MemSizeMib < 1 || (m.Smt && m.VcpuCount > 1 && m.VcpuCount%2 == 1) {
		t.Fatalf("%s: accepted machine config %+v", what, m)
	}
}

// fzMachineRoundTrip: what GET /machine-config reports, PUT back, is
// accepted and changes nothing.
func fzMachineRoundTrip(t *testing.T, what string, do func(method, path string, body []byte) *httptest.ResponseRecorder) {
	t.Helper()
	get := do(http.MethodGet, "/machine-config", nil)
	if get.Code != 200 {
		t.Fatalf("%s: GET /machine-config: %d %s", what, get.Code, get.Body)
	}
	cfg := get.Body.String()
	if put := do(http.MethodPut, "/machine-config", []byte(cfg)); put.Code != 204 {
		t.Fatalf("%s: PUT of the GET /machine-config answer %s: %d %s", what, cfg, put.Code, put.Body)
	}
	if again := do(http.MethodGet, "/machine-config", nil); again.Body.String() != cfg {
		t.Fatalf("%s: machine config changed by its own round trip: %s then %s", what, cfg, again.Body)
	}
}
