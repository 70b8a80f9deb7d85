package api

// VM methods.
const (
	MethodVMCreate  = "vm.create"
	MethodVMStart   = "vm.start"
	MethodVMStop    = "vm.stop"
	MethodVMRestart = "vm.restart"
	MethodVMKill    = "vm.kill"
	MethodVMDelete  = "vm.delete"
	MethodVMPrune   = "vm.prune"
	MethodVMSet     = "vm.set"
	MethodVMList    = "vm.list"
	MethodVMShow    = "vm.show"
	MethodVMLogs    = "vm.logs"
	MethodVMSSHInfo = "vm.ssh_info"
	// MethodVMPause and MethodVMResume pause a running VM's vCPUs (its
	// memory stays resident) and resume a paused or parked VM.
	MethodVMPause  = "vm.pause"
	MethodVMResume = "vm.resume"
	// MethodVMPark snapshots a running VM to its directory and ends its
	// VMM: no guest memory is held until it is resumed.
	MethodVMPark = "vm.park"
	MethodVMFork = "vm.fork"
	// MethodVMWorkspaceRecord records the workspace last prepared in a VM.
	MethodVMWorkspaceRecord = "vm.workspace.record"
	MethodImageList         = "image.list"
	MethodImageShow         = "image.show"
	MethodImageDelete       = "image.delete"
)

// VM states.
const (
	StateCreated  = "created"
	StateStarting = "starting"
	StateRunning  = "running"
	StateStopping = "stopping"
	StateStopped  = "stopped"
	StateError    = "error"
	// StatePaused: the VMM runs with the vCPUs stopped; memory resident.
	StatePaused = "paused"
	// StateParked: a snapshot in the VM's directory, no VMM.
	StateParked = "parked"
)

// States lists every VM state.
var States = []string{StateCreated, StateStarting, StateRunning, StateStopping, StateStopped, StateError, StatePaused, StateParked}

// VM is a VM as the daemon reports it.
type VM struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Image     string `json:"image"`
	State     string `json:"state"`
	VCPU      int    `json:"vcpu"`
	MemoryMiB int    `json:"memory_mib"`
	DiskBytes int64  `json:"disk_bytes"`
	NAT       bool   `json:"nat"`
	IP        string `json:"ip"`
	DNSName   string `json:"dns_name"` // <name>.vm, answered by the daemon's DNS (docs/dns.md)
	CreatedAt string `json:"created_at"`
	UpdatedAt string `json:"updated_at"`
	// Labels are the user's key=value tags (vm create --label, vm set
	// --label), for finding VMs by purpose (vm list --filter label=k=v).
	Labels  map[string]string `json:"labels,omitempty"`
	Runtime VMRuntime         `json:"runtime"`
	// Warnings are for the user, from the call that returned the VM
	// (e.g. a warm-start template that could not be used).
	Warnings []string `json:"warnings,omitempty"`
}

// VMRuntime is the runtime state kept as JSON in the store.
type VMRuntime struct {
	VMM         string `json:"vmm,omitempty"`      // binary path
	VMMKind     string `json:"vmm_kind,omitempty"` // "firecracker" or "banger-vmm"
	PID         int    `json:"pid,omitempty"`
	Tap         string `json:"tap,omitempty"`
	MAC         string `json:"mac,omitempty"`
	Dir         string `json:"dir,omitempty"`
	APISock     string `json:"api_sock,omitempty"`
	SerialLog   string `json:"serial_log,omitempty"`
	CloneMethod string `json:"clone_method,omitempty"`
	StartedAt   string `json:"started_at,omitempty"`
	StoppedAt   string `json:"stopped_at,omitempty"`
	// Workspace is the repository last prepared in the VM, if any.
	Workspace *Workspace `json:"workspace,omitempty"`
	// StopReason says why a VM is not running when banger did not stop it.
	StopReason string `json:"stop_reason,omitempty"`
	LastError  string `json:"last_error,omitempty"`
	// SnapshotBytes is the parked VM's snapshot on disk (memory file and
	// record); ParkedAt when it was parked.
	SnapshotBytes int64  `json:"snapshot_bytes,omitempty"`
	ParkedAt      string `json:"parked_at,omitempty"`
	// ForkOf is the id of the VM this one was forked from (vm fork).
	ForkOf string `json:"fork_of,omitempty"`
	// DiskParents are the ids of the VMs whose frozen disks back this
	// VM's (its overlays' chain): none of them can be deleted first.
	DiskParents []string `json:"disk_parents,omitempty"`
	// SnapshotTap is the tap this VM's snapshot names when it is not the
	// VM's own (a fork's is its parent's): each restore lends it that name
	// for the load (docs/snapshots.md). Cleared by a cold boot.
	SnapshotTap string `json:"snapshot_tap,omitempty"`
	// NeedsIdentity: a fork that has not yet taken its own identity
	// (MAC, IP, hostname, machine-id, SSH host keys) through its agent.
	NeedsIdentity bool `json:"needs_identity,omitempty"`
	// Template, on a warm-start template (a hidden, parked VM), is its key:
	// what it was booted from (docs/snapshots.md, "Warm starts").
	Template string `json:"template,omitempty"`
	// Start says how the VM started: "warm" (from a template, named by
	// StartedFrom) or "cold" (a boot).
	Start       string `json:"start,omitempty"`
	StartedFrom string `json:"started_from,omitempty"`
}

