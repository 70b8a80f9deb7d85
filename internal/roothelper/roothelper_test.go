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
		`{"v":1,"id":2,"method":"priv.remove_vm_dir","params":{"vm_dir":"/etc"}}`:             "vm dir",
		`{"v":1,"id":3,"method":"priv.launch_vmm","params":{"id":"x","binary":"/bin/sh -c"}}`: "vmm binary",
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
