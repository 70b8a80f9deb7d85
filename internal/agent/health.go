package agent

import (
	"bufio"
	"bytes"
	"fmt"
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
	return h, nil
}

func firstFloat(s string) (float64, error) {
	f := strings.Fields(s)
	if len(f) == 0 {
		return 0, fmt.Errorf("empty")
	}
	return strconv.ParseFloat(f[0], 64)
}

// memAvailable returns MemAvailable from a meminfo file, in bytes.
func memAvailable(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemAvailable:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			break
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: MemAvailable: %w", path, err)
		}
		if len(f) > 1 && f[1] == "kB" {
			n *= 1024
		}
		return n, nil
	}
	return 0, fmt.Errorf("%s: no MemAvailable line", path)
}