// VMCreateParams creates (and by default starts) a VM. Pointers: unset
// differs from zero, and zero is refused.
type VMCreateParams struct {
	Name      string  `json:"name"`
	Image     string  `json:"image,omitempty"`
	VCPU      *int    `json:"vcpu,omitempty"`
	MemoryMiB *int    `json:"memory_mib,omitempty"`
	DiskSize  *string `json:"disk_size,omitempty"`
	NAT       bool    `json:"nat,omitempty"`
	NoStart   bool    `json:"no_start,omitempty"`
	// Cold boots the VM even when a warm-start template matches.
	Cold bool `json:"cold,omitempty"`
	// Labels tag the VM (docs/vm.md, "Labels").
	Labels map[string]string `json:"labels,omitempty"`
}

// VMListParams narrows vm.list: every filter must match ("label=k=v",
// "label=k", "state=S", "image=NAME"). No params list every VM.
type VMListParams struct {
	Filters []string `json:"filters,omitempty"`
}

// VMRef names a VM by name or id.
type VMRef struct {
	Name string `json:"name"`
}

// VMResumeParams resumes a paused VM or wakes a parked one; Cold boots a
// parked VM's disks instead, discarding its snapshot (for a snapshot that
// cannot be loaded).
type VMResumeParams struct {
	Name string `json:"name"`
	Cold bool   `json:"cold,omitempty"`
}

// MaxForks bounds one fork (the root helper's bound, privops.MaxForks).
const MaxForks = 16

// VMForkParams forks the running or parked VM Name into Count VMs (named
// Names when given; generated otherwise).
type VMForkParams struct {
	Name  string   `json:"name"`
	Names []string `json:"names,omitempty"`
	Count int      `json:"count,omitempty"`
}

// VMForkResult is the forks, each running.
type VMForkResult struct {
	Source VM   `json:"source"`
	Forks  []VM `json:"forks"`
}

// VMKillParams picks the signal.
type VMKillParams struct {
	Name   string `json:"name"`
	Signal string `json:"signal,omitempty"`
}

// VMSetParams changes a stopped VM's resources.
type VMSetParams struct {
	Name      string `json:"name"`
	VCPU      *int   `json:"vcpu,omitempty"`
	MemoryMiB *int   `json:"memory_mib,omitempty"`
	// Labels are set (added or changed), RemoveLabels removed; unlike vCPUs
	// and memory, labels change in any state.
	Labels       map[string]string `json:"labels,omitempty"`
	RemoveLabels []string          `json:"remove_labels,omitempty"`
}

// VMPruneResult lists the deleted VMs.
type VMPruneResult struct {
	Deleted []string `json:"deleted"`
}

// VMLogs is the tail of a VM's serial console.
type VMLogs struct {
	Path      string `json:"path"`
	Text      string `json:"text"`
	Truncated bool   `json:"truncated"`
}

