package agent

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// checkIdentityArgs refuses any field out of shape, naming it (by its JSON
// name). The host is trusted; being strict costs nothing.
func checkIdentityArgs(a IdentityArgs) (identityPlan, error) {
	var p identityPlan
	q := func(s string) string { return strconv.Quote(cleanText(s, 64)) }

	p.time = time.Unix(0, a.TimeUnixNano)
	if p.time.Before(earliestTime) {
		return p, fmt.Errorf("time_unix_nano: %s is before %s", p.time.UTC().Format(time.RFC3339), earliestTime.Format("2006-01-02"))
	}
	if n := len(a.Entropy); n < minRefreshEntropy || n > maxRefreshEntropy {
		return p, fmt.Errorf("entropy: must be %d-%d bytes, got %d", minRefreshEntropy, maxRefreshEntropy, n)
	}
	p.entropy = a.Entropy

	if len(a.MachineID) != 32 || strings.Trim(a.MachineID, "0123456789abcdef") != "" {
		return p, fmt.Errorf("machine_id: %s is not 32 lowercase hex characters", q(a.MachineID))
	}
	if strings.Trim(a.MachineID, "0") == "" {
		return p, errors.New("machine_id: all zeros is not a machine ID")
	}
	p.machine = a.MachineID

	if err := checkHostname(a.Hostname); err != nil {
		return p, fmt.Errorf("hostname: %s %w", q(a.Hostname), err)
	}
	p.hostname = a.Hostname

	mac, err := net.ParseMAC(a.MAC)
	switch {
	case err != nil:
		return p, fmt.Errorf("mac: %s is not a MAC address", q(a.MAC))
	case len(mac) != 6:
		return p, fmt.Errorf("mac: %s is not a 6-byte Ethernet address", q(a.MAC))
	case mac[0]&1 != 0:
		return p, fmt.Errorf("mac: %s is a multicast address", mac)
	case bytes.Equal(mac, make([]byte, 6)):
		return p, fmt.Errorf("mac: %s is not a usable address", mac)
	}
	p.mac = mac

	addr, err := netip.ParsePrefix(a.Address)
	if err != nil || !addr.Addr().Is4() {
		return p, fmt.Errorf("address: %s is not an IPv4 CIDR (like 172.16.0.5/24)", q(a.Address))
	}
	if addr.Bits() < 1 || addr.Bits() > 30 {
		return p, fmt.Errorf("address: %s: the prefix length must be 1-30", addr)
	}
	if !addr.Addr().IsGlobalUnicast() {
		return p, fmt.Errorf("address: %s is not a unicast address", addr)
	}
	if netOrBroadcast(addr.Addr(), addr) {
		return p, fmt.Errorf("address: %s is the network or broadcast address of its subnet", addr)
	}
	p.addr = addr

	gw, err := netip.ParseAddr(a.Gateway)
	if err != nil || !gw.Is4() {
		return p, fmt.Errorf("gateway: %s is not an IPv4 address", q(a.Gateway))
	}
	switch {
	case !addr.Contains(gw):
		return p, fmt.Errorf("gateway: %s is outside the address's subnet %s", gw, addr.Masked())
	case gw == addr.Addr():
		return p, fmt.Errorf("gateway: %s is the address itself", gw)
	case netOrBroadcast(gw, addr):
		return p, fmt.Errorf("gateway: %s is the network or broadcast address of %s", gw, addr.Masked())
	}
	p.gw = gw

	p.iface = a.Interface
	if p.iface == "" {
		p.iface = defaultIdentityIface
	}
	if len(p.iface) > 15 || p.iface == "." || p.iface == ".." || strings.Trim(p.iface, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") != "" {
		return p, fmt.Errorf("interface: %s is not a network interface name", q(a.Interface))
	}

	if len(a.HostKeys) > MaxHostKeys {
		return p, fmt.Errorf("host_keys: %d keys, more than %d", len(a.HostKeys), MaxHostKeys)
	}
	for i, k := range a.HostKeys {
		if p.keys == nil {
			p.keys = map[string]HostKeyPair{}
		}
		if _, dup := p.keys[k.Type]; dup {
			return p, fmt.Errorf("host_keys[%d]: a second %s key", i, q(k.Type))
		}
		pub, err := checkHostKeyPair(k)
		if err != nil {
			return p, fmt.Errorf("host_keys[%d]: %w", i, err)
		}
		p.keys[k.Type] = HostKeyPair{Type: k.Type, Private: k.Private, Public: pub}
	}
	return p, nil
}

