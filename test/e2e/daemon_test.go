package e2e

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

func TestVersionLines(t *testing.T) {
	e := newEnv(t)
	want := "banger v0.0.0-e2e (commit e2e0000, built 2026-11-25T20:00:00Z)\n"
	if r := e.banger("--version"); r.stdout != want || r.code != 0 {
		t.Fatalf("banger --version = %q (%d)", r.stdout, r.code)
	}
	if r := e.bangerd("--version"); r.stdout != strings.Replace(want, "banger ", "bangerd ", 1) {
		t.Fatalf("bangerd --version = %q", r.stdout)
	}
	r := e.banger("version", "--json")
	var v map[string]string
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || v["version"] != testVersion || v["built_at"] != "2026-11-25T20:00:00Z" {
		t.Fatalf("version --json = %s (%v)", r.stdout, err)
	}
}

func TestDaemonAutoStartsWithMatchingVersion(t *testing.T) {
	e := newEnv(t)
	if _, err := os.Stat(e.socket()); err == nil {
		t.Fatal("socket exists before the first call")
	}
	r := e.banger("daemon", "status", "--json")
	if r.code != 0 {
		t.Fatalf("daemon status: %d %s", r.code, r.stderr)
	}
	var st api.DaemonStatus
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatal(err)
	}
	cli := e.banger("--version").stdout
	if !st.Running || !strings.Contains(cli, " "+st.Version+" ") || st.Version != testVersion {
		t.Fatalf("daemon version %q vs CLI %q", st.Version, cli)
	}
	if st.Socket != e.socket() || st.PID <= 0 {
		t.Fatalf("status %+v", st)
	}
	fi, err := os.Stat(e.socket())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v %v", fi.Mode(), err)
	}
	di, _ := os.Stat(filepath.Dir(e.socket()))
	if di.Mode().Perm() != 0o700 {
		t.Fatalf("runtime dir mode %v", di.Mode())
	}
	// A second call reuses the same daemon.
	var st2 api.DaemonStatus
	json.Unmarshal([]byte(e.banger("daemon", "status", "--json").stdout), &st2)
	if st2.PID != st.PID {
		t.Fatalf("daemon restarted without reason: %d → %d", st.PID, st2.PID)
	}
	if r := e.banger("daemon", "stop"); r.code != 0 || !strings.Contains(r.stdout, "daemon stopped") {
		t.Fatalf("stop: %+v", r)
	}
	if syscall.Kill(st.PID, 0) == nil {
		t.Fatal("daemon still alive after stop")
	}
}

func TestDaemonOfAnotherVersionIsReplaced(t *testing.T) {
	e := newEnv(t)
	old := t.TempDir()
	if err := buildBinaries(old, "v0.0.0-old", "0ld0000000000000"); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(old, "bangerd"))
	cmd.Env = e.environ()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go cmd.Wait()
	waitFor(t, func() bool { _, err := os.Stat(e.socket()); return err == nil })
	r := e.banger("daemon", "status", "--json")
	var st api.DaemonStatus
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("%v: %+v", err, r)
	}
	if st.Version != testVersion || st.PID == cmd.Process.Pid {
		t.Fatalf("old daemon kept: %+v", st)
	}
	if !strings.Contains(r.stderr, "restarting daemon v0.0.0-old") {
		t.Fatalf("no notice of the restart: %q", r.stderr)
	}
}