// SSHInfo is what a client needs to reach a guest over SSH.
type SSHInfo struct {
	Name       string     `json:"name"`
	State      string     `json:"state"`
	Host       string     `json:"host"`
	User       string     `json:"user"`
	KeyPath    string     `json:"key_path"`
	KnownHosts string     `json:"known_hosts"`
	Workspace  *Workspace `json:"workspace,omitempty"`
}

// Workspace is a repository copied into a VM.
type Workspace struct {
	HostPath   string `json:"host_path"`
	GuestPath  string `json:"guest_path"`
	HeadCommit string `json:"head_commit"`
	Mode       string `json:"mode"`
	PreparedAt string `json:"prepared_at"`
}

// VMWorkspaceParams records a workspace for a VM.
type VMWorkspaceParams struct {
	Name      string    `json:"name"`
	Workspace Workspace `json:"workspace"`
}

// Image is a registered image.
type Image struct {
	ID        string   `json:"id"`
	Name      string   `json:"name"`
	Rootfs    string   `json:"rootfs"`
	Kernel    string   `json:"kernel"`
	CreatedAt string   `json:"created_at"`
	SizeBytes int64    `json:"size_bytes"`
	Managed   bool     `json:"managed"`
	Source    string   `json:"source,omitempty"`
	UsedBy    []string `json:"used_by"`
}

// ImageRef names an image.
type ImageRef struct {
	Name string `json:"name"`
}

// MethodVMPorts asks the guest agents of running VMs for their listeners.
const MethodVMPorts = "vm.ports"

// MethodVMStats reports what running VMs cost (VMStatsParams → []VMStats).
const MethodVMStats = "vm.stats"

// VMStatsParams names VMs (none: every running VM).
type VMStatsParams struct {
	Names []string `json:"names"`
}

// VMStats is what one running VM costs now. The host's figures come from
// /proc and the tap's counters; the guest's from its agent (absent when it
// did not answer: Error says why).
type VMStats struct {
	Name string `json:"name"`
	// CPUPercent is the VMM's processes' CPU over a short sample, in % of
	// one host CPU (200 is two CPUs busy).
	CPUPercent float64 `json:"cpu_percent"`
	// VMMRSSBytes is the resident memory of the VMM's processes on the host.
	VMMRSSBytes int64 `json:"vmm_rss_bytes"`
	// GuestMemUsedBytes is the guest's MemTotal - MemAvailable.
	GuestMemUsedBytes  int64 `json:"guest_mem_used_bytes,omitempty"`
	GuestMemTotalBytes int64 `json:"guest_mem_total_bytes,omitempty"`
	// Disks are the guest's root ("/") and work ("/root") filesystems.
	Disks []VMDiskUsage `json:"disks,omitempty"`
	// NetRxBytes and NetTxBytes are the guest's traffic (received, sent)
	// since its tap was made, counted on the host.
	NetRxBytes int64  `json:"net_rx_bytes"`
	NetTxBytes int64  `json:"net_tx_bytes"`
	Error      string `json:"error,omitempty"`
}

// VMDiskUsage is one guest filesystem's use.
type VMDiskUsage struct {
	Path       string `json:"path"`
	UsedBytes  int64  `json:"used_bytes"`
	TotalBytes int64  `json:"total_bytes"`
}

// VMPortsParams names VMs (none: every running VM).
type VMPortsParams struct {
	Names []string `json:"names"`
}

// VMPorts is one VM's listening sockets, as its guest agent reports them.
type VMPorts struct {
	Name      string         `json:"name"`
	IP        string         `json:"ip"`
	Listeners []PortListener `json:"listeners"`
	Agent     string         `json:"agent,omitempty"` // agent version
	Error     string         `json:"error,omitempty"`
}

// PortListener is one listening socket in a guest.
type PortListener struct {
	Proto    string `json:"proto"`
	Address  string `json:"address"`
	Port     int    `json:"port"`
	PID      int    `json:"pid,omitempty"`
	Process  string `json:"process,omitempty"`
	Endpoint string `json:"endpoint"`      // <name>.vm:<port>, or "" when only the guest itself can reach it
	URL      string `json:"url,omitempty"` // http://<name>.vm:<port>/ for TCP ports other than 22
}
