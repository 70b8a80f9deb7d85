package fcvmm

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testVMM is an in-process banger-vmm API server on a temporary socket. It
// never starts QEMU unless a test asks for InstanceStart with a bootable
// kernel (none does here).
type testVMM struct {
	v      *vmm
	sock   string
	dir    string
	client *http.Client
	logf   string
}

func newTestVMM(t *testing.T) *testVMM {
	t.Helper()
	dir := t.TempDir()
	tv := &testVMM{dir: dir, sock: filepath.Join(dir, "api.sock"), logf: filepath.Join(dir, "vmm.log")}
	lg := newLogger("test-vm")
	if err := lg.configure(&tv.logf, nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	tv.v = newVMM("test-vm", lg)
	tv.v.sup.exit = func(code int) { t.Errorf("the VMM wanted to exit %d", code) }
	l, err := listenAPI(tv.sock)
	if err != nil {
		t.Fatal(err)
	}
	tv.v.sup.apiLn = l
	srv := &http.Server{Handler: tv.v}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	tv.client = clientFor(tv.sock)
	return tv
}

// clientFor is an HTTP client for the API socket at sock.
func clientFor(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
}

type response struct {
	status int
	header http.Header
	body   string
}

func (r response) fault() string {
	var f struct {
		FaultMessage string `json:"fault_message"`
	}
	json.Unmarshal([]byte(r.body), &f)
	return f.FaultMessage
}

func (tv *testVMM) do(t testing.TB, method, path, body string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://localhost"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := tv.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

// expect checks a response's status and, for errors, its fault message
// (a prefix is enough when want ends with "…").
func expect(t *testing.T, what string, r response, status int, want string) {
	t.Helper()
	if r.status != status {
		t.Errorf("%s: status %d, want %d (body %q)", what, r.status, status, r.body)
		return
	}
	if r.header.Get("Server") != "Firecracker API" {
		t.Errorf("%s: Server header %q", what, r.header.Get("Server"))
	}
	switch {
	case status == 204:
		if r.body != "" || r.header.Get("Content-Type") != "" {
			t.Errorf("%s: 204 with body %q / Content-Type %q", what, r.body, r.header.Get("Content-Type"))
		}
	default:
		if r.header.Get("Content-Type") != "application/json" {
			t.Errorf("%s: Content-Type %q", what, r.header.Get("Content-Type"))
		}
	}
	if status == 400 {
		got := r.fault()
		if p, ok := strings.CutSuffix(want, "…"); ok {
			if !strings.HasPrefix(got, p) {
				t.Errorf("%s: fault %q, want prefix %q", what, got, p)
			}
		} else if got != want {
			t.Errorf("%s: fault %q, want %q", what, got, want)
		}
	}
}

func writeFile(t *testing.T, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestAPIRoutingAndShapes(t *testing.T) {
	tv := newTestVMM(t)
	r := tv.do(t, "GET", "/", "")
	expect(t, "GET /", r, 200, "")
	if r.body != `{"id":"test-vm","state":"Not started","vmm_version":"1.14.1","app_name":"Firecracker"}` {
		t.Errorf("GET / = %s", r.body)
	}
	r = tv.do(t, "GET", "/version", "")
	expect(t, "GET /version", r, 200, "")
	if r.body != `{"firecracker_version":"1.14.1"}` {
		t.Errorf("GET /version = %s", r.body)
	}
	r = tv.do(t, "GET", "/machine-config", "")
	expect(t, "GET /machine-config", r, 200, "")
	if r.body != `{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}` {
		t.Errorf("GET /machine-config = %s", r.body)
	}
	expect(t, "GET /vm/config", tv.do(t, "GET", "/vm/config", ""), 200, "")

	expect(t, "unknown route", tv.do(t, "GET", "/nope", ""), 400, "Invalid request method and/or path: GET nope.")
	expect(t, "unknown method", tv.do(t, "DELETE", "/drives/x", ""), 400, "Invalid request method and/or path: DELETE drives.")
	expect(t, "POST", tv.do(t, "POST", "/actions", `{"action_type":"InstanceStart"}`), 400, "Invalid request method and/or path: POST actions.")
	expect(t, "GET with body", tv.do(t, "GET", "/", `{}`), 400, "GET request cannot have a body.")
	expect(t, "empty PUT", tv.do(t, "PUT", "/machine-config", ""), 400, "Empty PUT request.")
	expect(t, "empty PATCH", tv.do(t, "PATCH", "/vm", ""), 400, "Empty PATCH request.")
	expect(t, "not JSON", tv.do(t, "PUT", "/machine-config", `vcpu`), 400, "An error occurred when deserializing the json body of a request: …")
	expect(t, "unknown field", tv.do(t, "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":64,"ht_enabled":true}`), 400,
		"An error occurred when deserializing the json body of a request: unknown field `ht_enabled`, expected one of `vcpu_count`, `mem_size_mib`, `smt`, `cpu_template`, `track_dirty_pages`, `huge_pages`.")
	expect(t, "missing field", tv.do(t, "PUT", "/machine-config", `{"vcpu_count":1}`), 400,
		"An error occurred when deserializing the json body of a request: missing field `mem_size_mib`.")
	expect(t, "wrong type", tv.do(t, "PUT", "/machine-config", `{"vcpu_count":"1","mem_size_mib":64}`), 400, "An error occurred when deserializing the json body of a request: invalid type…")
	expect(t, "vcpu 0", tv.do(t, "PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":64}`), 400,
		"Machine config error: The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")
	expect(t, "vcpu 33", tv.do(t, "PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":64}`), 400, "Machine config error: The vCPU number is invalid!…")
	expect(t, "odd smt", tv.do(t, "PUT", "/machine-config", `{"vcpu_count":3,"mem_size_mib":64,"smt":true}`), 400, "Machine config error: The vCPU number is invalid!…")
	expect(t, "mem 0", tv.do(t, "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":0}`), 400, "Machine config error: The memory size (MiB) is invalid.")
	expect(t, "machine-config", tv.do(t, "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":false}`), 204, "")
	expect(t, "PATCH machine-config", tv.do(t, "PATCH", "/machine-config", `{"mem_size_mib":512}`), 204, "")
	if r := tv.do(t, "GET", "/machine-config", ""); r.body != `{"vcpu_count":2,"mem_size_mib":512,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}` {
		t.Errorf("GET /machine-config after PUT+PATCH = %s", r.body)
	}

	// Ids.
	expect(t, "bad id", tv.do(t, "PUT", "/drives/bad-id", `{}`), 400, "API Resource IDs can only contain alphanumeric characters and underscores.")
	expect(t, "empty id", tv.do(t, "PUT", "/drives/", `{}`), 400, "The ID cannot be empty.")
	img := writeFile(t, filepath.Join(tv.dir, "disk.img"), make([]byte, 1<<20))
	expect(t, "id mismatch", tv.do(t, "PUT", "/drives/one", `{"drive_id":"two","path_on_host":"`+img+`","is_root_device":false,"is_read_only":false}`), 400,
		"The id from the path does not match the id from the body!")
	expect(t, "net id mismatch", tv.do(t, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth1","host_dev_name":"tap0"}`), 400,
		"The id from the path does not match the id from the body!")
}

