package agent

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// CollectHealth reads the guest's health from /proc.
func CollectHealth() (Health, error) { return collectHealth("/proc") }

func collectHealth(proc string) (Health, error) {
	h := Health{AgentVersion: Version, Protocol: ProtocolVersion}
	read := func(name string) (string, error) {
		b, err := os.ReadFile(filepath.Join(proc, name))
		return strings.TrimSpace(string(b)), err
	}
	s, err := read("uptime")
	if err != nil {
		return h, err
	}
	if h.UptimeSeconds, err = firstFloat(s); err != nil {
		return h, fmt.Errorf("%s/uptime: %w", proc, err)
	}
	if h.BootID, err = read("sys/kernel/random/boot_id"); err != nil {
		return h, err
	}
	if h.Hostname, err = read("sys/kernel/hostname"); err != nil {
		if h.Hostname, err = os.Hostname(); err != nil {
			return h, err
		}
	}
	if s, err = read("loadavg"); err != nil {
		return h, err
	}
	if h.Load1, err = firstFloat(s); err != nil {
		return h, fmt.Errorf("%s/loadavg: %w", proc, err)
	}
	if h.MemAvailableBytes, err = memAvailable(filepath.Join(proc, "meminfo")); err != nil {
		return h, err
	}
	h.MemTotalBytes, _ = meminfoBytes(filepath.Join(proc, "meminfo"), "MemTotal:")
	h.Disks = diskUsage(healthDisks)
	// Not counted (an unreadable /proc/net): the field stays unset, and
	// the host treats the guest as one it cannot judge idle.
	if n, err := sshSessions(proc); err == nil {
		h.SSHSessions = &n
	}
	return h, nil
}

// stateEstablished is TCP_ESTABLISHED in /proc/net/tcp*.
const stateEstablished = "01"

// sshSessions counts the established TCP connections (IPv4 and IPv6) whose
// local port is 22: the guest's SSH sessions, whoever opened them (banger's
// CLI, the daemon, a user's own ssh). A missing tcp6 (a kernel without
// IPv6) counts nothing; a missing tcp, or any malformed line, is an error.
func sshSessions(proc string) (int, error) {
	n := 0
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(filepath.Join(proc, "net", f))
		if f == "tcp6" && errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, err
		}
		k, err := countEstablished(b, sshPort)
		if err != nil {
			return 0, fmt.Errorf("%s/net/%s: %w", proc, f, err)
		}
		n += k
	}
	return n, nil
}

// countEstablished counts the lines of a /proc/net/tcp or tcp6 file in
// state ESTABLISHED whose local port is port.
func countEstablished(b []byte, port int) (int, error) {
	n := 0
	err := procNetLines(b, func(line string, f []string) error {
		// sl local rem st ...
		if len(f) == 0 {
			return nil
		}
		if len(f) < 4 {
			return fmt.Errorf("short line %q", line)
		}
		if f[3] != stateEstablished {
			return nil
		}
		_, p, err := parseHexAddrPort(f[1])
		if err != nil {
			return err
		}
		if p == port {
			n++
		}
		return nil
	})
	return n, err
}

func firstFloat(s string) (float64, error) {
	f := strings.Fields(s)
	if len(f) == 0 {
		return 0, fmt.Errorf("empty")
	}
	return strconv.ParseFloat(f[0], 64)
}

// memAvailable returns MemAvailable from a meminfo file, in bytes.
func memAvailable(path string) (int64, error) { return meminfoBytes(path, "MemAvailable:") }

// meminfoBytes reads one "<key> <n> kB" line of /proc/meminfo, in bytes.
func meminfoBytes(path, key string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	name := strings.TrimSuffix(key, ":")
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), key)
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			break
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %s: %w", path, name, err)
		}
		if len(f) > 1 && f[1] == "kB" {
			n *= 1024
		}
		return n, nil
	}
	return 0, fmt.Errorf("%s: no %s line", path, name)
}

// healthDisks are the filesystems health reports: the root disk and, in
// banger's images, the work disk on /root.
var healthDisks = []string{"/", "/root"}