func TestCheckMigrations(t *testing.T) {
	e := newEnv(t)
	// No database: all pending, exit 1.
	r := e.bangerd("--check-migrations")
	if r.code != 1 || !strings.HasPrefix(r.stdout, "migrations needed: no database at "+e.dbPath()) || strings.Count(r.stdout, "\n") != 1 {
		t.Fatalf("no db: %d %q %q", r.code, r.stdout, r.stderr)
	}
	if _, err := os.Stat(e.dbPath()); err == nil {
		t.Fatal("--check-migrations created the database")
	}
	// Only the first migration applied: exit 1, names what is pending.
	makeDB(t, e.dbPath(), 1)
	r = e.bangerd("--check-migrations")
	if r.code != 1 || !strings.Contains(r.stdout, "has 1 of 2 pending (2 unique_guest_ip); safe to swap in") {
		t.Fatalf("first only: %d %q", r.code, r.stdout)
	}
	// Fully migrated (by the real daemon): exit 0.
	os.Remove(e.dbPath())
	if r := e.banger("daemon", "status"); r.code != 0 {
		t.Fatalf("status: %+v", r)
	}
	r = e.bangerd("--check-migrations")
	if r.code != 0 || r.stdout != "compatible: "+e.dbPath()+" has all 2 migrations applied\n" {
		t.Fatalf("full: %d %q", r.code, r.stdout)
	}
	// A migration id from the future: exit 2.
	e.banger("daemon", "stop")
	addUnknownMigration(t, e.dbPath(), 9)
	r = e.bangerd("--check-migrations")
	if r.code != 2 || !strings.HasPrefix(r.stdout, "incompatible: ") || !strings.Contains(r.stdout, "migration(s) 9 unknown") {
		t.Fatalf("unknown: %d %q", r.code, r.stdout)
	}
	// And the daemon itself refuses to open it.
	r = e.banger("daemon", "status")
	if r.code == 0 || !strings.Contains(r.stderr, "unknown to this binary") {
		t.Fatalf("daemon opened a newer database: %+v", r)
	}
}