func TestAPIDrives(t *testing.T) {
	tv := newTestVMM(t)
	img := func(name string) string { return writeFile(t, filepath.Join(tv.dir, name), make([]byte, 1<<20)) }
	put := func(id, path string, root, ro bool) response {
		b, _ := json.Marshal(map[string]any{"drive_id": id, "path_on_host": path, "is_root_device": root, "is_read_only": ro})
		return tv.do(t, "PUT", "/drives/"+id, string(b))
	}
	a, b, c := img("a.img"), img("b.img"), img("c.img")
	// The SDK's DrivesBuilder order: extra drives first, the root last.
	expect(t, "drive 0", put("extra0", a, false, false), 204, "")
	expect(t, "drive 1", put("extra1", b, false, true), 204, "")
	expect(t, "root", put("root_drive", c, true, false), 204, "")
	expect(t, "second root", put("other_root", a, true, false), 400, "Drive config error: A root block device already exists!")
	expect(t, "root replaced", put("root_drive", c, true, true), 204, "")
	var got []string
	for _, d := range tv.v.cfg.drives {
		got = append(got, d.id)
	}
	if strings.Join(got, ",") != "root_drive,extra0,extra1" {
		t.Errorf("drive order %v, want the root first, then PUT order", got)
	}
	if d := tv.v.cfg.drives[0]; !d.readOnly || d.rw != nil || d.ro == nil {
		t.Errorf("read-only root: readOnly=%v rw=%v ro=%v", d.readOnly, d.rw, d.ro)
	}
	expect(t, "missing file", put("gone", filepath.Join(tv.dir, "nope.img"), false, false), 400,
		"Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: No such file or directory (os error 2) "+filepath.Join(tv.dir, "nope.img"))
	expect(t, "bad cache_type", tv.do(t, "PUT", "/drives/x", `{"drive_id":"x","path_on_host":"`+a+`","is_root_device":false,"is_read_only":false,"cache_type":"None"}`), 400,
		"An error occurred when deserializing the json body of a request: …")
	// Firecracker v1.14 needs only drive_id and is_root_device.
	expect(t, "minimal drive", tv.do(t, "PUT", "/drives/x", `{"drive_id":"x","path_on_host":"`+a+`","is_root_device":false}`), 204, "")
	expect(t, "no is_root_device", tv.do(t, "PUT", "/drives/y", `{"drive_id":"y","path_on_host":"`+a+`"}`), 400,
		"An error occurred when deserializing the json body of a request: missing field `is_root_device`.")
	expect(t, "PATCH drive pre-boot", tv.do(t, "PATCH", "/drives/x", `{"drive_id":"x","path_on_host":"`+a+`"}`), 400,
		"The requested operation is not supported before starting the microVM.")
}

