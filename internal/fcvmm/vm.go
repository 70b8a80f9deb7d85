package fcvmm

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"
	"github.com/go-openapi/strfmt"
	"golang.org/x/sys/unix"
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

// vmm is one banger-vmm process: the API state and the QEMU it runs.
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

	poweredOff atomic.Bool  // the guest powered off: QEMU stopped, the VMM lives on
	guestReset atomic.Bool  // the guest rebooted: the VMM is ending with status 0
	lastReason atomic.Value // last SHUTDOWN reason QEMU reported
	procMu     sync.Mutex   // guards proc and stopping
	proc       *qemuProc    //
	stopping   bool         // a signal is ending the VMM
	apiLn      net.Listener // the API socket's listener (nil with --no-api)
	ttyRestore func()       // undoes raw mode on a terminal stdin
	stdoutFd   int          // where the console goes by default
	exit       func(int)    // os.Exit; tests replace it
}

func newVMM(id string, log *logger) *vmm {
	return &vmm{
		cfg:      vmConfig{id: id, machine: defaultMachine},
		log:      log,
		met:      newMetrics(),
		maxBody:  defaultMaxBody,
		stdoutFd: 1,
		exit:     os.Exit,
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

// ---- machine-config ----

// machineReq is the body of PUT and PATCH /machine-config: the SDK's model
// plus what Firecracker v1.14.1 added (huge_pages, more CPU templates).
type machineReq struct {
	VcpuCount       *int64  `json:"vcpu_count"`
	MemSizeMib      *int64  `json:"mem_size_mib"`
	Smt             *bool   `json:"smt"`
	CPUTemplate     *string `json:"cpu_template"`
	TrackDirtyPages *bool   `json:"track_dirty_pages"`
	HugePages       *string `json:"huge_pages"`
}

func (v *vmm) putMachineConfig(body []byte) (int, any, *apiError) {
	return v.machineConfig(body, false)
}

func (v *vmm) patchMachineConfig(body []byte) (int, any, *apiError) {
	return v.machineConfig(body, true)
}

func (v *vmm) machineConfig(body []byte, patch bool) (int, any, *apiError) {
	var req machineReq
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	if !patch {
		switch {
		case req.VcpuCount == nil:
			return 0, nil, deserializeError("missing field `vcpu_count`")
		case req.MemSizeMib == nil:
			return 0, nil, deserializeError("missing field `mem_size_mib`")
		}
	}
	if req.VcpuCount != nil && (*req.VcpuCount < 0 || *req.VcpuCount > 255) {
		return 0, nil, deserializeError(fmt.Sprintf("invalid value: integer `%d`, expected u8", *req.VcpuCount))
	}
	if req.MemSizeMib != nil && *req.MemSizeMib < 0 {
		return 0, nil, deserializeError(fmt.Sprintf("invalid value: integer `%d`, expected usize", *req.MemSizeMib))
	}
	if req.CPUTemplate != nil {
		switch *req.CPUTemplate {
		case "C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None":
		default:
			return 0, nil, deserializeError(fmt.Sprintf("unknown variant `%s`, expected one of `C3`, `T2`, `T2S`, `None`, `T2CL`, `T2A`, `V1N1`", *req.CPUTemplate))
		}
	}
	if req.HugePages != nil && *req.HugePages != "None" && *req.HugePages != "2M" {
		return 0, nil, deserializeError(fmt.Sprintf("unknown variant `%s`, expected `None` or `2M`", *req.HugePages))
	}
	v.bootPath = true // a snapshot can no longer be loaded (as in Firecracker)
	if v.started {
		return 0, nil, errPostBoot
	}
	m := v.cfg.machine
	if !patch {
		m = defaultMachine
	}
	if req.VcpuCount != nil {
		m.VcpuCount = *req.VcpuCount
	}
	if req.MemSizeMib != nil {
		m.MemSizeMib = *req.MemSizeMib
	}
	if req.Smt != nil {
		m.Smt = *req.Smt
	}
	if req.CPUTemplate != nil {
		m.CPUTemplate = *req.CPUTemplate
		if m.CPUTemplate == "None" {
			m.CPUTemplate = ""
		}
	}
	if req.TrackDirtyPages != nil {
		m.TrackDirtyPages = *req.TrackDirtyPages
	}
	if req.HugePages != nil {
		m.HugePages = *req.HugePages
	}
	if m.VcpuCount < 1 || m.VcpuCount > 32 || (m.Smt && m.VcpuCount > 1 && m.VcpuCount%2 == 1) {
		return 0, nil, badRequest("Machine config error: The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")
	}
	if m.MemSizeMib == 0 || (m.HugePages == "2M" && m.MemSizeMib%2 != 0) {
		return 0, nil, badRequest("Machine config error: The memory size (MiB) is invalid.")
	}
	// The SDK's schema, as a backstop (its CPU template enum predates
	// Firecracker v1.14's, so the template is checked above instead).
	sdk := models.MachineConfiguration{VcpuCount: &m.VcpuCount, MemSizeMib: &m.MemSizeMib, Smt: &m.Smt, TrackDirtyPages: m.TrackDirtyPages}
	if err := sdk.Validate(strfmt.Default); err != nil {
		return 0, nil, deserializeError(validationMessage(err))
	}
	v.cfg.machine = m
	return 0, nil, nil
}

// ---- boot-source ----

type bootReq struct {
	models.BootSource
}

func (v *vmm) putBootSource(body []byte) (int, any, *apiError) {
	var req bootReq
	raw, err := decodeBody(body, &req)
	if err != nil {
		return 0, nil, err.(*apiError)
	}
	if aerr := validateModel(&req.BootSource); aerr != nil {
		return 0, nil, aerr
	}
	v.bootPath = true // a snapshot can no longer be loaded (as in Firecracker)
	if v.started {
		return 0, nil, errPostBoot
	}
	b := &bootCfg{kernelPath: *req.KernelImagePath, initrdPath: req.InitrdPath}
	if _, ok := raw["boot_args"]; ok && string(raw["boot_args"]) != "null" {
		s := req.BootArgs
		b.bootArgs = &s
	}
	kf, oerr := os.Open(b.kernelPath)
	if oerr != nil {
		return 0, nil, badRequest("Boot source error: The kernel file cannot be opened: %s", rustIOError(oerr))
	}
	b.kernel = kf
	if b.initrdPath != "" {
		f, oerr := os.Open(b.initrdPath)
		if oerr != nil {
			kf.Close()
			return 0, nil, badRequest("Boot source error: The initrd file cannot be opened due to invalid path or invalid permissions. %s", rustIOError(oerr))
		}
		b.initrd = f
	}
	args := defaultBootArgs
	if b.bootArgs != nil {
		args = *b.bootArgs
	}
	if cerr := checkCmdline(args); cerr != nil {
		b.close()
		return 0, nil, badRequest("Boot source error: The kernel command line is invalid: %s", cerr.Error())
	}
	if v.cfg.boot != nil {
		v.cfg.boot.close()
	}
	v.cfg.boot = b
	return 0, nil, nil
}

func (b *bootCfg) close() {
	if b.kernel != nil {
		b.kernel.Close()
	}
	if b.initrd != nil {
		b.initrd.Close()
	}
}

// validateModel runs a model's swagger validation; optional names fields
// Firecracker v1.14.1 no longer requires although the SDK's v1.0.0 schema
// does.
func validateModel(m validatable, optional ...string) *apiError {
	err := m.Validate(strfmt.Default)
	if err == nil {
		return nil
	}
	msg := validationMessage(err)
	for _, o := range optional {
		if msg == "missing field `"+o+"`" {
			return nil
		}
	}
	return deserializeError(msg)
}

// ---- drives ----

// driveReq is the SDK's Drive model plus v1.14.1's vhost-user "socket".
type driveReq struct {
	models.Drive
	Socket *string `json:"socket"`
}

func (v *vmm) putDrive(body []byte, pathID *string) (int, any, *apiError) {
	id, aerr := checkedID(pathID)
	if aerr != nil {
		return 0, nil, aerr
	}
	var req driveReq
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	// Firecracker v1.14 requires only drive_id and is_root_device.
	if req.DriveID == nil {
		return 0, nil, deserializeError("missing field `drive_id`")
	}
	if req.IsRootDevice == nil {
		return 0, nil, deserializeError("missing field `is_root_device`")
	}
	if req.IsReadOnly == nil {
		f := false
		req.IsReadOnly = &f
	}
	if req.PathOnHost == nil && req.Socket == nil {
		return 0, nil, deserializeError("missing field `path_on_host`")
	}
	if e := validateModel(&req.Drive, "path_on_host"); e != nil {
		return 0, nil, e
	}
	if id != *req.DriveID {
		return 0, nil, errIDMismatch
	}
	v.bootPath = true // a snapshot can no longer be loaded (as in Firecracker)
	if v.started {
		return 0, nil, errPostBoot
	}
	if req.Socket != nil {
		return 0, nil, notSupported("a vhost-user block device")
	}
	d := &driveCfg{
		id: id, path: *req.PathOnHost, partuuid: req.Partuuid, root: *req.IsRootDevice, readOnly: *req.IsReadOnly,
		cacheType: "Unsafe", ioEngine: "Sync", rateLimiter: req.RateLimiter,
	}
	if req.CacheType != nil {
		d.cacheType = *req.CacheType
	}
	if req.IoEngine != nil {
		d.ioEngine = *req.IoEngine
	}
	pos := -1
	for i, o := range v.cfg.drives {
		if o.id == id {
			pos = i
		}
	}
	hasRoot := len(v.cfg.drives) > 0 && v.cfg.drives[0].root
	if d.root && hasRoot && pos != 0 {
		return 0, nil, badRequest("Drive config error: A root block device already exists!")
	}
	if err := d.open(); err != nil {
		return 0, nil, badRequest("Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: %s %s", rustIOError(err), d.path)
	}
	switch {
	case pos < 0 && d.root:
		v.cfg.drives = append([]*driveCfg{d}, v.cfg.drives...)
	case pos < 0:
		v.cfg.drives = append(v.cfg.drives, d)
	default:
		v.cfg.drives[pos].close()
		v.cfg.drives[pos] = d
		if pos != 0 && d.root {
			v.cfg.drives[0], v.cfg.drives[pos] = v.cfg.drives[pos], v.cfg.drives[0]
		}
	}
	return 0, nil, nil
}

// open opens the backing file the way Firecracker does (read-only when the
// drive is), plus the read-only descriptor QEMU probes a writable image
// with, and decides the format from the opened file's user.banger.format
// attribute (never from its content). A relative path is resolved against
// the VMM's working directory, as in Firecracker, and kept as given. This is
// the only place a drive file is opened: PUT /drives, --config-file and PUT
// /snapshot/load all come here.
func (d *driveCfg) open() error {
	if !d.readOnly {
		f, err := os.OpenFile(d.path, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		d.rw = f
	}
	f, err := os.Open(d.path)
	if err != nil {
		d.close()
		return err
	}
	d.ro = f
	if err := d.checkFormat(); err != nil {
		d.close()
		return err
	}
	return nil
}

// checkFormat reads the format attribute on the opened file and, for a
// qcow2 image, follows its backing chain (see qcow2Chain).
func (d *driveCfg) checkFormat() error {
	if d.rw != nil && !sameFile(d.rw, d.ro) {
		// Both descriptors go to QEMU as one drive: they must be one file.
		return errors.New("the file was replaced while it was being opened")
	}
	format, err := driveFormat(d.ro)
	if err != nil {
		return err
	}
	d.format, d.backing = format, nil
	if format == formatQcow2 {
		if d.backing, err = qcow2Chain(d.ro); err != nil {
			return err
		}
	}
	return nil
}

// sameFile reports whether two descriptors are the same inode.
func sameFile(a, b *os.File) bool {
	var sa, sb unix.Stat_t
	if unix.Fstat(int(a.Fd()), &sa) != nil || unix.Fstat(int(b.Fd()), &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

func (v *vmm) patchDrive(body []byte, pathID *string) (int, any, *apiError) {
	id, aerr := checkedID(pathID)
	if aerr != nil {
		return 0, nil, aerr
	}
	var req models.PartialDrive
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	if e := validateModel(&req); e != nil {
		return 0, nil, e
	}
	if id != *req.DriveID {
		return 0, nil, errIDMismatch
	}
	if !v.started {
		return 0, nil, errPreBoot
	}
	var d *driveCfg
	for _, o := range v.cfg.drives {
		if o.id == id {
			d = o
		}
	}
	if d == nil {
		return 0, nil, badRequest("Drive config error: Unable to patch the block device: Invalid block device ID! Please verify the request arguments.")
	}
	if req.PathOnHost != "" && req.PathOnHost != d.path {
		return 0, nil, notSupported("changing a drive's backing file after boot")
	}
	d.rateLimiter = req.RateLimiter // accepted; banger-vmm does not rate-limit
	return 0, nil, nil
}

// ---- network interfaces ----

func (v *vmm) putNetwork(body []byte, pathID *string) (int, any, *apiError) {
	id, aerr := checkedID(pathID)
	if aerr != nil {
		return 0, nil, aerr
	}
	var req models.NetworkInterface
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	if e := validateModel(&req); e != nil {
		return 0, nil, e
	}
	mac := ""
	if req.GuestMac != "" {
		hw, err := net.ParseMAC(req.GuestMac)
		if err != nil || len(hw) != 6 {
			return 0, nil, deserializeError(fmt.Sprintf("Invalid MAC address: %s", req.GuestMac))
		}
		mac = hw.String()
	}
	if id != *req.IfaceID {
		return 0, nil, errIDMismatch
	}
	v.bootPath = true // a snapshot can no longer be loaded (as in Firecracker)
	if v.started {
		return 0, nil, errPostBoot
	}
	// An update replaces the old interface: release its tap first.
	pos := -1
	for i, n := range v.cfg.nets {
		if n.id == id {
			pos = i
			n.tap.Close()
		}
	}
	for _, n := range v.cfg.nets {
		if n.id != id && mac != "" && n.macGiven && n.mac == mac {
			v.dropNet(pos)
			return 0, nil, badRequest("Network config error: The MAC address is already in use: %s", mac)
		}
		if n.id != id && n.hostDev == *req.HostDevName {
			v.dropNet(pos)
			return 0, nil, badRequest("Network config error: The host device name is already in use: %s", n.hostDev)
		}
	}
	tap, err := openTap(*req.HostDevName)
	if err != nil {
		v.dropNet(pos)
		return 0, nil, badRequest("Network config error: Could not create the network device: %s", err.Error())
	}
	n := &netCfg{id: id, hostDev: *req.HostDevName, mac: mac, macGiven: mac != "", rx: req.RxRateLimiter, tx: req.TxRateLimiter, tap: tap}
	if !n.macGiven {
		n.mac = randomMAC()
	}
	if pos >= 0 {
		v.cfg.nets[pos] = n
	} else {
		v.cfg.nets = append(v.cfg.nets, n)
	}
	return 0, nil, nil
}

// dropNet forgets the interface at pos (whose tap is already closed) after a
// failed update, as Firecracker does.
func (v *vmm) dropNet(pos int) {
	if pos >= 0 {
		v.cfg.nets = append(v.cfg.nets[:pos], v.cfg.nets[pos+1:]...)
	}
}

// randomMAC stands in for Firecracker not advertising a MAC at all (the guest
// driver then picks a random one): a random locally administered unicast
// address.
func randomMAC() string {
	var b [6]byte
	rand.Read(b[:])
	b[0] = b[0]&^1 | 2
	return net.HardwareAddr(b[:]).String()
}

func (v *vmm) patchNetwork(body []byte, pathID *string) (int, any, *apiError) {
	id, aerr := checkedID(pathID)
	if aerr != nil {
		return 0, nil, aerr
	}
	var req models.PartialNetworkInterface
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	if e := validateModel(&req); e != nil {
		return 0, nil, e
	}
	if id != *req.IfaceID {
		return 0, nil, errIDMismatch
	}
	if !v.started {
		return 0, nil, errPreBoot
	}
	for _, n := range v.cfg.nets {
		if n.id == id {
			n.rx, n.tx = req.RxRateLimiter, req.TxRateLimiter // accepted; not enforced
			return 0, nil, nil
		}
	}
	return 0, nil, badRequest("Network config error: Invalid interface ID - not found.")
}

// ---- logger, metrics, entropy, serial ----

type loggerReq struct {
	models.Logger
	Module *string `json:"module"`
}

func (v *vmm) putLogger(body []byte) (int, any, *apiError) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err == nil {
		// Firecracker's level is case-insensitive; the SDK's enum is not.
		if l, ok := raw["level"]; ok {
			var s string
			if json.Unmarshal(l, &s) == nil {
				if _, err := parseLevel(s); err != nil {
					return 0, nil, deserializeError(err.Error())
				}
			}
		}
	}
	var req loggerReq
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	var lv *level
	if req.Level != nil {
		l, _ := parseLevel(*req.Level)
		lv = &l
		req.Level = nil
	}
	if e := validateModel(&req.Logger, "log_path"); e != nil {
		return 0, nil, e
	}
	if v.started {
		return 0, nil, errPostBoot
	}
	if err := v.log.configure(req.LogPath, lv, req.ShowLevel, req.ShowLogOrigin); err != nil {
		return 0, nil, badRequest("Logger error: %s", err.Error())
	}
	v.log.info("fc_api", "Running Firecracker v%s", firecrackerVers)
	return 0, nil, nil
}

func (v *vmm) putMetrics(body []byte) (int, any, *apiError) {
	var req models.Metrics
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	if e := validateModel(&req); e != nil {
		return 0, nil, e
	}
	if v.started {
		return 0, nil, errPostBoot
	}
	if err := v.met.configure(*req.MetricsPath); err != nil {
		return 0, nil, badRequest("Metrics error: %s", err.Error())
	}
	return 0, nil, nil
}

type entropyReq struct {
	RateLimiter *models.RateLimiter `json:"rate_limiter"`
}

func (v *vmm) putEntropy(body []byte) (int, any, *apiError) {
	var req entropyReq
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	if req.RateLimiter != nil {
		if e := validateModel(req.RateLimiter); e != nil {
			return 0, nil, e
		}
	}
	v.bootPath = true // a snapshot can no longer be loaded (as in Firecracker)
	if v.started {
		return 0, nil, errPostBoot
	}
	v.cfg.entropy = true // the virtio-rng device is always there
	return 0, nil, nil
}

type serialReq struct {
	SerialOutPath *string `json:"serial_out_path"`
}

func (v *vmm) putSerial(body []byte) (int, any, *apiError) {
	var req serialReq
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	if v.started {
		return 0, nil, errPostBoot
	}
	v.cfg.serialOut = ""
	if req.SerialOutPath != nil {
		v.cfg.serialOut = *req.SerialOutPath
	}
	return 0, nil, nil
}

// ---- actions and vm state ----

func (v *vmm) putActions(body []byte) (int, any, *apiError) {
	var req models.InstanceActionInfo
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	if e := validateModel(&req); e != nil {
		return 0, nil, e
	}
	switch *req.ActionType {
	case models.InstanceActionInfoActionTypeInstanceStart:
		if v.started {
			return 0, nil, errPostBoot
		}
		if e := v.startMicroVM(nil); e != nil {
			return 0, nil, e
		}
	case models.InstanceActionInfoActionTypeFlushMetrics:
		if !v.started {
			return 0, nil, errPreBoot
		}
		v.met.flush(v.log.missed.Load())
	case models.InstanceActionInfoActionTypeSendCtrlAltDel:
		if !v.started {
			return 0, nil, errPreBoot
		}
		v.sendCtrlAltDel()
	}
	return 0, nil, nil
}

func (v *vmm) patchVM(body []byte) (int, any, *apiError) {
	var req models.VM
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	if e := validateModel(&req); e != nil {
		return 0, nil, e
	}
	if !v.started {
		return 0, nil, errPreBoot
	}
	pause := *req.State == models.VMStatePaused
	if pause == v.paused {
		return 0, nil, nil // idempotent, as in Firecracker
	}
	q := v.currentProc()
	if q == nil {
		return 0, nil, badRequest("Internal VMM error: the microVM is not running")
	}
	cmd, verb := "cont", "resume"
	if pause {
		cmd, verb = "stop", "pause"
	}
	if !(cmd == "cont" && v.poweredOff.Load()) { // a powered-off guest stays stopped
		if _, err := q.qmp.execute(cmd, nil, qmpTimeout); err != nil {
			return 0, nil, badRequest("Internal VMM error: failed to %s the microVM: %v", verb, err)
		}
	}
	v.paused = pause
	return 0, nil, nil
}

func (v *vmm) currentProc() *qemuProc {
	v.procMu.Lock()
	defer v.procMu.Unlock()
	return v.proc
}

// consoleFd returns where ttyS0 goes: stdout, or the PUT /serial file.
func (v *vmm) consoleFd() (int, error) {
	if v.cfg.serialOut == "" {
		return v.stdoutFd, nil
	}
	return unix.Open(v.cfg.serialOut, unix.O_WRONLY|unix.O_CREAT|unix.O_APPEND|unix.O_NONBLOCK|unix.O_CLOEXEC, 0o644)
}

// bootArgsOf is a readable rendering of the configured boot args (for logs).
func bootArgsOf(b *bootCfg) string {
	if b == nil || b.bootArgs == nil {
		return "(default)"
	}
	return strings.TrimSpace(*b.bootArgs)
}
