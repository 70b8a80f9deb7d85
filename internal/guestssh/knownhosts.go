package guestssh

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// KnownHosts is banger's own known_hosts file, in OpenSSH format so the system
// ssh client can share it (SystemSSHArgs). Guest host keys are pinned only
// through Pin, from a channel that only the guest can write (its console:
// ConsoleHostKeys), never from what answers on the network: a host without a
// pin is refused (*HostKeyUnknownError), and so is a key other than the pinned
// ones (*HostKeyMismatchError). Every read-modify-write holds an in-process
// mutex and an exclusive flock on path+".lock", so the daemon and CLI
// processes can use the file at once.
//
// Entries are matched by exact host (case-insensitive) or by an OpenSSH hashed
// host (|1|salt|hash); wildcard and negated patterns are not interpreted.
// Unparseable lines are skipped. @revoked keys are refused for every host;
// @cert-authority lines are ignored.
type KnownHosts struct {
	path string
	mu   sync.Mutex
}

// OpenKnownHosts returns the known_hosts file at path. Nothing is read or
// created until it is used; the file and its directory are created (0600,
// 0700) when the first key is pinned.
func OpenKnownHosts(path string) *KnownHosts { return &KnownHosts{path: path} }

// Path is the file's path.
func (k *KnownHosts) Path() string { return k.path }

// HostKeyMismatchError is returned when a host presents a key other than the
// one pinned for it. Its message is one line.
type HostKeyMismatchError struct {
	Host string        // host as written in known_hosts: "1.2.3.4" or "[1.2.3.4]:2222"
	Path string        // the known_hosts file
	Line int           // 1-based line of the pinned entry
	Want ssh.PublicKey // the pinned key
	Got  ssh.PublicKey // the key the host presented
}

func (e *HostKeyMismatchError) Error() string {
	return fmt.Sprintf("host key for %s changed (known_hosts line %d, %s): possible man-in-the-middle attack (another machine answering on the VM's address); "+
		"banger pinned the VM's keys from its own console when it booted it; if the VM's keys really changed, restart it ('banger vm restart NAME') to pin them again; "+
		"presented %s key %s, pinned %s",
		e.Host, e.Line, e.Path, e.Got.Type(), ssh.FingerprintSHA256(e.Got), ssh.FingerprintSHA256(e.Want))
}

// ErrHostKeyRevoked is returned (wrapped) when a host presents a key marked
// @revoked in the known_hosts file.
var ErrHostKeyRevoked = errors.New("host key is marked @revoked")

// ErrHostKeyNotPinned is what a *HostKeyUnknownError wraps.
var ErrHostKeyNotPinned = errors.New("no host key pinned")

// HostKeyUnknownError is returned when a host with no pinned key is dialled:
// banger never trusts a key on first use from the network. Its message is one
// line.
type HostKeyUnknownError struct {
	Host string        // host as written in known_hosts: "1.2.3.4" or "[1.2.3.4]:2222"
	Path string        // the known_hosts file
	Got  ssh.PublicKey // the key the host presented
}

func (e *HostKeyUnknownError) Error() string {
	return fmt.Sprintf("no SSH host key is pinned for %s in %s, so its key is refused: banger pins a VM's host keys from the VM's own console "+
		"each time it boots it and never trusts a key first seen on the network; restart the VM ('banger vm restart NAME') to pin them again; "+
		"presented %s key %s", e.Host, e.Path, e.Got.Type(), ssh.FingerprintSHA256(e.Got))
}

func (e *HostKeyUnknownError) Unwrap() error { return ErrHostKeyNotPinned }

