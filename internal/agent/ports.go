package agent

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Socket states in /proc/net/*: TCP_LISTEN for TCP; an unconnected bound UDP
// socket is TCP_CLOSE with a zero remote address.
const (
	stateListen = "0A"
	stateClose  = "07"
)

// CollectPorts lists the TCP sockets in LISTEN state and the bound,
// unconnected UDP sockets of the agent's network namespace, with the process
// holding each one. Entries are sorted by port, then proto, then address, and
// identical entries appear once.
func CollectPorts() ([]Listener, error) { return collectPorts("/proc") }

type socketEntry struct {
	proto string
	addr  netip.Addr
	port  int
	inode uint64
}

func collectPorts(proc string) ([]Listener, error) {
	var socks []socketEntry
	for _, proto := range []string{"tcp", "tcp6", "udp", "udp6"} {
		b, err := os.ReadFile(filepath.Join(proc, "net", proto))
		if errors.Is(err, fs.ErrNotExist) {
			continue // e.g. no IPv6 in this kernel
		}
		if err != nil {
			return nil, err
		}
		es, err := parseProcNet(proto, b)
		if err != nil {
			return nil, fmt.Errorf("%s/net/%s: %w", proc, proto, err)
		}
		socks = append(socks, es...)
	}
	want := make(map[uint64]bool, len(socks))
	for _, s := range socks {
		if s.inode != 0 {
			want[s.inode] = true
		}
	}
	owners := socketOwners(proc, want)
	out := make([]Listener, 0, len(socks))
	for _, s := range socks {
		l := Listener{Proto: s.proto, Address: s.addr.Unmap().String(), Port: s.port}
		if o, ok := owners[s.inode]; ok {
			l.PID, l.Process = o.pid, o.comm
		}
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b Listener) int {
		if c := a.Port - b.Port; c != 0 {
			return c
		}
		if c := strings.Compare(a.Proto, b.Proto); c != 0 {
			return c
		}
		if c := strings.Compare(a.Address, b.Address); c != 0 {
			return c
		}
		if c := a.PID - b.PID; c != 0 {
			return c
		}
		return strings.Compare(a.Process, b.Process)
	})
	return slices.Compact(out), nil
}

// parseProcNet parses one /proc/net/{tcp,tcp6,udp,udp6} file and keeps the
// listening (TCP) or bound, unconnected (UDP) sockets.
func parseProcNet(proto string, b []byte) ([]socketEntry, error) {
	tcp := strings.HasPrefix(proto, "tcp")
	var out []socketEntry
	err := procNetLines(b, func(line string, f []string) error {
		// sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
		if len(f) < 10 {
			return nil
		}
		st := f[3]
		if tcp && st != stateListen || !tcp && st != stateClose {
			return nil
		}
		local, port, err := parseHexAddrPort(f[1])
		if err != nil {
			return err
		}
		if !tcp {
			remote, rport, err := parseHexAddrPort(f[2])
			if err != nil {
				return err
			}
			if !remote.IsUnspecified() || rport != 0 {
				return nil
			}
		}
		if port == 0 {
			return nil
		}
		inode, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil {
			return fmt.Errorf("inode %q: %w", f[9], err)
		}
		out = append(out, socketEntry{proto: proto, addr: local, port: port, inode: inode})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// procNetLines calls fn with each line of a /proc/net/{tcp,tcp6,udp,udp6}
// file after the header, and its fields; the first error ends it.
func procNetLines(b []byte, fn func(line string, f []string) error) error {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	first := true
	for sc.Scan() {
		if first { // header
			first = false
			continue
		}
		if err := fn(sc.Text(), strings.Fields(sc.Text())); err != nil {
			return err
		}
	}
	return sc.Err()
}

// fdSockets returns the inodes of the sockets pid holds, in the order of its
// /proc/PID/fd links ("socket:[INODE]"); an error when its fd directory
// cannot be read (it is gone, or not ours to read).
func fdSockets(proc string, pid int) ([]uint64, error) {
	fdDir := filepath.Join(proc, strconv.Itoa(pid), "fd")
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return nil, err
	}
	var out []uint64
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
		if err != nil {
			continue
		}
		rest, ok := strings.CutPrefix(link, "socket:[")
		if !ok {
			continue
		}
		if inode, err := strconv.ParseUint(strings.TrimSuffix(rest, "]"), 10, 64); err == nil {
			out = append(out, inode)
		}
	}
	return out, nil
}

// parseHexAddrPort parses the kernel's "0100007F:0016" form. The address is
// printed as native-endian 32-bit words of the network-order bytes.
func parseHexAddrPort(s string) (netip.Addr, int, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok || (len(a) != 8 && len(a) != 32) {
		return netip.Addr{}, 0, fmt.Errorf("bad address %q", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("bad port in %q", s)
	}
	raw, err := hex.DecodeString(a)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("bad address %q", s)
	}
	ip := make([]byte, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(ip[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(ip)
	return addr, int(port), nil
}

type owner struct {
	pid  int
	comm string
}

// socketOwners maps socket inodes in want to the lowest pid holding them, by
// reading the /proc/PID/fd/* links ("socket:[INODE]"). Processes that vanish
// or cannot be read are skipped.
func socketOwners(proc string, want map[uint64]bool) map[uint64]owner {
	out := map[uint64]owner{}
	if len(want) == 0 {
		return out
	}
	ents, err := os.ReadDir(proc)
	if err != nil {
		return out
	}
	pids := make([]int, 0, len(ents))
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	for _, pid := range pids {
		inodes, err := fdSockets(proc, pid)
		if err != nil {
			continue
		}
		comm := ""
		for _, inode := range inodes {
			if !want[inode] {
				continue
			}
			if _, seen := out[inode]; seen {
				continue
			}
			if comm == "" {
				b, _ := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "comm"))
				comm = strings.TrimSpace(string(b))
			}
			out[inode] = owner{pid: pid, comm: comm}
		}
		if len(out) == len(want) {
			break
		}
	}
	return out
}
