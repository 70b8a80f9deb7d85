package guestssh

import (
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestConsoleHostKeys(t *testing.T) {
	ed, ec, late, certKey := newEd25519Signer(t).PublicKey(), newECDSASigner(t).PublicKey(),
		newEd25519Signer(t).PublicKey(), newEd25519Signer(t).PublicKey()
	ready := "BANGER-READY boot_id=0b5ad4a8-1c0e-4d56-a4f3-0b1ac1a1f001\r\n"
	cert := &ssh.Certificate{Key: certKey, CertType: ssh.HostCert, ValidPrincipals: []string{"bg"}, ValidBefore: ssh.CertTimeInfinity}
	if err := cert.SignCert(rand.Reader, newEd25519Signer(t)); err != nil {
		t.Fatal(err)
	}
	certLine := cert.Type() + " " + strings.Fields(authLine(cert))[1]
	lines := []string{
		"[    0.812345] random: crng init done\r\n",
		"BANGER-WARN cannot mount /dev/vdb on /root\r\n",
		"  " + ConsoleHostKeyMarker + authLine(late) + "\r\n",                                    // not at line start
		ConsoleHostKeyMarker + "ssh-ed25519 !!!notbase64\r\n",                                    // garbage: skipped
		ConsoleHostKeyMarker + "ecdsa-sha2-nistp256 " + strings.Fields(authLine(ed))[1] + "\r\n", // type lies: skipped
		ConsoleHostKeyMarker + certLine + "\r\n",                                                 // certificate: skipped
		ConsoleHostKeyMarker + authLine(ed) + " root@bg\r\n",
		ConsoleHostKeyMarker + authLine(ec) + "\r\n",
		ConsoleHostKeyMarker + authLine(ed) + "\r\n", // duplicate
	}
	head := strings.Join(lines, "")
	keys, ok, err := ConsoleHostKeys([]byte(head))
	if err != nil || ok || len(keys) != 2 || !keysEqual(keys[0], ed) || !keysEqual(keys[1], ec) {
		t.Fatalf("before ready: %d keys, ready %v, %v", len(keys), ok, err)
	}
	// Markers after the ready line (a console shell, a later process) and a
	// second ready line do not count.
	full := head + ready + ConsoleHostKeyMarker + authLine(late) + "\r\n" + ready
	keys, ok, err = ConsoleHostKeys([]byte(full))
	if err != nil || !ok || len(keys) != 2 || !keysEqual(keys[0], ed) || !keysEqual(keys[1], ec) {
		t.Fatalf("after ready: %d keys, ready %v, %v", len(keys), ok, err)
	}
	// An incomplete last line is not read: neither a half-written key nor a
	// half-written ready line.
	partialKey := ConsoleHostKeyMarker + authLine(ec)
	if keys, ok, _ := ConsoleHostKeys([]byte(ConsoleHostKeyMarker + authLine(ed) + "\n" + partialKey[:len(partialKey)-8])); ok || len(keys) != 1 {
		t.Fatalf("partial key line: %d keys, ready %v", len(keys), ok)
	}
	if _, ok, _ := ConsoleHostKeys([]byte(ConsoleHostKeyMarker + authLine(ed) + "\nBANGER-READY boot_id=0b5a")); ok {
		t.Fatal("a ready line without its newline counted")
	}
	// Ready without a key: an old image; fail closed.
	if _, ok, err := ConsoleHostKeys([]byte("hello\r\n" + ready + ConsoleHostKeyMarker + authLine(ed) + "\r\n")); !ok || !errors.Is(err, ErrNoConsoleHostKeys) {
		t.Fatalf("no key before ready: ready %v, %v", ok, err)
	}
	if keys, ok, err := ConsoleHostKeys(nil); keys != nil || ok || err != nil {
		t.Fatal("empty console")
	}
	// Too many keys.
	var many strings.Builder
	for i := 0; i <= MaxConsoleHostKeys; i++ {
		fmt.Fprintf(&many, "%s%s\n", ConsoleHostKeyMarker, authLine(newEd25519Signer(t).PublicKey()))
	}
	if _, _, err := ConsoleHostKeys([]byte(many.String() + ready)); err == nil {
		t.Fatal("more than MaxConsoleHostKeys accepted")
	}
}