func TestAPIBootSourceAndStart(t *testing.T) {
	tv := newTestVMM(t)
	expect(t, "start without kernel", tv.do(t, "PUT", "/actions", `{"action_type":"InstanceStart"}`), 400,
		"Start microvm error: Cannot start microvm without kernel configuration.")
	missing := filepath.Join(tv.dir, "vmlinux")
	expect(t, "missing kernel", tv.do(t, "PUT", "/boot-source", `{"kernel_image_path":"`+missing+`"}`), 400,
		"Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)")
	// A bzImage (or anything not ELF) passes PUT /boot-source and is refused
	// at InstanceStart, as in Firecracker.
	bz := make([]byte, 4096)
	copy(bz[0x202:], "HdrS")
	kernel := writeFile(t, filepath.Join(tv.dir, "bzImage"), bz)
	expect(t, "missing initrd", tv.do(t, "PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`","initrd_path":"`+missing+`"}`), 400,
		"Boot source error: The initrd file cannot be opened due to invalid path or invalid permissions. No such file or directory (os error 2)")
	long := strings.Repeat("a", 2048)
	expect(t, "long cmdline", tv.do(t, "PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`","boot_args":"`+long+`"}`), 400,
		"Boot source error: The kernel command line is invalid: …")
	expect(t, "boot-source", tv.do(t, "PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`","boot_args":"console=ttyS0"}`), 204, "")
	expect(t, "start bzImage", tv.do(t, "PUT", "/actions", `{"action_type":"InstanceStart"}`), 400,
		"Start microvm error: Cannot load kernel due to invalid memory configuration or invalid kernel image: …")
	if st := tv.v.state(); st != "Not started" {
		t.Errorf("state after a refused start: %s", st)
	}
	expect(t, "bad action", tv.do(t, "PUT", "/actions", `{"action_type":"Reboot"}`), 400, "An error occurred when deserializing the json body of a request: …")
}

func TestAPIBootPhases(t *testing.T) {
	tv := newTestVMM(t)
	pre := "The requested operation is not supported before starting the microVM."
	post := "The requested operation is not supported after starting the microVM."
	expect(t, "PATCH /vm pre-boot", tv.do(t, "PATCH", "/vm", `{"state":"Paused"}`), 400, pre)
	expect(t, "SendCtrlAltDel pre-boot", tv.do(t, "PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`), 400, pre)
	expect(t, "FlushMetrics pre-boot", tv.do(t, "PUT", "/actions", `{"action_type":"FlushMetrics"}`), 400, pre)
	expect(t, "snapshot create pre-boot", tv.do(t, "PUT", "/snapshot/create", `{"snapshot_path":"s","mem_file_path":"m"}`), 400, pre)
	expect(t, "PATCH net pre-boot", tv.do(t, "PATCH", "/network-interfaces/eth0", `{"iface_id":"eth0"}`), 400, pre)
	expect(t, "vsock", tv.do(t, "PUT", "/vsock", `{"guest_cid":3,"uds_path":"`+filepath.Join(tv.dir, "v.sock")+`"}`), 204, "")

	metricsPath := filepath.Join(tv.dir, "metrics.json")
	expect(t, "metrics", tv.do(t, "PUT", "/metrics", `{"metrics_path":"`+metricsPath+`"}`), 204, "")
	expect(t, "metrics again", tv.do(t, "PUT", "/metrics", `{"metrics_path":"`+metricsPath+`"}`), 400, "Metrics error: Reinitialization of metrics not allowed.")
	logPath := filepath.Join(tv.dir, "fc.log")
	expect(t, "logger", tv.do(t, "PUT", "/logger", `{"log_path":"`+logPath+`","level":"info","show_level":true,"show_log_origin":false}`), 204, "")
	expect(t, "logger bad level", tv.do(t, "PUT", "/logger", `{"log_path":"`+logPath+`","level":"Loud"}`), 400, "An error occurred when deserializing the json body of a request: unknown variant…")
	expect(t, "GET / after logger", tv.do(t, "GET", "/", ""), 200, "")
	if b, _ := os.ReadFile(logPath); !strings.Contains(string(b), "[test-vm:fc_api:INFO] The API server received a Get request on \"/\".") {
		t.Errorf("log file lacks Firecracker-style lines:\n%s", b)
	}

	// Pretend InstanceStart succeeded: the post-boot rules do not depend on
	// QEMU (the boot tests cover a real one).
	tv.v.mu.Lock()
	tv.v.started = true
	tv.v.mu.Unlock()
	img := writeFile(t, filepath.Join(tv.dir, "d.img"), make([]byte, 4096))
	for _, c := range []struct{ method, path, body string }{
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":64}`},
		{"PATCH", "/machine-config", `{"mem_size_mib":64}`},
		{"PUT", "/boot-source", `{"kernel_image_path":"` + img + `"}`},
		{"PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"` + img + `","is_root_device":true,"is_read_only":false}`},
		{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`},
		{"PUT", "/logger", `{"log_path":"` + logPath + `"}`},
		{"PUT", "/metrics", `{"metrics_path":"` + metricsPath + `"}`},
		{"PUT", "/vsock", `{"guest_cid":3,"uds_path":"/tmp/v.sock"}`},
		{"PUT", "/entropy", `{}`},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`},
	} {
		expect(t, c.method+" "+c.path+" post-boot", tv.do(t, c.method, c.path, c.body), 400, post)
	}
	expect(t, "FlushMetrics", tv.do(t, "PUT", "/actions", `{"action_type":"FlushMetrics"}`), 204, "")
	if b, _ := os.ReadFile(metricsPath); !strings.Contains(string(b), `"utc_timestamp_ms"`) {
		t.Errorf("metrics file: %q", b)
	}
	expect(t, "PATCH /vm unchanged", tv.do(t, "PATCH", "/vm", `{"state":"Resumed"}`), 204, "")
	expect(t, "PATCH /vm bad state", tv.do(t, "PATCH", "/vm", `{"state":"Stopped"}`), 400, "An error occurred when deserializing the json body of a request: …")
	r := tv.do(t, "GET", "/", "")
	if !strings.Contains(r.body, `"state":"Running"`) {
		t.Errorf("GET / post-boot: %s", r.body)
	}
}

