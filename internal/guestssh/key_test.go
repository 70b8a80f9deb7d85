package guestssh

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestEnsureKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "ssh")
	path := filepath.Join(dir, "id_ed25519")
	s1, auth1, err := EnsureKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if s1.PublicKey().Type() != ssh.KeyAlgoED25519 {
		t.Fatalf("key type %s", s1.PublicKey().Type())
	}
	for p, want := range map[string]os.FileMode{path: 0o600, dir: 0o700} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != want {
			t.Fatalf("%s: mode %v err %v, want %v", p, fi.Mode().Perm(), err, want)
		}
	}
	pem, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(pem), "-----BEGIN OPENSSH PRIVATE KEY-----") {
		t.Fatalf("not an OpenSSH key:\n%s", pem)
	}
	pub, _ := os.ReadFile(path + ".pub")
	if string(pub) != auth1+"\n" || !strings.HasPrefix(auth1, "ssh-ed25519 ") || strings.Contains(auth1, "\n") {
		t.Fatalf("pub %q, authorized %q", pub, auth1)
	}
	if k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(auth1)); err != nil || !keysEqual(k, s1.PublicKey()) {
		t.Fatalf("authorized key does not parse to the key: %v", err)
	}

	// Idempotent; a loose mode is tightened; a lost .pub comes back.
	os.Chmod(path, 0o644)
	os.Remove(path + ".pub")
	s2, auth2, err := EnsureKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !keysEqual(s1.PublicKey(), s2.PublicKey()) || auth1 != auth2 {
		t.Fatal("second EnsureKey returned a different key")
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode not tightened: %v", fi.Mode().Perm())
	}
	if pub2, _ := os.ReadFile(path + ".pub"); string(pub2) != string(pub) {
		t.Fatalf(".pub not restored: %q", pub2)
	}
	if after, _ := os.ReadFile(path); string(after) != string(pem) {
		t.Fatal("private key rewritten")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Fatalf("stray files: %v", entries)
	}

	// OpenSSH reads it.
	if keygen, err := exec.LookPath("ssh-keygen"); err == nil {
		out, err := exec.Command(keygen, "-y", "-f", path).Output()
		if err != nil || !strings.HasPrefix(auth1, strings.TrimSpace(string(out))) {
			t.Fatalf("ssh-keygen -y: %q %v", out, err)
		}
	}
}

func TestEnsureKeyConcurrentCreators(t *testing.T) {
	path := filepath.Join(t.TempDir(), "id_ed25519")
	const n = 8
	auths := make(chan string, n)
	for i := 0; i < n; i++ {
		go func() {
			_, a, err := EnsureKey(path)
			if err != nil {
				t.Error(err)
			}
			auths <- a
		}()
	}
	first := <-auths
	for i := 1; i < n; i++ {
		if a := <-auths; a != first {
			t.Fatalf("creators disagree: %q vs %q", a, first)
		}
	}
}

func TestEnsureKeyRejectsGarbage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "id_ed25519")
	os.WriteFile(path, []byte("not a key"), 0o600)
	if _, _, err := EnsureKey(path); err == nil {
		t.Fatal("garbage key accepted")
	}
	if data, _ := os.ReadFile(path); string(data) != "not a key" {
		t.Fatal("garbage key overwritten")
	}
}
