package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

func run(args ...string) (string, string, int) {
	var out, errb bytes.Buffer
	code := Main(args, strings.NewReader(""), &out, &errb)
	return out.String(), errb.String(), code
}

func TestUpdateHiddenFlagsAbsentFromHelp(t *testing.T) {
	out, _, code := run("update", "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, hidden := range []string{"--manifest-url", "--pubkey-file"} {
		if strings.Contains(out, hidden) {
			t.Errorf("%s shown in update --help", hidden)
		}
	}
	for _, shown := range []string{"--check", "--to", "--dry-run", "--force", "Example"} {
		if !strings.Contains(out, shown) {
			t.Errorf("%s missing from update --help", shown)
		}
	}
}

func TestEveryCommandHasHelpWithExamples(t *testing.T) {
	root := (&app{}).rootCmd()
	for _, c := range root.Commands() {
		if c.Hidden || c.Name() == "completion" || c.Name() == "help" {
			continue
		}
		for _, sub := range append(c.Commands(), c) {
			if sub.Hidden || !sub.Runnable() {
				continue
			}
			if sub.Short == "" {
				t.Errorf("%s has no short help", sub.CommandPath())
			}
			if sub.Example == "" {
				t.Errorf("%s has no example", sub.CommandPath())
			}
		}
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	_, errOut, code := run("vm", "create", "--vcpu", "lots")
	if code != ExitUsage || !strings.HasPrefix(errOut, "banger: ") || strings.Count(errOut, "\n") != 1 {
		t.Fatalf("bad flag: exit %d %q", code, errOut)
	}
	_, errOut, code = run("vm", "exec", "onlyname")
	if code != ExitUsage || !strings.Contains(errOut, "usage: banger vm exec [-d] NAME -- CMD") {
		t.Fatalf("exec without command: exit %d %q", code, errOut)
	}
	_, errOut, code = run("vm", "run", "-d", "--rm")
	if code != ExitUsage || !strings.Contains(errOut, "-d cannot be combined") {
		t.Fatalf("run -d --rm: exit %d %q", code, errOut)
	}
}

// TestUnknownSubcommand: in every command group an unknown subcommand is a
// usage error (exit 2) naming the valid commands and suggesting the nearest;
// a group called bare prints its help and exits 0.
func TestUnknownSubcommand(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"vm", "frobnicate"}, []string{`banger: unknown command "frobnicate" for "banger vm"; valid commands: cp, create, delete, exec, fork,`, "(see 'banger vm --help')"}},
		{[]string{"vm", "frok"}, []string{`(did you mean fork?)`}},
		{[]string{"frobnicate"}, []string{`unknown command "frobnicate" for "banger"; valid commands: `, "vm"}},
		{[]string{"image", "cache", "prnue"}, []string{`unknown command "prnue" for "banger image cache" (did you mean prune?)`}},
		{[]string{"daemon", "stat"}, []string{`(did you mean status or stop?)`}},
	} {
		out, stderr, code := run(tc.args...)
		if code != ExitUsage || out != "" || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q: want exit 2 and one line", tc.args, code, out, stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("%v: stderr %q lacks %q", tc.args, stderr, w)
			}
		}
	}
	out, _, code := run("vm")
	if code != 0 || !strings.Contains(out, "Available Commands:") {
		t.Errorf("banger vm: exit %d, %q", code, out)
	}
}

// TestVMCpArgs: which side is the VM's, and the usage errors (exit 2,
// before any daemon is asked).
func TestVMCpArgs(t *testing.T) {
	for _, tc := range []struct {
		arg, vm, path string
		guest         bool
	}{
		{"dev:/root/x", "dev", "/root/x", true},
		{"dev:", "dev", ".", true},
		{"dev:rel/p", "dev", "rel/p", true},
		{"./a:b", "", "", false},
		{"/abs:x", "", "", false},
		{"plain", "", "", false},
		{"dir/a:b", "", "", false},
		{":x", "", "", false},
	} {
		vm, path, guest := guestPath(tc.arg)
		if vm != tc.vm || path != tc.path || guest != tc.guest {
			t.Errorf("%q: %q %q %v", tc.arg, vm, path, guest)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "cp", "a:/x", "b:/y"}, "banger: vm cp copies between the host and a VM: only one of SRC and DST may be NAME:PATH\n"},
		{[]string{"vm", "cp", "./x", "./y"}, "banger: vm cp needs a VM side: write it NAME:PATH (e.g. dev:/root/file)\n"},
		{[]string{"vm", "cp", "./x"}, "banger: vm cp needs SRC and DST (got 1 arguments)\n"},
		{[]string{"vm", "cp", "--max-size", "lots", "./x", "dev:"}, "banger: --max-size \"lots\": want a size like 64G or 512M\n"},
	} {
		_, stderr, code := run(tc.args...)
		if code != ExitUsage || stderr != tc.want {
			t.Errorf("%v: exit %d, %q; want 2, %q", tc.args, code, stderr, tc.want)
		}
	}
	_, stderr, code := run("vm", "cp", "./no-such-file", "dev:/root/")
	if code != ExitFailure || stderr != "banger: vm cp: lstat ./no-such-file: no such file or directory\n" {
		t.Errorf("missing source: exit %d, %q", code, stderr)
	}
}

