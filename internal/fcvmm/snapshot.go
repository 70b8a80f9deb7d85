package fcvmm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Snapshots, as Firecracker's API has them (PUT /snapshot/create while
// paused, PUT /snapshot/load on a fresh VMM), made with QEMU's own
// migration: the memory file is QEMU's migration stream of the stopped
// machine (RAM and device state; zero pages are skipped), written through a
// descriptor passed over QMP; the snapshot file is banger-vmm's record of
// the machine (memory, vCPUs, boot source, drives, interfaces, vsock,
// entropy, the exact guest command line, the accelerator, the QEMU version
// and the machine layout). A load launches the same machine paused and
// waiting (-S -incoming defer), checks that it is the same QEMU, streams the
// memory file into it and resumes it if asked. docs/vmm.md lists the rules.

// Snapshot file identity. snapshotLayout changes whenever planLaunch's
// machine changes (devices, their order or options): QEMU refuses (or
// worse, misreads) a migration stream made by a different machine, so a
// snapshot of another layout is refused before QEMU sees it.
const (
	snapshotMagic  = "banger-vmm snapshot"
	snapshotFormat = 1
	snapshotLayout = 1
	// maxSnapshotFile caps the record read at load.
	maxSnapshotFile = 1 << 20
	// migrateTimeout bounds writing or reading a memory file.
	migrateTimeout = 10 * time.Minute
	snapshotFDName = "bangersnap"
)

// snapshotRecord is the snapshot file.
type snapshotRecord struct {
	Magic     string      `json:"magic"`
	Format    int         `json:"format"`
	Layout    int         `json:"layout"`
	QEMU      string      `json:"qemu_version"`
	Accel     string      `json:"accel"`
	Machine   machineCfg  `json:"machine"`
	Kernel    string      `json:"kernel_image_path"`
	Initrd    string      `json:"initrd_path,omitempty"`
	BootArgs  *string     `json:"boot_args,omitempty"`
	Cmdline   string      `json:"cmdline"`
	Drives    []snapDrive `json:"drives"`
	Nets      []snapNet   `json:"network_interfaces"`
	Vsock     *vsockJSON  `json:"vsock,omitempty"`
	AgentOpen bool        `json:"agent_port_open,omitempty"`
	Entropy   bool        `json:"entropy,omitempty"`
	MemBytes  int64       `json:"mem_file_bytes"`
	Created   time.Time   `json:"created"`
}

type snapDrive struct {
	ID        string `json:"drive_id"`
	Path      string `json:"path_on_host"`
	Root      bool   `json:"is_root_device"`
	ReadOnly  bool   `json:"is_read_only"`
	Partuuid  string `json:"partuuid,omitempty"`
	CacheType string `json:"cache_type"`
	IoEngine  string `json:"io_engine"`
}

type snapNet struct {
	ID      string `json:"iface_id"`
	HostDev string `json:"host_dev_name"`
	MAC     string `json:"guest_mac"`
}

// restoreSpec is what startMicroVM needs to load a snapshot.
type restoreSpec struct {
	rec       *snapshotRecord
	cmdline   string
	kvm       bool
	mem       *os.File
	resume    bool
	agentOpen bool
}

func (r *restoreSpec) accelMismatch(kvm bool) string {
	have := "tcg"
	if kvm {
		have = "kvm"
	}
	return fmt.Sprintf("Failed to restore from snapshot: the snapshot was made under %s and this VMM runs %s; a snapshot cannot move between accelerators: boot the VM cold", r.rec.Accel, have)
}

func createError(format string, a ...any) *apiError {
	return badRequest("Create snapshot error: "+format, a...)
}

func loadError(format string, a ...any) *apiError {
	return badRequest("Load snapshot error: "+format, a...)
}

// ---- PUT /snapshot/create ----

type snapshotCreateReq struct {
	SnapshotPath *string `json:"snapshot_path"`
	MemFilePath  *string `json:"mem_file_path"`
	SnapshotType *string `json:"snapshot_type"`
}

