// Package agent is banger's guest agent and its host-side client.
//
// The agent is a small static binary (cmd/banger-agent) that runs inside every
// banger guest. It answers health and listening-socket queries from the host
// over newline-delimited JSON (protocol v1; v2 adds refresh, the entropy
// and clock a guest restored from a snapshot takes; v3 adds identity, the
// new machine-id, hostname, network and SSH host keys of a guest forked from
// another's snapshot; see docs/agent.md) on every
// transport that exists in the guest: AF_VSOCK (Firecracker), the
// virtio-serial port named "banger.agent" (banger-vmm) and, for tests and
// debugging, unix or TCP listeners.
//
// The host side talks to it through a [Conn]: [DialUDS] for Firecracker's
// vsock UDS, [NewConn] for any other stream.
package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Version is the agent's version, reported by the health op and --version.
// Stamp it with -ldflags "-X github.com/banger-dev/banger/internal/agent.Version=v1.2.3".
var Version = "dev"

// ProtocolVersion is the newest protocol version this package speaks.
// Version 2 adds the refresh op, version 3 the identity op, version 4
// identity's host_keys (keys the host made). Each op is asked at the oldest
// version that has it (health and ports at 1, refresh at 2), so an agent of
// an older banger still answers what it knows.
const ProtocolVersion = 4

// The version each op needs (and is asked with).
const (
	refreshProtocol      = 2
	identityProtocol     = 3
	identityKeysProtocol = 4 // identity with host_keys
)

// minProtocol is the oldest version the agent accepts.
const minProtocol = 1

// The protocol's operations.
const (
	OpHealth   = "health"
	OpPorts    = "ports"
	OpRefresh  = "refresh"  // protocol 2
	OpIdentity = "identity" // protocol 3
)

// knownOps is the list named in the unknown-op error.
const knownOps = OpHealth + ", " + OpPorts + ", " + OpRefresh + ", " + OpIdentity

// Request is one request line.
type Request struct {
	V    int             `json:"v"`
	ID   string          `json:"id"`
	Op   string          `json:"op"`
	Args json.RawMessage `json:"args,omitempty"`
}

// RefreshArgs is what a guest restored from a snapshot takes from the host
// before anything else runs on it (docs/snapshots.md): fresh entropy, mixed
// into the kernel's RNG and reseeding it, then the host's clock (a restored
// guest's clock stood still while it was saved).
type RefreshArgs struct {
	TimeUnixNano int64  `json:"time_unix_nano"`
	Entropy      []byte `json:"entropy"` // 32-512 bytes
}

// RefreshResult says what the refresh did.
type RefreshResult struct {
	// ClockStepNanos is how far the guest's clock moved (host - guest).
	ClockStepNanos int64 `json:"clock_step_nanos"`
	EntropyBytes   int   `json:"entropy_bytes"`
}

// IdentityArgs is the identity a guest forked from another guest's snapshot
// (a clone) takes before it is reported ready: what refresh gives (entropy,
// then the clock), then its own machine-id, hostname, MAC, IPv4 address and
// default route, and new SSH host keys (docs/agent.md). The agent refuses any
// field out of shape, naming it.
type IdentityArgs struct {
	TimeUnixNano int64  `json:"time_unix_nano"`
	Entropy      []byte `json:"entropy"`             // 32-512 bytes, same limits as refresh
	MachineID    string `json:"machine_id"`          // 32 lowercase hex
	Hostname     string `json:"hostname"`            // RFC 1123 label(s), <= 63 chars
	MAC          string `json:"mac"`                 // unicast, locally administered is fine
	Address      string `json:"address"`             // IPv4 CIDR, e.g. 172.16.0.5/24
	Gateway      string `json:"gateway"`             // IPv4
	Interface    string `json:"interface,omitempty"` // default "eth0"
	// HostKeys (protocol 4) are SSH host keys the host made, at most one per
	// type: an OpenSSH server gets these instead of keys made with
	// ssh-keygen in the guest, which under emulation is most of the op's
	// time. A type the server serves that is not here (rsa), and every key
	// of a dropbear server, is still made in the guest.
	HostKeys []HostKeyPair `json:"host_keys,omitempty"`
}

// HostKeyPair is one SSH host key made by the host.
type HostKeyPair struct {
	Type    string `json:"type"`    // "ed25519" or "ecdsa" (ssh-keygen's -t)
	Private string `json:"private"` // unencrypted "OPENSSH PRIVATE KEY" PEM, at most 4 KiB
	Public  string `json:"public"`  // "<algorithm> <base64>": the private key's public half
}

// IdentityResult says what the identity op did.
type IdentityResult struct {
	// ClockStepNanos is how far the guest's clock moved (host - guest).
	ClockStepNanos int64 `json:"clock_step_nanos"`
	// HostKeys are the public host keys the guest's SSH server serves from
	// now on, one authorized_keys line each ("ssh-ed25519 AAAA…"). The host
	// takes at most MaxHostKeys, each a valid key of at most 16 KiB.
	HostKeys []string `json:"host_keys"`
}

