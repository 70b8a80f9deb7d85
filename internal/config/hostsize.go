package config

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// hostSize reports the host's CPUs (those this process may run on) and its
// memory in MiB (0 when /proc/meminfo cannot be read). Tests replace it.
var hostSize = func() (cpus, memMiB int) {
	return runtime.NumCPU(), memTotalMiB("/proc/meminfo")
}

func memTotalMiB(path string) int {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "MemTotal:" && f[2] == "kB" {
			kb, err := strconv.Atoi(f[1])
			if err != nil {
				return 0
			}
			return kb / 1024
		}
	}
	return 0
}

// hostVCPU is a new VM's vCPUs on a host of cpus: half of them, at least 2
// and at most 8, never more than the host has.
func hostVCPU(cpus int) int {
	return min(max(cpus/2, 2), 8, max(cpus, 1))
}

// hostMemoryMiB is a new VM's memory on a host of memMiB: an eighth of it,
// at least 1 GiB and at most 8 GiB, never more than half the host, rounded
// down to 256 MiB (the guest takes host memory only as it touches it).
func hostMemoryMiB(memMiB int) int {
	m := min(max(memMiB/8, 1024), 8192, memMiB/2)
	return max(m/256*256, 128)
}

// sizeVMDefaults sets vm_defaults.vcpu and memory_mib from the host's size
// when the file sets neither, and returns the source each is shown with.
func sizeVMDefaults(cfg *Config, present map[string]bool) map[string]string {
	src := map[string]string{}
	cpus, mem := hostSize()
	if !present["vm_defaults.vcpu"] && cpus > 0 {
		cfg.VMDefaults.VCPU = hostVCPU(cpus)
		src["vm_defaults.vcpu"] = fmt.Sprintf("host (%d CPUs)", cpus)
	}
	if !present["vm_defaults.memory_mib"] && mem > 0 {
		cfg.VMDefaults.MemoryMiB = hostMemoryMiB(mem)
		src["vm_defaults.memory_mib"] = fmt.Sprintf("host (%d MiB)", mem)
	}
	return src
}

// HostMemoryMiB is the host's memory in MiB, from /proc/meminfo.
func HostMemoryMiB() (int, error) {
	if mib := memTotalMiB("/proc/meminfo"); mib > 0 {
		return mib, nil
	}
	return 0, fmt.Errorf("cannot read MemTotal from /proc/meminfo")
}
