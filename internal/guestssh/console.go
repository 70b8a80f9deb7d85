package guestssh

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"

	"golang.org/x/crypto/ssh"
)

// Console markers (docs/guest.md): every banger guest prints one
// "BANGER-HOSTKEY <type> <base64>" line per SSH host key on its serial
// console once the keys exist, then, when its SSH server listens, one
// "BANGER-READY boot_id=<uuid>" line.
const (
	ConsoleHostKeyMarker = "BANGER-HOSTKEY "
	ConsoleReadyMarker   = "BANGER-READY"
)

// MaxConsoleHostKeys bounds the host keys one boot may announce.
const MaxConsoleHostKeys = 8

// ErrNoConsoleHostKeys: the guest printed its ready line without announcing
// any host key first (an image made before banger pinned keys from the
// console, or a broken one).
var ErrNoConsoleHostKeys = errors.New("the guest printed no " + ConsoleHostKeyMarker + "line before " + ConsoleReadyMarker)

// ConsoleHostKeys returns the SSH host keys a guest announced on its console.
// console is the console output of one boot, from its first byte (the caller
// cuts off earlier boots). The keys are those of the BANGER-HOSTKEY lines
// before the first BANGER-READY line; everything after that line is ignored
// (a guest's later output, e.g. its console shell, cannot add keys). ready
// reports whether that line was seen: until it is, keys may be incomplete.
//
// Only complete lines count (the last one is ignored until its '\n'
// arrives); a marker must start its line ("\r\n" endings are fine). A
// BANGER-HOSTKEY line that is not "<type> <base64>[ comment]" naming a plain
// public key of that type (not a certificate) is skipped. Once ready, no key at all is ErrNoConsoleHostKeys, and more than
// MaxConsoleHostKeys is an error.
func ConsoleHostKeys(console []byte) (keys []ssh.PublicKey, ready bool, err error) {
	for len(console) > 0 {
		n := bytes.IndexByte(console, '\n')
		if n < 0 {
			break // incomplete line: still being written
		}
		line := bytes.Trim(console[:n], "\r")
		console = console[n+1:]
		if bytes.HasPrefix(line, []byte(ConsoleReadyMarker)) {
			ready = true
			break
		}
		rest, ok := bytes.CutPrefix(line, []byte(ConsoleHostKeyMarker))
		if !ok {
			continue
		}
		key := parseHostKeyLine(rest)
		if key != nil && !containsKey(keys, key) {
			keys = append(keys, key)
		}
	}
	if len(keys) > MaxConsoleHostKeys {
		return nil, ready, fmt.Errorf("the guest announced %d SSH host keys on its console, more than %d", len(keys), MaxConsoleHostKeys)
	}
	if ready && len(keys) == 0 {
		return nil, true, ErrNoConsoleHostKeys
	}
	return keys, ready, nil
}

// parseHostKeyLine parses "<type> <base64> [comment]"; nil if it is not a
// plain public key of the type it names.
func parseHostKeyLine(b []byte) ssh.PublicKey {
	f := bytes.Fields(b)
	if len(f) < 2 {
		return nil
	}
	blob, err := base64.StdEncoding.DecodeString(string(f[1]))
	if err != nil {
		return nil
	}
	key, err := ssh.ParsePublicKey(blob)
	if err != nil || key.Type() != string(f[0]) {
		return nil
	}
	if _, cert := key.(*ssh.Certificate); cert {
		return nil
	}
	return key
}

func containsKey(keys []ssh.PublicKey, k ssh.PublicKey) bool {
	for _, have := range keys {
		if keysEqual(have, k) {
			return true
		}
	}
	return false
}