func (v *vmm) putSnapshotCreate(body []byte) (int, any, *apiError) {
	var req snapshotCreateReq
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	switch {
	case req.SnapshotPath == nil:
		return 0, nil, deserializeError("missing field `snapshot_path`")
	case req.MemFilePath == nil:
		return 0, nil, deserializeError("missing field `mem_file_path`")
	}
	kind := "Full"
	if req.SnapshotType != nil {
		kind = *req.SnapshotType
	}
	if kind != "Full" && kind != "Diff" {
		return 0, nil, deserializeError(fmt.Sprintf("unknown variant `%s`, expected `Full` or `Diff`", kind))
	}
	if !v.started {
		return 0, nil, errPreBoot
	}
	if kind == "Diff" {
		return 0, nil, notSupported("a Diff snapshot")
	}
	if !v.paused {
		return 0, nil, createError("Cannot save the microVM state: Operation not allowed: save/restore unavailable while running")
	}
	q := v.sup.currentProc()
	if q == nil || v.sup.poweredOff.Load() {
		return 0, nil, createError("Cannot save the microVM state: the guest is not running")
	}
	rec, err := v.record(q)
	if err != nil {
		return 0, nil, createError("Cannot save the microVM state: %v", err)
	}
	snap, err := os.OpenFile(*req.SnapshotPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return 0, nil, createError("Cannot perform open on the snapshot backing file: %s", rustIOError(err))
	}
	defer snap.Close()
	mem, err := os.OpenFile(*req.MemFilePath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return 0, nil, createError("Cannot perform open on the memory backing file: %s", rustIOError(err))
	}
	defer mem.Close()
	// Firecracker's snapshot creation ends open vsock connections (not
	// the listener).
	if q.vsock != nil {
		q.vsock.dropCurrent()
	}
	start := time.Now()
	if err := migrate(q.qmp, "migrate", mem); err != nil {
		return 0, nil, createError("Cannot write memory file: %v", err)
	}
	if err := mem.Sync(); err != nil {
		return 0, nil, createError("Cannot perform sync_all on the memory backing file: %s", rustIOError(err))
	}
	st, err := mem.Stat()
	if err != nil {
		return 0, nil, createError("Cannot perform stat on the memory backing file: %s", rustIOError(err))
	}
	rec.MemBytes = st.Size()
	b, _ := json.MarshalIndent(rec, "", "  ")
	if _, err := snap.Write(append(b, '\n')); err != nil {
		return 0, nil, createError("Cannot perform write on the snapshot backing file: %s", rustIOError(err))
	}
	if err := snap.Sync(); err != nil {
		return 0, nil, createError("Cannot perform sync_all on the snapshot backing file: %s", rustIOError(err))
	}
	v.log.info("fc_vmm", "Snapshot created: %s (memory %s, %d MiB) in %v", *req.SnapshotPath, *req.MemFilePath, rec.MemBytes>>20, time.Since(start).Round(time.Millisecond))
	return 0, nil, nil
}

// record describes the running machine for a snapshot.
func (v *vmm) record(q *qemuProc) (*snapshotRecord, error) {
	ver, err := qemuVersion(q.qmp)
	if err != nil {
		return nil, err
	}
	accel := "tcg"
	if v.kvm {
		accel = "kvm"
	}
	b := v.cfg.boot
	rec := &snapshotRecord{
		Magic: snapshotMagic, Format: snapshotFormat, Layout: snapshotLayout, QEMU: ver, Accel: accel,
		Machine: v.cfg.machine, Kernel: b.kernelPath, Initrd: b.initrdPath, BootArgs: b.bootArgs, Cmdline: v.cmdline,
		Entropy: v.cfg.entropy, Created: time.Now().UTC(),
	}
	for _, d := range v.cfg.drives {
		rec.Drives = append(rec.Drives, snapDrive{ID: d.id, Path: d.path, Root: d.root, ReadOnly: d.readOnly, Partuuid: d.partuuid, CacheType: d.cacheType, IoEngine: d.ioEngine})
	}
	for _, n := range v.cfg.nets {
		rec.Nets = append(rec.Nets, snapNet{ID: n.id, HostDev: n.hostDev, MAC: n.mac})
	}
	if vs := v.cfg.vsock; vs != nil {
		rec.Vsock = &vsockJSON{GuestCid: vs.cid, UdsPath: vs.path}
		rec.AgentOpen = q.vsock != nil && q.vsock.isGuestOpen()
	}
	return rec, nil
}

