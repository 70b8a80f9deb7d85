package guestssh

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func authLine(k ssh.PublicKey) string {
	return strings.TrimSuffix(string(ssh.MarshalAuthorizedKey(k)), "\n")
}

func TestRemoveKeepsOtherLinesByteForByte(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "known_hosts")
	k1 := authLine(newEd25519Signer(t).PublicKey())
	k2 := authLine(newECDSASigner(t).PublicKey())
	hashed := knownhosts.HashHostname("172.30.0.5")
	hashedOther := knownhosts.HashHostname("172.30.0.9")
	in := strings.Join([]string{
		"# banger known hosts",
		"172.30.0.5 " + k1,
		"172.30.0.50 " + k1 + " keep-prefix-match",
		"[172.30.0.5]:2222 " + k2,
		"  172.30.0.6\t" + k2 + "  spacing kept  ",
		"172.30.0.5,172.30.0.7 " + k1 + " shared",
		hashed + " " + k1,
		hashedOther + " " + k2,
		"",
		"garbage line that does not parse",
		"[172.30.0.6]:2222 " + k1 + "\r",
		"172.30.0.5 " + k2, // last line, no newline
	}, "\n")
	if err := os.WriteFile(path, []byte(in), 0o640); err != nil {
		t.Fatal(err)
	}
	kh := OpenKnownHosts(path)
	if err := kh.Remove("172.30.0.5"); err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"# banger known hosts",
		"172.30.0.50 " + k1 + " keep-prefix-match",
		"  172.30.0.6\t" + k2 + "  spacing kept  ",
		"172.30.0.7 " + k1 + " shared",
		hashedOther + " " + k2,
		"",
		"garbage line that does not parse",
		"[172.30.0.6]:2222 " + k1 + "\r",
		"",
	}, "\n")
	got, _ := os.ReadFile(path)
	if string(got) != want {
		t.Fatalf("after Remove:\n%q\nwant:\n%q", got, want)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode changed to %v", fi.Mode().Perm())
	}

	// A port-qualified host removes only that port.
	if err := kh.Remove("172.30.0.6:2222"); err != nil {
		t.Fatal(err)
	}
	got, _ = os.ReadFile(path)
	if strings.Contains(string(got), "[172.30.0.6]:2222") || !strings.Contains(string(got), "  172.30.0.6\t") {
		t.Fatalf("after Remove(172.30.0.6:2222):\n%s", got)
	}
	// Removing nothing known leaves the file alone; a missing file is fine.
	before, _ := os.ReadFile(path)
	if err := kh.Remove("10.0.0.1", "[::1]:22"); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Fatal("no-op Remove rewrote the file")
	}
	if err := OpenKnownHosts(filepath.Join(dir, "absent")).Remove("1.2.3.4"); err != nil {
		t.Fatal(err)
	}
}

func TestCallbackAcceptsOnlyPinned(t *testing.T) {
	kh := OpenKnownHosts(filepath.Join(t.TempDir(), "sub", "known_hosts"))
	cb := kh.Callback()
	a, b := newEd25519Signer(t).PublicKey(), newEd25519Signer(t).PublicKey()
	remote := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 22}
	// Unknown host: refused, nothing written (no trust on first use).
	var unknown *HostKeyUnknownError
	if err := cb("172.30.0.5:22", remote, a); !errors.As(err, &unknown) || unknown.Host != "172.30.0.5" || !keysEqual(unknown.Got, a) {
		t.Fatalf("unpinned host: %v", err)
	}
	if _, err := os.Stat(kh.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("known_hosts written for an unpinned host: %v", err)
	}
	if err := kh.Pin("172.30.0.5", a); err != nil {
		t.Fatal(err)
	}
	if err := kh.Pin("172.30.0.5:2222", b); err != nil { // other port, other host
		t.Fatal(err)
	}
	if err := cb("172.30.0.5:22", remote, a); err != nil {
		t.Fatal(err)
	}
	if err := cb("172.30.0.5:2222", remote, b); err != nil {
		t.Fatal(err)
	}
	err := cb("172.30.0.5:22", remote, b)
	var mm *HostKeyMismatchError
	if !errors.As(err, &mm) || mm.Host != "172.30.0.5" || mm.Line != 1 || !keysEqual(mm.Want, a) {
		t.Fatalf("got %v", err)
	}
	// A host with a pin of another type is a mismatch too (no downgrade).
	if err := cb("172.30.0.5:22", remote, newECDSASigner(t).PublicKey()); !errors.As(err, &mm) {
		t.Fatalf("other key type: %v", err)
	}
	if err := cb("172.30.0.6:22", remote, a); !errors.As(err, &unknown) {
		t.Fatalf("a pinned key at another address: %v", err)
	}
	fi, err := os.Stat(kh.Path())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("known_hosts mode: %v %v", fi, err)
	}
	if di, _ := os.Stat(filepath.Dir(kh.Path())); di.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v", di.Mode().Perm())
	}
	data, _ := os.ReadFile(kh.Path())
	want := knownhosts.Line([]string{"172.30.0.5"}, a) + "\n" + knownhosts.Line([]string{"[172.30.0.5]:2222"}, b) + "\n"
	if string(data) != want {
		t.Fatalf("file:\n%s\nwant:\n%s", data, want)
	}
	// The file is readable by the system ssh tooling's parser.
	if _, err := knownhosts.New(kh.Path()); err != nil {
		t.Fatal(err)
	}
}

