package roothelper

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/privops"
)

// When BANGER_TEST_DIAL is set, the test binary acts as a client: it sends
// one request line and prints the response line.
func TestMain(m *testing.M) {
	if sock := os.Getenv("BANGER_TEST_DIAL"); sock != "" {
		c, err := net.Dial("unix", sock)
		if err != nil {
			fmt.Println("dial:", err)
			os.Exit(0)
		}
		fmt.Fprintln(c, os.Getenv("BANGER_TEST_REQ"))
		line, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Print(line)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func startHelper(t *testing.T, ownerUID int) (string, *Helper) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir, err := os.MkdirTemp("", "bh")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "h.sock")
	h, err := New(Options{
		Socket: sock, LockFile: filepath.Join(dir, "h.lock"), OwnerUID: ownerUID, OwnerGID: ownerUID,
		Policy: privops.Policy{Roots: []string{dir}, VMsDir: filepath.Join(dir, "vms")},
		Log:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		// World-connectable so the peer-credential check itself is what refuses.
		SocketMode: 0o666,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return sock, h
}

// selfCopy is the test binary, copied where any user may run it.
func selfCopy(t *testing.T, dir string) string {
	t.Helper()
	dst := filepath.Join(dir, "client.test")
	if _, err := os.Stat(dst); err == nil {
		return dst
	}
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

func callAs(t *testing.T, uid int, sock, req string) api.Response {
	t.Helper()
	cmd := exec.Command(selfCopy(t, filepath.Dir(sock)), "-test.run=^$")
	cmd.Env = append(os.Environ(), "BANGER_TEST_DIAL="+sock, "BANGER_TEST_REQ="+req)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("client as uid %d: %v", uid, err)
	}
	var resp api.Response
	if err := json.Unmarshal(out, &resp); err != nil {
		t.Fatalf("response %q: %v", out, err)
	}
	return resp
}

func TestHelperRefusesOtherUID(t *testing.T) {
	sock, _ := startHelper(t, 4242)
	// The owner is served...
	resp := callAs(t, 4242, sock, `{"v":1,"id":1,"method":"ping"}`)
	if resp.Error != nil {
		t.Fatalf("owner refused: %+v", resp.Error)
	}
	// ...root too...
	resp = callAs(t, 0, sock, `{"v":1,"id":1,"method":"ping"}`)
	if resp.Error != nil {
		t.Fatalf("root refused: %+v", resp.Error)
	}
	// ...another user is not, whatever it asks.
	resp = callAs(t, 65534, sock, `{"v":1,"id":1,"method":"priv.delete_tap","params":{"name":"bgtapx"}}`)
	if resp.Error == nil || resp.Error.Code != "unauthorized" || !strings.Contains(resp.Error.Message, "uid 65534") {
		t.Fatalf("uid 65534 not refused: %+v", resp)
	}
}

func TestHelperValidatesOverTheSocket(t *testing.T) {
	sock, _ := startHelper(t, 0)
	for req, want := range map[string]string{
		`{"v":1,"id":1,"method":"priv.delete_tap","params":{"name":"eth0"}}`:                  "eth0",
		`{"v":1,"id":2,"method":"priv.remove_vm_dir","params":{"id":"../../etc"}}`:            "vm id",
		`{"v":1,"id":3,"method":"priv.launch_vmm","params":{"id":"x","binary":"/bin/sh -c"}}`: "unknown field",
		`{"v":1,"id":4,"method":"priv.exec","params":{"argv":["rm","-rf","/"]}}`:              "unknown method",
		`{"v":1,"id":5,"method":"priv.create_tap","params":{"name":"bgtap1","evil":true}}`:    "unknown field",
	} {
		resp := callAs(t, 0, sock, req)
		if resp.Error == nil || !strings.Contains(resp.Error.Message, want) {
			t.Errorf("%s: %+v", req, resp.Error)
		}
	}
}

func TestSecondHelperRefused(t *testing.T) {
	sock, _ := startHelper(t, 0)
	dir := filepath.Dir(sock)
	_, err := New(Options{Socket: filepath.Join(dir, "other.sock"), LockFile: filepath.Join(dir, "h.lock"), Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), "another root helper") || !strings.Contains(err.Error(), fmt.Sprint(os.Getpid())) {
		t.Fatalf("second helper: %v", err)
	}
}

// TestOwnerCannotChooseTheVMMBinary is [P7] item 1: the owner asks the
// helper to launch its own script as the VMM. The helper runs only the VMM
// it chose itself, so the script never runs (it would run as root).
func TestOwnerCannotChooseTheVMMBinary(t *testing.T) {
	const owner = 4243
	sock, h := startHelper(t, owner)
	dir := filepath.Dir(sock)
	vms := h.opts.Policy.VMsDir
	os.MkdirAll(filepath.Join(vms, "abc"), 0o711)
	os.WriteFile(filepath.Join(dir, "vmlinux"), []byte("x"), 0o644)
	os.Chown(filepath.Join(dir, "vmlinux"), owner, owner)
	evil := filepath.Join(dir, "owner")
	os.MkdirAll(evil, 0o755)
	os.Chown(evil, owner, owner)
	marker := filepath.Join(dir, "pwned")
	script := filepath.Join(evil, "evil.sh")
	os.WriteFile(script, []byte("#!/bin/sh\nid -u > "+marker+"\n"), 0o755)
	os.Chown(script, owner, owner)
	d := filepath.Join(vms, "abc")
	os.WriteFile(filepath.Join(d, "rootfs.ext4"), []byte("x"), 0o600)
	req := fmt.Sprintf(`{"v":1,"id":1,"method":"priv.launch_vmm","params":{"id":"abc","binary":%q,"api_sock":%q,"pid_file":%q,"serial_log":%q,"kernel":%q,"boot_args":"console=ttyS0","rootfs":%q,"tap":"bgtapabc","mac":"02:fc:ac:1e:00:02","vcpu":1,"mem_mib":256}}`,
		script, filepath.Join(d, "api.sock"), filepath.Join(d, "vmm.pid"), filepath.Join(d, "serial.log"), filepath.Join(dir, "vmlinux"), filepath.Join(d, "rootfs.ext4"))
	resp := callAs(t, owner, sock, req)
	time.Sleep(200 * time.Millisecond)
	if b, err := os.ReadFile(marker); err == nil {
		t.Fatalf("the owner's script ran as uid %s through priv.launch_vmm", strings.TrimSpace(string(b)))
	}
	if resp.Error == nil {
		t.Fatalf("launch with an owner-chosen binary accepted: %+v", resp)
	}
}