// Callback returns a host key callback for ssh.ClientConfig that accepts only
// pinned keys (Pin): a key equal to one pinned for the host is accepted; a
// host with no pin is refused with a *HostKeyUnknownError and nothing is
// written (no trust on first use); any other key is refused with a
// *HostKeyMismatchError, including a key of a type not pinned for a host
// that has pins (Dial restricts the offered host key algorithms to the pinned
// types, so an honest host never hits that case).
func (k *KnownHosts) Callback() ssh.HostKeyCallback {
	return func(hostname string, _ net.Addr, key ssh.PublicKey) error {
		return k.check(knownhosts.Normalize(hostname), key)
	}
}

func (k *KnownHosts) check(host string, key ssh.PublicKey) error {
	unlock, err := k.lock()
	if err != nil {
		return err
	}
	defer unlock()
	entries, _, err := k.read()
	if err != nil {
		return err
	}
	var pinned []knownEntry
	for _, e := range entries {
		switch {
		case e.marker == "revoked":
			if keysEqual(e.key, key) {
				return fmt.Errorf("guestssh: %s: %s line %d: %w", host, k.path, e.line, ErrHostKeyRevoked)
			}
		case e.marker == "" && e.matches(host):
			if keysEqual(e.key, key) {
				return nil
			}
			pinned = append(pinned, e)
		}
	}
	if len(pinned) > 0 {
		want := pinned[0]
		for _, e := range pinned {
			if e.key.Type() == key.Type() {
				want = e
				break
			}
		}
		return &HostKeyMismatchError{Host: host, Path: k.path, Line: want.line, Want: want.key, Got: key}
	}
	return &HostKeyUnknownError{Host: host, Path: k.path, Got: key}
}

// Pin makes keys the only keys pinned for addr ("host" or "host:port"; port
// 22 by default), in one atomic rewrite of the file: every entry for that
// host (plain or hashed, alone or on a shared line) is dropped, every other
// line is kept byte for byte, and one line per key is appended. Guest IPs are
// reused across VMs, so a new VM never inherits an older VM's pin. The keys
// must come from a channel only the guest controls (its console, see
// ConsoleHostKeys), never from whatever answers on addr. Certificates are
// refused; duplicate keys are pinned once.
func (k *KnownHosts) Pin(addr string, keys ...ssh.PublicKey) error {
	host := knownhosts.Normalize(addr)
	if host == "" || strings.ContainsAny(host, " \t\n\r,*?!") {
		return fmt.Errorf("guestssh: pin host key: invalid host %q", addr)
	}
	var lines []string
	var uniq []ssh.PublicKey
	for _, key := range keys {
		if key == nil {
			return fmt.Errorf("guestssh: pin host key for %s: nil key", host)
		}
		if _, ok := key.(*ssh.Certificate); ok {
			return fmt.Errorf("guestssh: pin host key for %s: %s is a certificate, not a host key", host, key.Type())
		}
		if containsKey(uniq, key) {
			continue
		}
		uniq = append(uniq, key)
		lines = append(lines, knownhosts.Line([]string{host}, key))
	}
	if len(lines) == 0 {
		return fmt.Errorf("guestssh: pin host key for %s: no key given", host)
	}
	unlock, err := k.lock()
	if err != nil {
		return err
	}
	defer unlock()
	data, err := os.ReadFile(k.path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("guestssh: read known_hosts: %w", err)
	}
	out, _ := dropHosts(data, false, func(pattern string) bool { return matchPattern(pattern, host) })
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	for _, l := range lines {
		out = append(out, l...)
		out = append(out, '\n')
	}
	if err := k.replace(out); err != nil {
		return fmt.Errorf("guestssh: pin host key for %s: %w", host, err)
	}
	return nil
}