// maxHostKeyPrivate caps a host-made private key (an ed25519 key's PEM is
// about 400 bytes, a P-521 one's about 800).
const maxHostKeyPrivate = 4 << 10

// hostKeyAlgorithms is the public key algorithm of each type the host makes.
var hostKeyAlgorithms = map[string][]string{
	"ed25519": {"ssh-ed25519"},
	"ecdsa":   {"ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"},
}

// checkHostKeyPair checks a host-made key: a known type, an unencrypted
// OpenSSH private key of one key whose public half is Public, of that type.
// It returns Public as "<algorithm> <base64>".
func checkHostKeyPair(k HostKeyPair) (string, error) {
	algs, ok := hostKeyAlgorithms[k.Type]
	if !ok {
		return "", fmt.Errorf("type %s is not ed25519 or ecdsa", strconv.Quote(cleanText(k.Type, 32)))
	}
	if len(k.Private) > maxHostKeyPrivate {
		return "", fmt.Errorf("private: %d bytes, more than %d", len(k.Private), maxHostKeyPrivate)
	}
	blk, rest := pem.Decode([]byte(k.Private))
	if blk == nil || blk.Type != "OPENSSH PRIVATE KEY" || strings.TrimSpace(string(rest)) != "" {
		return "", errors.New("private: not one OPENSSH PRIVATE KEY PEM block")
	}
	blob, err := openSSHPublicBlob(blk.Bytes)
	if err != nil {
		return "", fmt.Errorf("private: %w", err)
	}
	pub := pubKeyLine(k.Public)
	f := strings.Fields(pub)
	if len(f) != 2 || !slices.Contains(algs, f[0]) {
		return "", fmt.Errorf("public: not an %s public key line", k.Type)
	}
	if b, _ := base64.StdEncoding.DecodeString(f[1]); !bytes.Equal(b, blob) {
		return "", errors.New("public: not the private key's public half")
	}
	return pub, nil
}

// openSSHPublicBlob reads the public key blob of an unencrypted one-key
// openssh-key-v1 private key (PROTOCOL.key in OpenSSH's sources).
func openSSHPublicBlob(b []byte) ([]byte, error) {
	const magic = "openssh-key-v1\x00"
	if !bytes.HasPrefix(b, []byte(magic)) {
		return nil, errors.New("not an openssh-key-v1 key")
	}
	b = b[len(magic):]
	str := func() ([]byte, bool) {
		if len(b) < 4 {
			return nil, false
		}
		n := binary.BigEndian.Uint32(b)
		if uint64(n) > uint64(len(b)-4) {
			return nil, false
		}
		v := b[4 : 4+n]
		b = b[4+n:]
		return v, true
	}
	cipher, ok1 := str()
	kdf, ok2 := str()
	_, ok3 := str() // kdf options
	if !ok1 || !ok2 || !ok3 || len(b) < 4 {
		return nil, errors.New("truncated openssh-key-v1 key")
	}
	if string(cipher) != "none" || string(kdf) != "none" {
		return nil, errors.New("an encrypted key")
	}
	if n := binary.BigEndian.Uint32(b); n != 1 {
		return nil, fmt.Errorf("%d keys, want 1", n)
	}
	b = b[4:]
	pub, ok := str()
	if !ok || len(pub) == 0 {
		return nil, errors.New("truncated openssh-key-v1 key")
	}
	return pub, nil
}

// checkHostname: RFC 1123 labels (letters, digits, '-' inside), joined by
// dots, at most 63 characters in all (what every resolver and sethostname
// takes).
func checkHostname(h string) error {
	if h == "" {
		return errors.New("is empty")
	}
	if len(h) > 63 {
		return fmt.Errorf("is %d characters long, more than 63", len(h))
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" {
			return errors.New("has an empty label")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return errors.New("has a label starting or ending with '-'")
		}
		if strings.Trim(label, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != "" {
			return errors.New("may hold only letters, digits, '-' and dots")
		}
	}
	return nil
}

// netOrBroadcast reports whether a is the network or broadcast address of p.
func netOrBroadcast(a netip.Addr, p netip.Prefix) bool {
	n := p.Masked().Addr().As4()
	b := n
	for i, host := 0, 32-p.Bits(); i < 4; i++ {
		bits := min(max(host-8*(3-i), 0), 8)
		b[i] |= byte(1<<bits - 1)
	}
	return a == netip.AddrFrom4(n) || a == netip.AddrFrom4(b)
}