func TestUnknownMethodAndMalformedRequest(t *testing.T) {
	e := newEnv(t)
	if r := e.banger("daemon", "status"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	r := e.banger("internal", "rpc", "vm.frobnicate")
	if r.code != 1 || !regexp.MustCompile(`^banger: unknown method "vm.frobnicate" \(op-[0-9a-f]{6}\)\n$`).MatchString(r.stderr) {
		t.Fatalf("unknown method: %d %q", r.code, r.stderr)
	}
	c, err := net.Dial("unix", e.socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rd := bufio.NewReader(c)
	send := func(line string) api.Response {
		t.Helper()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte(line + "\n")); err != nil {
			t.Fatal(err)
		}
		l, err := rd.ReadBytes('\n')
		if err != nil {
			t.Fatal(err)
		}
		var resp api.Response
		if err := json.Unmarshal(l, &resp); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		return resp
	}
	resp := send(`{"v":1,"id":1,"method":`)
	if resp.Error == nil || resp.Error.Code != "bad_request" || !strings.HasPrefix(resp.Error.OpID, "op-") {
		t.Fatalf("malformed: %+v", resp.Error)
	}
	resp = send(`{"v":1,"id":2,"method":"nope"}`)
	if resp.Error == nil || resp.Error.Code != "unknown_method" {
		t.Fatalf("unknown: %+v", resp.Error)
	}
	resp = send(`{"v":99,"id":3,"method":"ping"}`)
	if resp.Error == nil || resp.Error.Code != "bad_version" {
		t.Fatalf("bad version: %+v", resp.Error)
	}
	resp = send(`{"v":1,"id":4,"method":"ping"}`)
	if resp.Error != nil || resp.ID != 4 || !strings.Contains(string(resp.Result), testVersion) {
		t.Fatalf("ping after bad requests: %+v", resp)
	}
	// A fresh connection works too.
	if r := e.banger("internal", "rpc", "ping"); r.code != 0 {
		t.Fatalf("ping: %+v", r)
	}
}

func TestRuntimeDirRefusals(t *testing.T) {
	cases := map[string]func(t *testing.T, dir string){
		"world-writable": func(t *testing.T, dir string) {
			os.Mkdir(dir, 0o700)
			os.Chmod(dir, 0o777)
		},
		"symlink": func(t *testing.T, dir string) {
			target := t.TempDir()
			os.Chmod(target, 0o700)
			if err := os.Symlink(target, dir); err != nil {
				t.Fatal(err)
			}
		},
		"someone else's": func(t *testing.T, dir string) {
			if os.Geteuid() != 0 {
				t.Skip("needs root to chown")
			}
			os.Mkdir(dir, 0o700)
			if err := os.Chown(dir, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, setup := range cases {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			dir := filepath.Join(e.run, "banger")
			setup(t, dir)
			r := e.bangerd()
			if r.code != 1 || !strings.HasPrefix(r.stderr, "bangerd: refusing to start: unsafe directory: "+dir) || strings.Count(r.stderr, "\n") != 1 {
				t.Fatalf("bangerd: %d %q", r.code, r.stderr)
			}
			// Through the CLI's auto-start the reason reaches the user too.
			r = e.banger("daemon", "status")
			if r.code == 0 || !strings.Contains(r.stderr, dir) || strings.Count(r.stderr, "\n") != 1 {
				t.Fatalf("cli: %d %q", r.code, r.stderr)
			}
			if _, err := os.Stat(filepath.Join(dir, "bangerd.sock")); err == nil {
				t.Fatal("socket created in an unsafe dir")
			}
		})
	}
}

func TestBadConfigStartsNothing(t *testing.T) {
	for name, body := range map[string]string{
		"unknown key": "log_level = \"info\"\n\n[vm_defaults]\nvcpus = 2\n",
		"bad value":   "cidr = \"172.30.0.0/24\"\nlog_level = \"chatty\"\n",
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			os.MkdirAll(filepath.Dir(e.configFile()), 0o700)
			os.WriteFile(e.configFile(), []byte(body), 0o600)
			r := e.banger("daemon", "status")
			wantKey := map[string]string{"unknown key": `:4: key "vm_defaults.vcpus"`, "bad value": `:2: key "log_level"`}[name]
			if r.code != 2 || !strings.HasPrefix(r.stderr, "banger: config "+e.configFile()+wantKey) || strings.Count(r.stderr, "\n") != 1 {
				t.Fatalf("%d %q", r.code, r.stderr)
			}
			if _, err := os.Stat(e.socket()); err == nil {
				t.Fatal("a daemon was started despite the bad config")
			}
			if _, err := os.Stat(e.dbPath()); err == nil {
				t.Fatal("state was created despite the bad config")
			}
			r = e.bangerd()
			if r.code != 1 || !strings.Contains(r.stderr, wantKey) {
				t.Fatalf("bangerd accepted a bad config: %+v", r)
			}
		})
	}
}

func TestSIGTERMExitsCleanly(t *testing.T) {
	e := newEnv(t)
	cmd := exec.Command(filepath.Join(e.bin, "bangerd"))
	cmd.Env = e.environ()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		c, err := net.Dial("unix", e.socket())
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("daemon did not exit after SIGTERM")
	}
	if _, err := os.Stat(e.socket()); err == nil {
		t.Fatal("socket left behind")
	}
}

func TestConfigShowNamesSources(t *testing.T) {
	e := newEnv(t)
	os.MkdirAll(filepath.Dir(e.configFile()), 0o700)
	os.WriteFile(e.configFile(), []byte("[vm_defaults]\nmemory_mib = 1024\n"), 0o600)
	r := e.banger("config", "show", "--json")
	var out struct {
		Entries []struct {
			Key    string
			Value  any
			Source string
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("%v %q", err, r.stdout)
	}
	found := false
	for _, en := range out.Entries {
		if en.Key == "vm_defaults.memory_mib" {
			found = en.Source == e.configFile()+":2" && en.Value == float64(1024)
		}
		if en.Key == "cidr" && en.Source != "default" {
			t.Fatalf("cidr source %q", en.Source)
		}
	}
	if !found {
		t.Fatalf("memory_mib not attributed to the file: %s", r.stdout)
	}
}

func waitFor(t testing.TB, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if ok() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("timed out waiting")
}