// hostKeyAlgorithms returns the host key algorithms matching the key types
// pinned for host (normalized), or nil if none are pinned.
func (k *KnownHosts) hostKeyAlgorithms(host string) ([]string, error) {
	keys, err := k.Keys(host)
	if err != nil {
		return nil, err
	}
	var algos []string
	seen := map[string]bool{}
	for _, key := range keys {
		if seen[key.Type()] {
			continue
		}
		seen[key.Type()] = true
		if key.Type() == ssh.KeyAlgoRSA {
			algos = append(algos, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		} else {
			algos = append(algos, key.Type())
		}
	}
	return algos, nil
}

// Remove drops the entries for hosts and keeps every other line byte for
// byte. A host given with a port ("1.2.3.4:2222", "[1.2.3.4]:2222") removes
// only that port's entries ("1.2.3.4:22" means the bare "1.2.3.4" entries); a
// bare host ("1.2.3.4", "[::1]") removes its entries for every port, except
// hashed entries for non-22 ports, which cannot be recognised without the
// port. A line naming other hosts too keeps them. A missing file is not an
// error.
func (k *KnownHosts) Remove(hosts ...string) error {
	if len(hosts) == 0 {
		return nil
	}
	var exact, bare []string
	for _, h := range hosts {
		if _, _, err := net.SplitHostPort(h); err == nil {
			exact = append(exact, knownhosts.Normalize(h))
		} else {
			bare = append(bare, strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"))
		}
	}
	drop := func(pattern string) bool {
		for _, h := range exact {
			if matchPattern(pattern, h) {
				return true
			}
		}
		for _, h := range bare {
			if matchPattern(pattern, h) {
				return true
			}
			if p, ok := strings.CutPrefix(strings.ToLower(pattern), "["+strings.ToLower(h)+"]:"); ok && p != "" && !strings.ContainsAny(p, ",] \t") {
				return true
			}
		}
		return false
	}

	unlock, err := k.lock()
	if err != nil {
		return err
	}
	defer unlock()
	data, err := os.ReadFile(k.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("guestssh: read known_hosts: %w", err)
	}
	out, changed := dropHosts(data, true, drop)
	if !changed {
		return nil
	}
	if err := k.replace(out); err != nil {
		return fmt.Errorf("guestssh: rewrite known_hosts: %w", err)
	}
	return nil
}

// replace atomically replaces the file's content (temp file and rename),
// keeping its mode (0600 for a new file). The caller holds the lock.
func (k *KnownHosts) replace(data []byte) error {
	mode := os.FileMode(0o600)
	if fi, err := os.Stat(k.path); err == nil {
		mode = fi.Mode().Perm()
	}
	tmp, err := writeTemp(filepath.Dir(k.path), ".known_hosts-*", data, mode)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, k.path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// dropHosts removes the host patterns for which drop is true from every
// known_hosts line of data (a line left with none is removed) and keeps every
// other byte. Lines with an @marker (@revoked, @cert-authority) are edited
// only if marked is true.
func dropHosts(data []byte, marked bool, drop func(pattern string) bool) (out []byte, changed bool) {
	var buf bytes.Buffer
	for _, raw := range splitLinesKeepEOL(data) {
		start, end, ok := hostsField(raw)
		if !ok || (!marked && bytes.HasPrefix(bytes.TrimLeft(raw, " \t"), []byte("@"))) {
			buf.Write(raw)
			continue
		}
		patterns := strings.Split(string(raw[start:end]), ",")
		var keep []string
		for _, p := range patterns {
			if !drop(p) {
				keep = append(keep, p)
			}
		}
		switch {
		case len(keep) == len(patterns):
			buf.Write(raw)
		case len(keep) == 0:
			changed = true
		default:
			changed = true
			buf.Write(raw[:start])
			buf.WriteString(strings.Join(keep, ","))
			buf.Write(raw[end:])
		}
	}
	return buf.Bytes(), changed
}

// lock takes the in-process mutex and the cross-process flock.
func (k *KnownHosts) lock() (unlock func(), err error) {
	k.mu.Lock()
	fail := func(err error) (func(), error) {
		k.mu.Unlock()
		return nil, fmt.Errorf("guestssh: lock known_hosts: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(k.path), 0o700); err != nil {
		return fail(err)
	}
	f, err := os.OpenFile(k.path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fail(err)
	}
	fd := int(f.Fd())
	for {
		err = syscall.Flock(fd, syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return fail(err)
	}
	return func() {
		f.Close() // releases the flock
		k.mu.Unlock()
	}, nil
}

type knownEntry struct {
	line   int // 1-based
	marker string
	hosts  []string
	key    ssh.PublicKey
}

func (e knownEntry) matches(host string) bool {
	for _, p := range e.hosts {
		if matchPattern(p, host) {
			return true
		}
	}
	return false
}

// read parses the file; a missing file has no entries.
func (k *KnownHosts) read() ([]knownEntry, []byte, error) {
	data, err := os.ReadFile(k.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("guestssh: read known_hosts: %w", err)
	}
	var entries []knownEntry
	for i, raw := range splitLinesKeepEOL(data) {
		marker, hosts, key, _, _, err := ssh.ParseKnownHosts(raw)
		if err != nil {
			continue // blank, comment or unparseable
		}
		entries = append(entries, knownEntry{line: i + 1, marker: marker, hosts: hosts, key: key})
	}
	return entries, data, nil
}

// matchPattern matches one known_hosts host pattern against a normalized
// host: plain (case-insensitive) or OpenSSH-hashed.
func matchPattern(pattern, host string) bool {
	if strings.HasPrefix(pattern, "|1|") {
		parts := strings.Split(pattern, "|")
		if len(parts) != 4 {
			return false
		}
		salt, err1 := base64.StdEncoding.DecodeString(parts[2])
		want, err2 := base64.StdEncoding.DecodeString(parts[3])
		if err1 != nil || err2 != nil {
			return false
		}
		mac := hmac.New(sha1.New, salt)
		mac.Write([]byte(host))
		return hmac.Equal(mac.Sum(nil), want)
	}
	return strings.EqualFold(pattern, host)
}

// hostsField locates the comma-separated host patterns of a known_hosts line
// (after an optional @marker); ok is false for blank and comment lines.
func hostsField(raw []byte) (start, end int, ok bool) {
	isBlank := func(c byte) bool { return c == ' ' || c == '\t' }
	i := 0
	for i < len(raw) && isBlank(raw[i]) {
		i++
	}
	if i == len(raw) || raw[i] == '#' || raw[i] == '\n' || raw[i] == '\r' {
		return 0, 0, false
	}
	if raw[i] == '@' {
		for i < len(raw) && !isBlank(raw[i]) && raw[i] != '\n' {
			i++
		}
		for i < len(raw) && isBlank(raw[i]) {
			i++
		}
	}
	start = i
	for i < len(raw) && !isBlank(raw[i]) && raw[i] != '\n' && raw[i] != '\r' {
		i++
	}
	if i == start {
		return 0, 0, false
	}
	return start, i, true
}

// splitLinesKeepEOL splits data after each '\n'; the last line may lack one.
func splitLinesKeepEOL(data []byte) [][]byte {
	var lines [][]byte
	for len(data) > 0 {
		n := bytes.IndexByte(data, '\n') + 1
		if n == 0 {
			n = len(data)
		}
		lines = append(lines, data[:n])
		data = data[n:]
	}
	return lines
}

func keysEqual(a, b ssh.PublicKey) bool {
	return a.Type() == b.Type() && bytes.Equal(a.Marshal(), b.Marshal())
}

// Keys returns the keys pinned for addr ("IP" or "IP:port"), revoked ones
// left out: what 'banger internal known-hosts' prints for plain ssh.
func (k *KnownHosts) Keys(addr string) ([]ssh.PublicKey, error) {
	host := knownhosts.Normalize(addr)
	unlock, err := k.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	entries, _, err := k.read()
	if err != nil {
		return nil, err
	}
	var keys []ssh.PublicKey
	for _, e := range entries {
		if e.marker == "" && e.matches(host) {
			keys = append(keys, e.key)
		}
	}
	return keys, nil
}