// TestVMExecJobArgs: the background-job flags' usage errors exit 2 before
// any daemon is asked.
func TestVMExecJobArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "exec", "--list"}, "banger: usage: banger vm exec --list NAME\n"},
		{[]string{"vm", "exec", "--list", "-d", "dev"}, "banger: vm exec: --list goes alone: banger vm exec --list NAME\n"},
		{[]string{"vm", "exec", "--kill", "dev"}, "banger: usage: banger vm exec --kill NAME ID [--signal SIG]\n"},
		{[]string{"vm", "exec", "--kill", "dev", "abc", "--signal", "BOGUS"}, "banger: --signal: \"BOGUS\" is not a signal (TERM, KILL, INT, HUP, QUIT, USR1, USR2, STOP, CONT or a number)\n"},
		{[]string{"vm", "exec", "--signal", "INT", "dev", "--", "true"}, "banger: vm exec: --signal goes with --kill\n"},
		{[]string{"vm", "exec", "-d", "dev"}, "banger: usage: banger vm exec [-d] NAME -- CMD [ARG...]\n"},
		{[]string{"vm", "exec", "--json", "dev", "--", "true"}, "banger: vm exec: --json goes with --list\n"},
		{[]string{"vm", "logs", "dev", "-f"}, "banger: vm logs: -f follows a background job: give --exec ID\n"},
	} {
		_, stderr, code := run(tc.args...)
		if code != ExitUsage || stderr != tc.want {
			t.Errorf("%v: exit %d %q, want 2 %q", tc.args, code, stderr, tc.want)
		}
	}
}

// TestLabelFlag: --label wants KEY=VALUE; vm set also takes KEY- to remove.
func TestLabelFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "create", "--label", "novalue"}, `banger: invalid argument "novalue" for "--label" flag: "novalue": want KEY=VALUE (see 'banger vm create --help')` + "\n"},
		{[]string{"vm", "set", "dev", "--label", "x"}, `banger: invalid argument "x" for "--label" flag: "x": want KEY=VALUE (or KEY- to remove a label) (see 'banger vm set --help')` + "\n"},
	} {
		_, stderr, code := run(tc.args...)
		if code != ExitUsage || stderr != tc.want {
			t.Errorf("%v: exit %d %q, want 2 %q", tc.args, code, stderr, tc.want)
		}
	}
	l := labelsValue{removable: true}
	for _, s := range []string{"a=1", "b=", "c-", "d=x=y"} {
		if err := l.Set(s); err != nil {
			t.Fatal(err)
		}
	}
	if labelString(l.set) != "a=1,b=,d=x=y" || len(l.remove) != 1 || l.remove[0] != "c" {
		t.Errorf("set %v remove %v", l.set, l.remove)
	}
}

// TestMCPTools: the MCP server builds (every tool's schema is valid) and
// lists its tools, each with a description and an input schema; a call
// with an invalid argument is a tool error, not a protocol error (no
// daemon is reached).
func TestMCPTools(t *testing.T) {
	ctx := context.Background()
	st, ct := mcp.NewInMemoryTransports()
	if _, err := (&app{}).mcpServer().Connect(ctx, st, nil); err != nil {
		t.Fatal(err)
	}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "t", Version: "1"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	res, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tl := range res.Tools {
		names = append(names, tl.Name)
		if tl.Description == "" || tl.InputSchema == nil {
			t.Errorf("%s: no description or schema", tl.Name)
		}
	}
	if got := strings.Join(names, ","); got != "cp,create,delete,exec,fork,list,park,ports,resume,run" {
		t.Errorf("tools %s", got)
	}
	for _, args := range []map[string]any{{"command": "not a list"}, {"command": []string{}}, {"command": []string{"true"}, "timeout_seconds": 99999}} {
		r, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "run", Arguments: args})
		if err != nil || !r.IsError {
			t.Errorf("run %v: protocol error %v, tool error %v", args, err, r != nil && r.IsError)
		}
	}
}