// Pin replaces every earlier pin of the host (IPs are reused across VMs) and
// keeps everything else byte for byte, @revoked lines included.
func TestPinReplacesOlderPinsForTheHost(t *testing.T) {
	path := filepath.Join(t.TempDir(), "known_hosts")
	old1, old2, other, revoked := authLine(newEd25519Signer(t).PublicKey()), authLine(newECDSASigner(t).PublicKey()),
		authLine(newEd25519Signer(t).PublicKey()), authLine(newEd25519Signer(t).PublicKey())
	in := strings.Join([]string{
		"# banger known hosts",
		"172.30.0.5 " + old1,
		"172.30.0.50 " + other + " prefix-match kept",
		"[172.30.0.5]:2222 " + other,
		knownhosts.HashHostname("172.30.0.5") + " " + old2,
		"172.30.0.5,172.30.0.7 " + old1 + " shared",
		"@revoked 172.30.0.5 " + revoked,
		"172.30.0.5 " + old2, // last line, no newline
	}, "\n")
	if err := os.WriteFile(path, []byte(in), 0o640); err != nil {
		t.Fatal(err)
	}
	kh := OpenKnownHosts(path)
	ed, ec := newEd25519Signer(t).PublicKey(), newECDSASigner(t).PublicKey()
	if err := kh.Pin("172.30.0.5", ed, ec, ed); err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"# banger known hosts",
		"172.30.0.50 " + other + " prefix-match kept",
		"[172.30.0.5]:2222 " + other,
		"172.30.0.7 " + old1 + " shared",
		"@revoked 172.30.0.5 " + revoked,
		knownhosts.Line([]string{"172.30.0.5"}, ed),
		knownhosts.Line([]string{"172.30.0.5"}, ec),
		"",
	}, "\n")
	got, _ := os.ReadFile(path)
	if string(got) != want {
		t.Fatalf("after Pin:\n%s\nwant:\n%s", got, want)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode changed to %v", fi.Mode().Perm())
	}
	cb := kh.Callback()
	for _, k := range []ssh.PublicKey{ed, ec} {
		if err := cb("172.30.0.5:22", nil, k); err != nil {
			t.Fatal(err)
		}
	}
	var mm *HostKeyMismatchError
	if k, _, _, _, _ := ssh.ParseAuthorizedKey([]byte(old1)); !errors.As(cb("172.30.0.5:22", nil, k), &mm) {
		t.Fatal("the older VM's key is still accepted")
	}
	// Refusals: nothing to pin, a certificate, a bad host.
	cert := &ssh.Certificate{Key: ed, CertType: ssh.HostCert}
	for name, err := range map[string]error{
		"no key":      kh.Pin("172.30.0.9"),
		"certificate": kh.Pin("172.30.0.9", cert),
		"bad host":    kh.Pin("172.30.0.9,10.0.0.1", ed),
		"wildcard":    kh.Pin("*", ed),
	} {
		if err == nil {
			t.Errorf("%s: Pin succeeded", name)
		}
	}
	if again, _ := os.ReadFile(path); string(again) != want {
		t.Fatalf("a refused Pin changed the file:\n%s", again)
	}
}

func TestCallbackRevokedAndHashed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "known_hosts")
	a, bad := newEd25519Signer(t).PublicKey(), newEd25519Signer(t).PublicKey()
	content := knownhosts.HashHostname("172.30.0.5") + " " + authLine(a) + "\n" +
		"@revoked * " + authLine(bad) + "\n" + "172.30.0.6" // partial line without newline
	os.WriteFile(path, []byte(content), 0o600)
	cb := OpenKnownHosts(path).Callback()
	if err := cb("172.30.0.5:22", nil, a); err != nil {
		t.Fatalf("hashed entry: %v", err)
	}
	var mm *HostKeyMismatchError
	if err := cb("172.30.0.5", nil, newEd25519Signer(t).PublicKey()); !errors.As(err, &mm) || mm.Line != 1 {
		t.Fatalf("hashed mismatch: %v", err)
	}
	if err := cb("10.0.0.1:22", nil, bad); !errors.Is(err, ErrHostKeyRevoked) {
		t.Fatalf("revoked: %v", err)
	}
	// Pinning after a line without a newline starts a new line.
	if err := OpenKnownHosts(path).Pin("10.0.0.1", a); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	if !strings.HasSuffix(string(data), "\n172.30.0.6\n10.0.0.1 "+authLine(a)+"\n") {
		t.Fatalf("file:\n%s", data)
	}
}

// Separate KnownHosts values stand in for separate processes: only the file
// lock serialises them.
func TestConcurrentPinningAcrossInstances(t *testing.T) {
	path := filepath.Join(t.TempDir(), "known_hosts")
	const n = 24
	keys := make([]ssh.PublicKey, n)
	for i := range keys {
		keys[i] = newEd25519Signer(t).PublicKey()
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := 0; i < n; i++ {
		wg.Add(2)
		host := fmt.Sprintf("10.0.0.%d:22", i+1)
		go func(i int) {
			defer wg.Done()
			errs <- OpenKnownHosts(path).Pin(host, keys[i])
		}(i)
		// The same host, racing with the same key from another "process".
		go func(i int) {
			defer wg.Done()
			errs <- OpenKnownHosts(path).Pin(host, keys[i])
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	data, _ := os.ReadFile(path)
	if lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n"); len(lines) != n {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), n, data)
	}
	cb := OpenKnownHosts(path).Callback()
	for i, k := range keys {
		if err := cb(fmt.Sprintf("10.0.0.%d:22", i+1), nil, k); err != nil {
			t.Fatal(err)
		}
	}
}