// Response is one response line. Result is set when OK is true, Error when it
// is false.
type Response struct {
	V      int             `json:"v"`
	ID     string          `json:"id"`
	OK     bool            `json:"ok"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`
}

// Health is the result of the health op.
type Health struct {
	AgentVersion      string  `json:"agent_version"`
	Protocol          int     `json:"protocol"`
	UptimeSeconds     float64 `json:"uptime_seconds"`
	BootID            string  `json:"boot_id"`
	Hostname          string  `json:"hostname"`
	Load1             float64 `json:"load1"`
	MemAvailableBytes int64   `json:"mem_available_bytes"`
	// SSHSessions is the number of established TCP connections to the
	// guest's port 22 (IPv4 and IPv6): its SSH sessions, however they were
	// opened. Nil when the agent could not count them, or is older than
	// the field (the daemon's auto_park_after never parks such a guest).
	// A negative count from a guest is taken as nil.
	SSHSessions *int `json:"ssh_sessions,omitempty"`
	// MemTotalBytes (MemTotal) and Disks ("/" and "/root", statfs) are for
	// 'vm stats'; like ssh_sessions they came without a new protocol
	// version, and an older agent leaves them out.
	MemTotalBytes int64       `json:"mem_total_bytes,omitempty"`
	Disks         []DiskUsage `json:"disks,omitempty"`
}

// DiskUsage is one mounted filesystem's size and use, as df reports it.
type DiskUsage struct {
	Path       string `json:"path"`
	UsedBytes  int64  `json:"used_bytes"`
	TotalBytes int64  `json:"total_bytes"`
}

// maxDisks caps the disks a health answer may list.
const maxDisks = 4

// Listener is one listening socket in the result of the ports op. PID is 0
// and Process empty when no process holding the socket could be found.
type Listener struct {
	Proto   string `json:"proto"` // tcp, tcp6, udp or udp6
	Address string `json:"address"`
	Port    int    `json:"port"`
	PID     int    `json:"pid"`
	Process string `json:"process"`
}

// PortsResult is the result of the ports op.
type PortsResult struct {
	Listeners []Listener `json:"listeners"`
}

// Limits on what crosses the protocol. The guest is untrusted: the host
// refuses anything past them instead of holding it in memory.
const (
	// maxRequestLine bounds a request line (the agent's side).
	maxRequestLine = 64 << 10
	// maxResponseLine bounds a response line (the host's side). A ports
	// answer with MaxListeners listeners of the longest real form (an IPv6
	// address, a 15-byte comm, each byte JSON-escaped) stays under 1 MiB.
	maxResponseLine = 1 << 20
	// maxTextField bounds free text from the guest (process names, versions,
	// hostnames, error messages) as the host passes it on.
	maxTextField = 256
)

// MaxHostKeys is the most host keys an identity answer may list; the host
// refuses a longer list, and a line over maxHostKeyLine bytes.
const (
	MaxHostKeys    = 8
	maxHostKeyLine = 16 << 10
)

// MaxListeners is the most listeners a ports answer may list. The agent
// answers an error when its guest has more, and the host refuses a longer
// list.
const MaxListeners = 4096

var errLineTooLong = errors.New("line too long")

// readLine returns the next line without its "\n" (and "\r"). A line longer
// than max is consumed and reported as errLineTooLong, so the stream stays
// usable. A final line without "\n" before EOF is returned as a line.
func readLine(r *bufio.Reader, max int) ([]byte, error) {
	return readLineDrain(r, max, true)
}

// readLineLimit is readLine, except that it stops reading as soon as a line
// passes max: an endless line is refused at once, and the stream is left in
// the middle of it (close it).
func readLineLimit(r *bufio.Reader, max int) ([]byte, error) {
	return readLineDrain(r, max, false)
}

func readLineDrain(r *bufio.Reader, max int, drain bool) ([]byte, error) {
	var line []byte
	tooLong := false
	for {
		frag, err := r.ReadSlice('\n')
		if !tooLong {
			if len(line)+len(frag) > max+2 { // room for "\r\n"
				tooLong, line = true, nil
				if !drain {
					return nil, errLineTooLong
				}
			} else {
				line = append(line, frag...)
			}
		}
		switch {
		case err == nil:
			if tooLong {
				return nil, errLineTooLong
			}
			return bytes.TrimRight(line, "\r\n"), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0 && !tooLong:
			// A last line without "\n": hand it out; EOF repeats on the next call.
			return bytes.TrimRight(line, "\r\n"), nil
		default:
			return nil, err
		}
	}
}

// cleanText makes guest-supplied text safe to pass on and print: invalid
// UTF-8 and non-printable runes (terminal escapes, newlines) become '?', and
// text longer than max bytes is cut to fit, ending in "…".
func cleanText(s string, max int) string {
	const ellipsis = "…"
	var b strings.Builder
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			r = '?'
		}
		if b.Len()+utf8.RuneLen(r) > max {
			out := b.String()
			for len(out) > 0 && len(out)+len(ellipsis) > max {
				_, n := utf8.DecodeLastRuneInString(out)
				out = out[:len(out)-n]
			}
			return out + ellipsis
		}
		b.WriteRune(r)
	}
	return b.String()
}