// TestSSHConfigInstallUninstall: --install puts one fenced Include at the
// top of ~/.ssh/config (twice: still one), writes banger's ssh_config, and
// --uninstall leaves the rest of ~/.ssh/config byte for byte; a missing
// ~/.ssh/config is created 0600 and an empty one left after uninstall.
func TestSSHConfigInstallUninstall(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, ".config"))
	t.Setenv("XDG_STATE_HOME", filepath.Join(home, ".local", "state"))
	t.Setenv("XDG_RUNTIME_DIR", filepath.Join(home, "run"))
	cfg := filepath.Join(home, ".ssh", "config")
	os.MkdirAll(filepath.Dir(cfg), 0o700)
	orig := "Host github.com\n    User git\n\n# a comment without a newline at the end"
	os.WriteFile(cfg, []byte(orig), 0o640)
	for i := 0; i < 2; i++ {
		if out, stderr, code := run("ssh-config", "--install"); code != 0 || !strings.HasPrefix(out, "installed: ") {
			t.Fatalf("install %d: %d %q %q", i, code, out, stderr)
		}
	}
	b, _ := os.ReadFile(cfg)
	if strings.Count(string(b), sshBegin) != 1 || !strings.HasPrefix(string(b), sshBegin+"\nInclude "+filepath.Join(home, ".config", "banger", "ssh_config")+"\n"+sshEnd+"\n") || !strings.HasSuffix(string(b), orig) {
		t.Fatalf("after two installs:\n%s", b)
	}
	if fi, _ := os.Stat(cfg); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want the file's own 0640", fi.Mode().Perm())
	}
	inc, err := os.ReadFile(filepath.Join(home, ".config", "banger", "ssh_config"))
	if err != nil || !strings.Contains(string(inc), "Host *.vm\n") || !strings.Contains(string(inc), "internal ssh-proxy %h %p") ||
		!strings.Contains(string(inc), "internal known-hosts %H") || !strings.Contains(string(inc), "StrictHostKeyChecking yes") {
		t.Fatalf("ssh_config: %v\n%s", err, inc)
	}
	if out, _, code := run("ssh-config"); code != 0 || !strings.Contains(out, "(included from ") {
		t.Errorf("ssh-config: %d %q", code, out)
	}
	if _, _, code := run("ssh-config", "--uninstall"); code != 0 {
		t.Fatal("uninstall failed")
	}
	if b, _ := os.ReadFile(cfg); string(b) != orig {
		t.Errorf("after uninstall:\n%q\nwant\n%q", b, orig)
	}
	if _, err := os.Stat(filepath.Join(home, ".config", "banger", "ssh_config")); !os.IsNotExist(err) {
		t.Errorf("banger's ssh_config is still there: %v", err)
	}

	os.Remove(cfg)
	run("ssh-config", "--install")
	if fi, err := os.Stat(cfg); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("a new ~/.ssh/config: %v %v", fi, err)
	}
	run("ssh-config", "--uninstall")
	if b, _ := os.ReadFile(cfg); len(b) != 0 {
		t.Errorf("after install and uninstall of a new config: %q", b)
	}
	if _, stderr, code := run("ssh-config", "--install", "--uninstall"); code != ExitUsage || !strings.Contains(stderr, "go separately") {
		t.Errorf("both flags: %d %q", code, stderr)
	}
	for _, h := range []string{"dev.vm", "[dev.vm]:22", "DEV.VM"} {
		if n, err := vmOfHost(h); err != nil || n != "dev" {
			t.Errorf("vmOfHost(%q) = %q, %v", h, n, err)
		}
	}
	for _, h := range []string{"dev", "a.b.vm", ".vm", "../x.vm"} {
		if _, err := vmOfHost(h); err == nil {
			t.Errorf("vmOfHost(%q) accepted", h)
		}
	}
}

func TestContextRefusals(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, ".config"))
	t.Setenv("BANGER_INSTALL_META", filepath.Join(home, "none.toml"))
	os.MkdirAll(filepath.Join(home, ".config", "banger"), 0o700)
	os.WriteFile(filepath.Join(home, ".config", "banger", "config.toml"), []byte("[contexts.ci]\nkubeconfig = \"/nonexistent/kubeconfig\"\n"), 0o600)
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--context", "ci", "image", "list"}, ExitUsage, "banger image list does not work with --context ci"},
		{[]string{"--context", "nope", "vm", "list"}, ExitUsage, "--context nope: no [contexts.nope] in"},
		{[]string{"--context", "ci", "vm", "list"}, ExitFailure, "--context ci: kubeconfig"},
		{[]string{"--context", "ci", "vm", "run"}, ExitUsage, "give a command ('-- CMD') or -d"},
		{[]string{"--context", "ci", "vm", "exec", "--list", "x"}, ExitUsage, "-d, --list and --kill are the local daemon's"},
		{[]string{"--context", "ci", "vm", "list", "--filter", "state=running"}, ExitUsage, "--filter is the local daemon's"},
	}
	for _, c := range cases {
		_, errOut, code := run(c.args...)
		if code != c.code || !strings.Contains(errOut, c.want) || strings.Count(errOut, "\n") != 1 {
			t.Errorf("banger %s: exit %d %q, want exit %d and %q on one line", strings.Join(c.args, " "), code, errOut, c.code, c.want)
		}
	}
	t.Setenv("BANGER_CONTEXT", "ci")
	if _, errOut, code := run("kernel", "list"); code != ExitUsage || !strings.Contains(errOut, "--context ci") {
		t.Errorf("BANGER_CONTEXT=ci banger kernel list: exit %d %q", code, errOut)
	}
}