// qemuVersion is QEMU's own version string ("7.2.0 (Debian 1:7.2+dfsg-7+deb12u7)").
func qemuVersion(q *qmp) (string, error) {
	raw, err := q.execute("query-version", nil, qmpTimeout)
	if err != nil {
		return "", err
	}
	var v struct {
		QEMU struct {
			Major, Minor, Micro int
		} `json:"qemu"`
		Package string `json:"package"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", fmt.Errorf("query-version: %w", err)
	}
	return strings.TrimSpace(fmt.Sprintf("%d.%d.%d %s", v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro, v.Package)), nil
}

// migrate passes f to QEMU and runs cmd ("migrate" to write the machine's
// state into f, "migrate-incoming" to read it), waiting until it completes.
func migrate(q *qmp, cmd string, f *os.File) error {
	if _, err := q.executeFD("getfd", map[string]string{"fdname": snapshotFDName}, f, qmpTimeout); err != nil {
		return err
	}
	if _, err := q.execute(cmd, map[string]string{"uri": "fd:" + snapshotFDName}, qmpTimeout); err != nil {
		return err
	}
	deadline := time.Now().Add(migrateTimeout)
	for {
		raw, err := q.execute("query-migrate", nil, qmpTimeout)
		if err != nil {
			return err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		json.Unmarshal(raw, &st)
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			if st.ErrorDesc == "" {
				st.ErrorDesc = "QEMU's migration " + st.Status
			}
			return errors.New(st.ErrorDesc)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the migration did not complete within %v (status %q)", migrateTimeout, st.Status)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ---- PUT /snapshot/load ----

type memBackendReq struct {
	BackendPath *string `json:"backend_path"`
	BackendType *string `json:"backend_type"`
}

type netOverrideReq struct {
	IfaceID     *string `json:"iface_id"`
	HostDevName *string `json:"host_dev_name"`
}

type snapshotLoadReq struct {
	SnapshotPath        *string          `json:"snapshot_path"`
	MemFilePath         *string          `json:"mem_file_path"`
	MemBackend          *memBackendReq   `json:"mem_backend"`
	EnableDiffSnapshots bool             `json:"enable_diff_snapshots"`
	TrackDirtyPages     bool             `json:"track_dirty_pages"`
	ResumeVM            bool             `json:"resume_vm"`
	NetworkOverrides    []netOverrideReq `json:"network_overrides"`
}

func (v *vmm) putSnapshotLoad(body []byte) (int, any, *apiError) {
	var req snapshotLoadReq
	if _, err := decodeBody(body, &req); err != nil {
		return 0, nil, err.(*apiError)
	}
	if req.SnapshotPath == nil {
		return 0, nil, deserializeError("missing field `snapshot_path`")
	}
	switch {
	case req.MemBackend != nil && req.MemFilePath != nil:
		return 0, nil, deserializeError("too many fields: either `mem_backend` or `mem_file_path` exclusively is required")
	case req.MemBackend == nil && req.MemFilePath == nil:
		return 0, nil, deserializeError("missing field: either `mem_backend` or `mem_file_path` is required")
	}
	memPath := ""
	if req.MemBackend != nil {
		switch {
		case req.MemBackend.BackendPath == nil:
			return 0, nil, deserializeError("missing field `backend_path`")
		case req.MemBackend.BackendType == nil:
			return 0, nil, deserializeError("missing field `backend_type`")
		case *req.MemBackend.BackendType != "File" && *req.MemBackend.BackendType != "Uffd":
			return 0, nil, deserializeError(fmt.Sprintf("unknown variant `%s`, expected `File` or `Uffd`", *req.MemBackend.BackendType))
		}
		memPath = *req.MemBackend.BackendPath
	} else {
		memPath = *req.MemFilePath
	}
	for _, o := range req.NetworkOverrides {
		if o.IfaceID == nil {
			return 0, nil, deserializeError("missing field `iface_id`")
		}
		if o.HostDevName == nil {
			return 0, nil, deserializeError("missing field `host_dev_name`")
		}
	}
	if req.MemFilePath != nil || req.EnableDiffSnapshots {
		v.deprecation = "PUT /snapshot/load: mem_file_path and enable_diff_snapshots fields are deprecated."
	}
	if v.started {
		return 0, nil, errPostBoot
	}
	if v.bootPath {
		return 0, nil, loadError("Loading a microVM snapshot not allowed after configuring boot-specific resources.")
	}
	if req.MemBackend != nil && *req.MemBackend.BackendType == "Uffd" {
		return 0, nil, notSupported("a Uffd memory backend")
	}
	// From here on a failure leaves the process unusable, as Firecracker's
	// does: answer, then exit.
	v.bootPath = true
	e := v.loadSnapshot(*req.SnapshotPath, memPath, req.ResumeVM, req.NetworkOverrides)
	if e != nil {
		v.fatal = true
		v.releaseConfig()
		return 0, nil, e
	}
	return 0, nil, nil
}

func (v *vmm) loadSnapshot(snapPath, memPath string, resume bool, overrides []netOverrideReq) *apiError {
	const restore = "Failed to restore from snapshot: "
	const fromFile = restore + "Failed to get snapshot state from file: "
	rec, err := readSnapshot(snapPath)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return loadError(fromFile+"Failed to open snapshot file: %s", rustIOError(err))
		}
		return loadError(fromFile+"Failed to load snapshot state from file: %v", err)
	}
	for _, o := range overrides {
		found := false
		for i := range rec.Nets {
			if rec.Nets[i].ID == *o.IfaceID {
				rec.Nets[i].HostDev = *o.HostDevName
				found = true
			}
		}
		if !found {
			return loadError(fromFile + "Unknown Network Device.")
		}
	}
	mem, err := os.Open(memPath)
	if err != nil {
		return loadError(restore+"Failed to load guest memory: Error creating guest memory from file: Failed to load guest memory: %s", rustIOError(err))
	}
	defer mem.Close()
	if st, err := mem.Stat(); err != nil || st.Size() != rec.MemBytes {
		size := int64(-1)
		if err == nil {
			size = st.Size()
		}
		return loadError(restore+"Failed to load guest memory: the memory file %s is %d bytes where the snapshot recorded %d (truncated, or another snapshot's)", memPath, size, rec.MemBytes)
	}
	if e := v.configureFrom(rec); e != nil {
		return e
	}
	return v.startMicroVM(&restoreSpec{rec: rec, cmdline: rec.Cmdline, kvm: rec.Accel == "kvm", mem: mem, resume: resume, agentOpen: rec.AgentOpen})
}

// snapshotVersion is how --snapshot-version and --describe-snapshot print
// a format and machine layout (Firecracker prints its data version, "v8.0.0").
func snapshotVersion(format, layout int) string { return fmt.Sprintf("v%d.%d.0", format, layout) }

// readSnapshotHeader reads a snapshot file that is banger-vmm's, of any
// format or layout (--describe-snapshot).
func readSnapshotHeader(path string) (*snapshotRecord, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSnapshotFile+1))
	if err != nil {
		return nil, fmt.Errorf("IO Error: %s", rustIOError(err))
	}
	if len(b) > maxSnapshotFile {
		return nil, fmt.Errorf("the file is larger than %d bytes: not a banger-vmm snapshot", maxSnapshotFile)
	}
	var rec snapshotRecord
	if err := json.Unmarshal(b, &rec); err != nil || rec.Magic != snapshotMagic {
		return nil, errors.New("not a banger-vmm snapshot file (a Firecracker snapshot, truncated, or another file); boot the VM cold")
	}
	return &rec, nil
}

// readSnapshot reads and checks a snapshot file: banger-vmm's, of this
// format and machine layout.
func readSnapshot(path string) (*snapshotRecord, error) {
	rec, err := readSnapshotHeader(path)
	if err != nil {
		return nil, err
	}
	if rec.Format != snapshotFormat || rec.Layout != snapshotLayout {
		return nil, fmt.Errorf("Invalid data version: this snapshot is %s (format %d, machine layout %d); this banger-vmm reads %s: boot the VM cold", snapshotVersion(rec.Format, rec.Layout), rec.Format, rec.Layout, snapshotVersion(snapshotFormat, snapshotLayout))
	}
	if rec.Kernel == "" || rec.Cmdline == "" || rec.Machine.MemSizeMib < 1 || rec.Machine.VcpuCount < 1 || rec.MemBytes <= 0 {
		return nil, errors.New("the snapshot record is incomplete (no kernel, command line, memory or vCPUs)")
	}
	return rec, nil
}

// configureFrom opens what the snapshot's machine uses, as the PUT
// requests that configured it did.
func (v *vmm) configureFrom(rec *snapshotRecord) *apiError {
	const restore = "Failed to restore from snapshot: Failed to build microVM from snapshot: "
	v.cfg.machine = rec.Machine
	b := &bootCfg{kernelPath: rec.Kernel, initrdPath: rec.Initrd, bootArgs: rec.BootArgs}
	var err error
	if b.kernel, err = os.Open(b.kernelPath); err != nil {
		return loadError(restore+"the kernel file cannot be opened: %s", rustIOError(err))
	}
	v.cfg.boot = b
	if b.initrdPath != "" {
		if b.initrd, err = os.Open(b.initrdPath); err != nil {
			return loadError(restore+"the initrd file cannot be opened: %s", rustIOError(err))
		}
	}
	for _, sd := range rec.Drives {
		d := &driveCfg{id: sd.ID, path: sd.Path, partuuid: sd.Partuuid, root: sd.Root, readOnly: sd.ReadOnly, cacheType: sd.CacheType, ioEngine: sd.IoEngine}
		if err := d.open(); err != nil {
			return loadError(restore+"Block device error: %s %s", rustIOError(err), d.path)
		}
		v.cfg.drives = append(v.cfg.drives, d)
	}
	for _, sn := range rec.Nets {
		tap, err := openTap(sn.HostDev)
		if err != nil {
			return loadError(restore+"Net device error: Could not create the network device: %s", err.Error())
		}
		v.cfg.nets = append(v.cfg.nets, &netCfg{id: sn.ID, hostDev: sn.HostDev, mac: sn.MAC, macGiven: true, tap: tap})
	}
	if vs := rec.Vsock; vs != nil {
		ln, err := listenVsock(vs.UdsPath)
		if err != nil {
			return loadError(restore+"Vsock device error: %s", vsockBindError(err).msg)
		}
		v.cfg.vsock = &vsockCfg{cid: vs.GuestCid, path: vs.UdsPath, ln: ln}
	}
	v.cfg.entropy = rec.Entropy
	return nil
}

// releaseConfig closes what a failed load opened.
func (v *vmm) releaseConfig() {
	if v.cfg.boot != nil {
		v.cfg.boot.close()
	}
	for _, d := range v.cfg.drives {
		d.close()
	}
	for _, n := range v.cfg.nets {
		n.tap.Close()
	}
	if vs := v.cfg.vsock; vs != nil {
		vs.ln.Close()
	}
}

// incoming loads r's memory file into a QEMU launched with -S -incoming
// defer, after checking it is the QEMU that made the snapshot, and resumes
// the guest if asked.
func (s *supervisor) incoming(qp *qemuProc, r *restoreSpec) error {
	ver, err := qemuVersion(qp.qmp)
	if err != nil {
		return err
	}
	if ver != r.rec.QEMU {
		return fmt.Errorf("Invalid data version: the snapshot was made by QEMU %s and this VMM runs QEMU %s; QEMU cannot be trusted to load another version's machine state: boot the VM cold", r.rec.QEMU, ver)
	}
	start := time.Now()
	if err := migrate(qp.qmp, "migrate-incoming", r.mem); err != nil {
		return fmt.Errorf("Failed to load guest memory: Error creating guest memory from file: %v", err)
	}
	if r.resume {
		if _, err := qp.qmp.execute("cont", nil, qmpTimeout); err != nil {
			return fmt.Errorf("Failed to resume microVM: %v", err)
		}
	}
	s.log.info("fc_vmm", "Snapshot loaded in %v (resumed: %v)", time.Since(start).Round(time.Millisecond), r.resume)
	return nil
}
