package vm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vmdir"
)

// statsSample is how long Stats watches the VMMs' CPU time.
var statsSample = 500 * time.Millisecond

// clockTicks is the kernel's USER_HZ, the unit of /proc/PID/stat's times
// (100 on every Linux architecture banger runs on).
const clockTicks = 100

// Stats reports what the named running VMs (every one when none is named)
// cost: the VMM's CPU and resident memory and the tap's traffic from the
// host, the guest's memory and disks from its agent.
func (s *Service) Stats(ctx context.Context, names []string) ([]api.VMStats, error) {
	recs, err := s.runningRecs(ctx, names)
	if err != nil {
		return nil, err
	}
	procs := procTable("/proc")
	trees := make([][]int, len(recs))
	before := make([]int64, len(recs))
	for i, r := range recs {
		trees[i] = procs.tree(r.Runtime.PID)
		before[i] = cpuTicks("/proc", trees[i])
	}
	out := make([]api.VMStats, len(recs))
	var wg sync.WaitGroup
	for i, r := range recs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = s.guestStats(ctx, r)
		}()
	}
	t0 := time.Now()
	select {
	case <-time.After(statsSample):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	elapsed := time.Since(t0).Seconds()
	wg.Wait()
	for i, r := range recs {
		out[i].CPUPercent = float64(cpuTicks("/proc", trees[i])-before[i]) / clockTicks / elapsed * 100
		out[i].VMMRSSBytes = rssBytes("/proc", trees[i])
		// The tap's receive is what the guest sent.
		out[i].NetTxBytes = netCounter(r.Runtime.Tap, "rx_bytes")
		out[i].NetRxBytes = netCounter(r.Runtime.Tap, "tx_bytes")
	}
	return out, nil
}

// guestStats is what the guest's agent reports (its memory and disks).
func (s *Service) guestStats(ctx context.Context, r store.VMRecord) api.VMStats {
	st := api.VMStats{Name: r.Name}
	ctx, cancel := context.WithTimeout(ctx, AgentTimeout)
	defer cancel()
	c, err := agent.DialUDS(ctx, vmdir.Dir(r.Runtime.Dir).AgentSock(), AgentPort)
	if err != nil {
		st.Error = fmt.Sprintf("guest agent: %v", err)
		return st
	}
	defer c.Close()
	h, err := c.Health(ctx)
	if err != nil {
		st.Error = fmt.Sprintf("guest agent: %v", err)
		return st
	}
	if h.MemTotalBytes > 0 {
		st.GuestMemTotalBytes = h.MemTotalBytes
		st.GuestMemUsedBytes = max(h.MemTotalBytes-h.MemAvailableBytes, 0)
	}
	for _, d := range h.Disks {
		st.Disks = append(st.Disks, api.VMDiskUsage{Path: d.Path, UsedBytes: d.UsedBytes, TotalBytes: d.TotalBytes})
	}
	return st
}

// procs maps each process to its parent.
type procs map[int]int

// procTable reads every process's parent from proc.
func procTable(proc string) procs {
	p := procs{}
	ents, _ := os.ReadDir(proc)
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := statFields(proc, pid); len(f) > 1 {
			p[pid], _ = strconv.Atoi(f[1])
		}
	}
	return p
}

// tree is pid and all its descendants (banger-vmm and its QEMU).
func (p procs) tree(pid int) []int {
	if pid <= 0 {
		return nil
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		for child, parent := range p {
			if parent == out[i] {
				out = append(out, child)
			}
		}
	}
	return out
}

// statFields is /proc/PID/stat after the command name: field 3 (state) is
// [0], ppid [1], utime [11], stime [12].
func statFields(proc string, pid int) []string {
	b, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "stat"))
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

// cpuTicks is the user and system time of pids, in clock ticks.
func cpuTicks(proc string, pids []int) int64 {
	var n int64
	for _, pid := range pids {
		if f := statFields(proc, pid); len(f) > 12 {
			u, _ := strconv.ParseInt(f[11], 10, 64)
			s, _ := strconv.ParseInt(f[12], 10, 64)
			n += u + s
		}
	}
	return n
}

// rssBytes is the resident memory (VmRSS) of pids.
func rssBytes(proc string, pids []int) int64 {
	var n int64
	for _, pid := range pids {
		b, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				if f := strings.Fields(rest); len(f) == 2 && f[1] == "kB" {
					kb, _ := strconv.ParseInt(f[0], 10, 64)
					n += kb * 1024
				}
			}
		}
	}
	return n
}

// netCounter is one counter of a network interface (0 when unknown).
func netCounter(iface, name string) int64 {
	if iface == "" || strings.ContainsAny(iface, "/.") {
		return 0
	}
	b, err := os.ReadFile(filepath.Join("/sys/class/net", iface, "statistics", name))
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}
