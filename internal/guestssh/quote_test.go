package guestssh

import (
	"io"
	"os/exec"
	"reflect"
	"strings"
	"testing"
)

func TestShellQuote(t *testing.T) {
	cases := []struct {
		argv []string
		want string
	}{
		{[]string{"sh", "-c", "exit 42"}, `sh -c 'exit 42'`},
		{[]string{"echo", ""}, `echo ''`},
		{[]string{"it's"}, `'it'\''s'`},
		{[]string{"FOO=bar", "~", "$x"}, `'FOO=bar' '~' '$x'`},
		{[]string{"/usr/bin/env", "a,b:c@d+e%f"}, `/usr/bin/env a,b:c@d+e%f`},
	}
	for _, c := range cases {
		if got := ShellQuote(c.argv); got != c.want {
			t.Errorf("ShellQuote(%q) = %s, want %s", c.argv, got, c.want)
		}
	}
}

// The quoted line gives argv back through a real local shell.
func TestShellQuoteLocalRoundTrip(t *testing.T) {
	argv := []string{"", "a b", "it's", "$HOME", "`x`", "a\nb", "\\", "*", "~", "'", "\"", "\t", "x=y", "-e"}
	line := "printf '%s\\0' " + ShellQuote(argv)
	out, err := exec.Command("/bin/sh", "-c", line).Output()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
	if !reflect.DeepEqual(got, argv) {
		t.Fatalf("got %q, want %q", got, argv)
	}
}

func TestSystemSSHArgs(t *testing.T) {
	got := SystemSSHArgs("172.30.0.5", "/s/ssh/id_ed25519", "/s/ssh/known_hosts")
	want := []string{"ssh", "-i", "/s/ssh/id_ed25519",
		"-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
		"-o", "UserKnownHostsFile=/s/ssh/known_hosts", "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes", "-o", "HashKnownHosts=no", "-o", "UpdateHostKeys=no",
		"root@172.30.0.5"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q", got)
	}
	got = SystemSSHArgs("[fd00::5]:2222", "/k", "/kh", "-t", "ls -la")
	if tail := got[len(got)-5:]; !reflect.DeepEqual(tail, []string{"-p", "2222", "root@fd00::5", "-t", "ls -la"}) {
		t.Fatalf("tail %q", tail)
	}
}

// ssh -G prints the configuration ssh would use without connecting: check
// that odd paths survive ssh's option parsing.
func TestSystemSSHArgsParsedBySSH(t *testing.T) {
	sshBin, err := exec.LookPath("ssh")
	if err != nil {
		t.Skip("no ssh client")
	}
	key := "/tmp/a dir/100%/id \"q\" \\x"
	kh := "/tmp/a dir/50%/known hosts"
	args := SystemSSHArgs("172.30.0.5:2200", key, kh, "-G")
	cmd := exec.Command(sshBin, args[1:]...)
	cmd.Env = []string{"HOME=/nonexistent"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ssh -G: %v\n%s", err, out)
	}
	conf := map[string][]string{}
	for _, l := range strings.Split(string(out), "\n") {
		k, v, _ := strings.Cut(l, " ")
		conf[k] = append(conf[k], v)
	}
	checks := map[string]string{
		"user": "root", "hostname": "172.30.0.5", "port": "2200",
		// ssh -G prints IdentityFile before its %-expansion (checked by hand
		// with ssh -v: the key loads from the unescaped path).
		"identityfile": strings.ReplaceAll(key, "%", "%%"), "stricthostkeychecking": "true", // "yes"
		"identitiesonly": "yes", "identityagent": "none", "hashknownhosts": "no",
	}
	for k, v := range checks {
		if len(conf[k]) == 0 || conf[k][0] != v {
			t.Errorf("%s = %q, want %q", k, conf[k], v)
		}
	}
	// ssh -G prints the file names space-separated; a path with spaces comes
	// back quoted.
	if uk := strings.Join(conf["userknownhostsfile"], ""); uk != `"`+kh+`"` && uk != kh {
		t.Errorf("userknownhostsfile = %q, want %q", uk, kh)
	}
}

func TestHeadBufferCapsEveryWay(t *testing.T) {
	h := &HeadBuffer{Max: 5}
	h.Write([]byte("abc"))
	if n, err := h.Write([]byte("defgh")); n != 5 || err != nil {
		t.Fatalf("Write = %d, %v: it must never fail the writer", n, err)
	}
	if _, err := io.Copy(h, strings.NewReader("more and more")); err != nil {
		t.Fatal(err)
	}
	if h.String() != "abcde" || h.Len() != 5 || string(h.Bytes()) != "abcde" {
		t.Fatalf("kept %q", h.String())
	}
}
