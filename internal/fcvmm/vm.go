package fcvmm

import (
	"os"
	"strings"
	"sync"

	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"
)

// machineCfg is Firecracker v1.14.1's MachineConfig, in its JSON order.
type machineCfg struct {
	VcpuCount       int64  `json:"vcpu_count"`
	MemSizeMib      int64  `json:"mem_size_mib"`
	Smt             bool   `json:"smt"`
	CPUTemplate     string `json:"cpu_template,omitempty"`
	TrackDirtyPages bool   `json:"track_dirty_pages"`
	HugePages       string `json:"huge_pages"`
}

var defaultMachine = machineCfg{VcpuCount: 1, MemSizeMib: 128, HugePages: "None"}

type bootCfg struct {
	kernelPath string
	initrdPath string
	bootArgs   *string
	kernel     *os.File
	initrd     *os.File
}

type driveCfg struct {
	id, path, partuuid  string
	cacheType, ioEngine string
	root, readOnly      bool
	rateLimiter         *models.RateLimiter
	rw, ro              *os.File // rw is nil for a read-only drive
	// format is how QEMU opens the file: raw, or qcow2 when the opened
	// file carries user.banger.format = qcow2 (see qcow2.go); backing are
	// then the formats of its backing chain, nearest first.
	format  string
	backing []string
}

func (d *driveCfg) close() {
	if d.rw != nil {
		d.rw.Close()
	}
	if d.ro != nil {
		d.ro.Close()
	}
}

type netCfg struct {
	id, hostDev, mac string
	macGiven         bool
	rx, tx           *models.RateLimiter
	tap              *os.File
}

// vmConfig is the microVM being configured: drives keep Firecracker's order
// (the root first, the others in PUT order), network interfaces PUT order.
type vmConfig struct {
	id        string
	machine   machineCfg
	boot      *bootCfg
	drives    []*driveCfg
	nets      []*netCfg
	entropy   bool
	serialOut string
	vsock     *vsockCfg
}

// vmm is one banger-vmm process's Firecracker API: the state machine the
// requests drive (what is configured, whether the microVM was started, is
// paused), one request at a time. QEMU itself, and how the process ends,
// are its supervisor's (supervisor.go): the handlers reach QEMU only
// through it.
type vmm struct {
	mu      sync.Mutex // held for each API request
	cfg     vmConfig
	log     *logger
	met     *metrics
	started bool
	paused  bool
	maxBody int64
	// bootPath: a boot-specific resource was configured, so PUT
	// /snapshot/load is refused (Firecracker's boot_path).
	bootPath bool
	// cmdline is the guest command line QEMU was launched with (recorded in
	// a snapshot: a restore must launch the same machine), kvm its
	// accelerator.
	cmdline string
	kvm     bool
	// fatal: the request failed in a way Firecracker does not recover from
	// (a failed snapshot load): answer, then exit.
	fatal bool

	// deprecation is the request's deprecation warning, if any: the response
	// then carries "Deprecation: true", as Firecracker's does.
	deprecation string

	sup *supervisor // the QEMU behind the microVM, and the process's end
}

func newVMM(id string, log *logger) *vmm {
	met := newMetrics()
	return &vmm{
		cfg:     vmConfig{id: id, machine: defaultMachine},
		log:     log,
		met:     met,
		maxBody: defaultMaxBody,
		sup:     newSupervisor(log, met),
	}
}

func (v *vmm) state() string {
	switch {
	case !v.started:
		return "Not started"
	case v.paused:
		return "Paused"
	}
	return "Running"
}

type instanceInfo struct {
	ID         string `json:"id"`
	State      string `json:"state"`
	VmmVersion string `json:"vmm_version"`
	AppName    string `json:"app_name"`
}

func (v *vmm) instanceInfo() instanceInfo {
	return instanceInfo{ID: v.cfg.id, State: v.state(), VmmVersion: firecrackerVers, AppName: "Firecracker"}
}

// fullConfig is GET /vm/config.
func (v *vmm) fullConfig() map[string]any {
	var boot any
	if b := v.cfg.boot; b != nil {
		m := map[string]any{"kernel_image_path": b.kernelPath, "initrd_path": nil}
		if b.initrdPath != "" {
			m["initrd_path"] = b.initrdPath
		}
		if b.bootArgs != nil {
			m["boot_args"] = *b.bootArgs
		}
		boot = m
	}
	drives := []any{}
	for _, d := range v.cfg.drives {
		m := map[string]any{
			"drive_id": d.id, "partuuid": nil, "is_root_device": d.root, "cache_type": d.cacheType,
			"is_read_only": d.readOnly, "path_on_host": d.path, "rate_limiter": d.rateLimiter, "io_engine": d.ioEngine, "socket": nil,
		}
		if d.partuuid != "" {
			m["partuuid"] = d.partuuid
		}
		drives = append(drives, m)
	}
	nets := []any{}
	for _, n := range v.cfg.nets {
		m := map[string]any{"iface_id": n.id, "host_dev_name": n.hostDev, "guest_mac": nil, "rx_rate_limiter": n.rx, "tx_rate_limiter": n.tx}
		if n.macGiven {
			m["guest_mac"] = n.mac
		}
		nets = append(nets, m)
	}
	var entropy any
	if v.cfg.entropy {
		entropy = map[string]any{"rate_limiter": nil}
	}
	var vsock any
	if vs := v.cfg.vsock; vs != nil {
		vsock = vsockJSON{GuestCid: vs.cid, UdsPath: vs.path}
	}
	return map[string]any{
		"balloon": nil, "drives": drives, "boot-source": boot, "cpu-config": nil, "logger": nil,
		"machine-config": v.cfg.machine, "metrics": nil, "mmds-config": nil,
		"network-interfaces": nets, "vsock": vsock, "entropy": entropy, "pmem": []any{},
	}
}

// bootArgsOf is a readable rendering of the configured boot args (for logs).
func bootArgsOf(b *bootCfg) string {
	if b == nil || b.bootArgs == nil {
		return "(default)"
	}
	return strings.TrimSpace(*b.bootArgs)
}