func TestAPISocketNotUnlinked(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	l, err := listenAPI(sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := listenAPI(sock); err == nil {
		t.Error("a second bind on an existing path succeeded")
	}
	l.Close()
	if _, err := os.Lstat(sock); err != nil {
		t.Errorf("the socket file is gone after Close: %v", err)
	}
}

func TestLoggerLineFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	lg := newLogger("vm1")
	lv := levelWarn
	f := false
	if err := lg.configure(&path, &lv, nil, &f); err != nil {
		t.Fatal(err)
	}
	lg.info("fc_api", "hidden")
	lg.warn("fc_vmm", "shown %d", 1)
	b, _ := os.ReadFile(path)
	line := strings.TrimSpace(string(b))
	if strings.Contains(line, "hidden") || !strings.HasSuffix(line, " [vm1:fc_vmm:WARN] shown 1") {
		t.Errorf("log: %q", b)
	}
	if len(line) < 29 || line[10] != 'T' || line[19] != '.' {
		t.Errorf("timestamp format: %q", line)
	}
}

// TestAPIDevicesNeverPresent: banger-vmm has no balloon, MMDS, memory
// hotplug, pmem or custom CPU template. What would configure one is refused
// as not supported (after the phase rule); what acts on one gets Firecracker
// v1.14.1's answer for a VMM where it was never configured.
func TestAPIDevicesNeverPresent(t *testing.T) {
	tv := newTestVMM(t)
	pre := "The requested operation is not supported before starting the microVM."
	post := "The requested operation is not supported after starting the microVM."
	notFound := ": Failed perform action on device: Device not found"
	type req struct{ method, path, body string }
	cases := []struct {
		req
		preStatus int
		preWant   string
		postWant  string
	}{
		{req{"GET", "/balloon", ""}, 400, "Balloon config error: No balloon device found.", "Internal VMM error" + notFound},
		{req{"GET", "/balloon/statistics", ""}, 400, pre, "Internal VMM error" + notFound},
		{req{"GET", "/balloon/hinting/status", ""}, 400, pre, "Balloon update error" + notFound},
		{req{"GET", "/balloon/hinting", ""}, 400, "Unrecognized GET request path `/hinting/`.", "Unrecognized GET request path `/hinting/`."},
		{req{"GET", "/balloon/x", ""}, 400, "Unrecognized GET request path `x`.", "Unrecognized GET request path `x`."},
		{req{"PUT", "/balloon", `{"amount_mib":1,"deflate_on_oom":true}`}, 400, "The requested operation is not supported: the balloon device is not supported by banger-vmm", post},
		{req{"PATCH", "/balloon", `{"amount_mib":1}`}, 400, pre, "Balloon update error" + notFound},
		{req{"PATCH", "/balloon", `{"amount_mib":-1}`}, 400, "An error occurred when deserializing the json body of a request: invalid value: integer `-1`, expected u32.", "An error occurred when deserializing the json body of a request: invalid value: integer `-1`, expected u32."},
		{req{"PATCH", "/balloon", ""}, 400, "Empty PATCH request.", "Empty PATCH request."},
		{req{"PATCH", "/balloon/statistics", `{"stats_polling_interval_s":1}`}, 400, pre, "Balloon update error" + notFound},
		{req{"PATCH", "/balloon/statistics", `{"amount_mib":1}`}, 400, "An error occurred when deserializing the json body of a request: unknown field `amount_mib`, expected `stats_polling_interval_s`.", "An error occurred when deserializing the json body of a request: unknown field `amount_mib`, expected `stats_polling_interval_s`."},
		{req{"PATCH", "/balloon/hinting/start", ""}, 400, pre, "Balloon update error" + notFound},
		{req{"PATCH", "/balloon/hinting/stop", ""}, 400, pre, "Balloon update error" + notFound},
		{req{"PATCH", "/balloon/hinting/go", ""}, 400, "Unrecognized PATCH request path `/hinting/go`.", "Unrecognized PATCH request path `/hinting/go`."},
		{req{"GET", "/mmds", ""}, 200, "", ""},
		{req{"PUT", "/mmds", `{"latest":{}}`}, 400, "The requested operation is not supported: MMDS is not supported by banger-vmm", "The requested operation is not supported: MMDS is not supported by banger-vmm"},
		{req{"PUT", "/mmds/config", `{"network_interfaces":["eth0"]}`}, 400, "The requested operation is not supported: MMDS is not supported by banger-vmm", post},
		{req{"PUT", "/mmds/other", `{}`}, 400, "Unrecognized PUT request path `other`.", "Unrecognized PUT request path `other`."},
		{req{"PATCH", "/mmds", `{"latest":{}}`}, 400, "MMDS error: The MMDS data store is not initialized.", "MMDS error: The MMDS data store is not initialized."},
		{req{"PUT", "/cpu-config", `{}`}, 400, "The requested operation is not supported: a custom CPU template is not supported by banger-vmm", post},
		{req{"PUT", "/pmem/p0", `{"id":"p0","path_on_host":"x"}`}, 400, "The requested operation is not supported: virtio-pmem is not supported by banger-vmm", post},
		{req{"PUT", "/pmem/bad-id", `{}`}, 400, "API Resource IDs can only contain alphanumeric characters and underscores.", "API Resource IDs can only contain alphanumeric characters and underscores."},
		{req{"PUT", "/hotplug/memory", `{"total_size_mib":1024}`}, 400, "The requested operation is not supported: memory hotplug is not supported by banger-vmm", post},
		{req{"GET", "/hotplug/memory", ""}, 400, pre, "Internal VMM error" + notFound},
		{req{"PATCH", "/hotplug/memory", `{"requested_size_mib":1024}`}, 400, pre, "Memory hotplug update error" + notFound},
		{req{"PATCH", "/hotplug/memory", `{}`}, 400, "An error occurred when deserializing the json body of a request: missing field `requested_size_mib`.", "An error occurred when deserializing the json body of a request: missing field `requested_size_mib`."},
	}
	for _, c := range cases {
		r := tv.do(t, c.method, c.path, c.body)
		expect(t, "pre-boot "+c.method+" "+c.path+" "+c.body, r, c.preStatus, c.preWant)
		if c.preStatus == 200 && r.body != "{}" {
			t.Errorf("GET /mmds: %s, want {} (Firecracker's empty data store)", r.body)
		}
	}
	tv.v.mu.Lock()
	tv.v.started = true // the post-boot rules do not depend on QEMU
	tv.v.mu.Unlock()
	for _, c := range cases {
		status := 400
		if c.postWant == "" {
			status = 200
		}
		expect(t, "post-boot "+c.method+" "+c.path+" "+c.body, tv.do(t, c.method, c.path, c.body), status, c.postWant)
	}
}
