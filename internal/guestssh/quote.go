package guestssh

import (
	"bytes"
	"net"
	"strings"
)

// ShellQuote renders argv as one command line for a POSIX shell (sshd runs the
// remote command with the user's login shell, `$SHELL -c <line>`), so that the
// shell hands the program exactly argv. Words made only of characters that are
// never special to the shell are left bare for readability; every other word,
// including the empty word, is single-quoted, each embedded single quote
// being spliced in as \' between quoted runs.
func ShellQuote(argv []string) string {
	var b strings.Builder
	for i, w := range argv {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(quoteWord(w))
	}
	return b.String()
}

func quoteWord(w string) string {
	if w != "" && isSafeWord(w) {
		return w
	}
	return "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
}

// isSafeWord reports whether w can be given to a POSIX shell unquoted. '=' is
// excluded (a leading NAME=value word is an assignment) and so is '~' (tilde
// expansion).
func isSafeWord(w string) bool {
	for i := 0; i < len(w); i++ {
		c := w[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("-_./:,+@%", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// StrictHostKeyChecking is the value SystemSSHArgs passes to ssh: "yes", the
// policy KnownHosts applies. Guest host keys are pinned only from the guest's
// console (KnownHosts.Pin, when banger boots the VM); a guest without a pin
// and a changed key are both refused, never accepted from the network
// (upstream banger's accept-new let whatever answered first be pinned).
const StrictHostKeyChecking = "yes"

// SystemSSHArgs returns the full argv (argv[0] is "ssh") for handing an
// interactive session to the system ssh client as root@addr with banger's key
// and known_hosts file, ignoring the user's agent, other identities and the
// global known_hosts file. addr is "host" or "host:port" (IPv6 bracketed when
// a port is given); -p is added only for a port other than 22.
//
// extra is appended after the destination; ssh still parses leading options
// there (for example "-t"), and the first non-option word starts the remote
// command. ssh joins remote command words with spaces before the remote shell
// parses them, so pass a remote command as the single word ShellQuote(argv).
func SystemSSHArgs(addr, keyPath, knownHostsPath string, extra ...string) []string {
	host, port := splitHostPort(addr)
	args := []string{"ssh"}
	if strings.ContainsAny(keyPath, "%") {
		// -i paths are %-expanded but stat'ed before expansion, so an
		// escaped path must go through the config form instead.
		args = append(args, "-o", "IdentityFile="+sshConfigValue(keyPath))
	} else {
		args = append(args, "-i", keyPath)
	}
	args = append(args,
		"-o", "IdentitiesOnly=yes",
		"-o", "IdentityAgent=none",
		"-o", "UserKnownHostsFile="+sshConfigValue(knownHostsPath),
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking="+StrictHostKeyChecking,
		// Keep entries plain so KnownHosts.Remove can always match them, and
		// never let ssh add keys behind banger's back.
		"-o", "HashKnownHosts=no",
		"-o", "UpdateHostKeys=no",
	)
	if port != "" && port != "22" {
		args = append(args, "-p", port)
	}
	args = append(args, "root@"+host)
	return append(args, extra...)
}

// splitHostPort splits "host:port", "[v6]:port", "[v6]", "v6" or "host".
func splitHostPort(addr string) (host, port string) {
	if h, p, err := net.SplitHostPort(addr); err == nil {
		return h, p
	}
	return strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]"), ""
}

// sshConfigValue escapes a path for an ssh -o option: '%' is doubled (the
// option is %-expanded) and a value with blanks, quotes or backslashes is
// double-quoted (the option line is split on whitespace).
func sshConfigValue(p string) string {
	p = strings.ReplaceAll(p, "%", "%%")
	if !strings.ContainsAny(p, " \t\"'\\") {
		return p
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(p) + `"`
}

// ImageEnvFile holds the environment an imported OCI image declares (ENV:
// PATH and the like); commands run with it, as they would in a container.
const ImageEnvFile = "/.banger/env"

// WithImageEnv runs argv with the image's declared environment, when it has
// one (a no-op in banger's own images).
func WithImageEnv(argv []string) []string {
	return append([]string{"sh", "-c", `if [ -r ` + ImageEnvFile + ` ]; then . ` + ImageEnvFile + `; fi; exec "$@"`, "sh"}, argv...)
}

// HeadBuffer keeps the first Max bytes written to it and drops the rest,
// never failing the writer: how a guest's output is held in memory. It has
// no ReadFrom (io.Copy into it goes through Write and its cap).
type HeadBuffer struct {
	buf bytes.Buffer
	Max int
}

func (h *HeadBuffer) Write(p []byte) (int, error) {
	if room := h.Max - h.buf.Len(); room > 0 {
		h.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// String, Bytes and Len are those of what was kept.
func (h *HeadBuffer) String() string { return h.buf.String() }
func (h *HeadBuffer) Bytes() []byte  { return h.buf.Bytes() }
func (h *HeadBuffer) Len() int       { return h.buf.Len() }
