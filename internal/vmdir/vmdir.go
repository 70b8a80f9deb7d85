// Package vmdir names every file in a VM's directory, so the daemon, the
// root helper and reconcile agree on one layout:
//
//	<vms>/<id>/     root-owned, mode 0711, in a root-only tree (docs/security.md)
//	  rootfs.ext4   copy-on-write root disk (reflink or sparse copy of the image)
//	  work.ext4     the /root work disk
//	  tools.ext4    read-only tools disk (the guest agent)
//	  kernel        the kernel the VMM boots (copied from the owner's file at launch)
//	  initrd        the initrd, likewise (when there is one)
//	  api.sock      the VMM's Firecracker API socket (root's alone)
//	  agent.sock    the host side of the guest's vsock (handed to the owner)
//	  vmm.pid       pidfile of the VMM, beside its socket
//	  serial.log    the guest's serial console (the VMM's stdout/stderr; the owner's)
//	  vm.snap       a parked VM's snapshot (device state), written by the VMM
//	  vm.mem        a parked VM's memory, likewise
//	  layout        the VMM got names relative to this directory (it runs in it)
//	  frozen-N/     disks frozen at a fork: the backing files of the qcow2
//	                overlays of this VM and its forks
//	  seed-*/       transient: files copied into a fresh work disk
package vmdir

import "path/filepath"

// Dir is one VM's directory.
type Dir string

// New returns the directory of VM id under vmsDir.
func New(vmsDir, id string) Dir { return Dir(filepath.Join(vmsDir, id)) }

// Path is the directory itself.
func (d Dir) Path() string { return string(d) }

// Rootfs is the VM's root disk.
func (d Dir) Rootfs() string { return filepath.Join(string(d), "rootfs.ext4") }

// WorkDisk is the /root disk.
func (d Dir) WorkDisk() string { return filepath.Join(string(d), "work.ext4") }

// APISock is the VMM's API socket.
func (d Dir) APISock() string { return filepath.Join(string(d), "api.sock") }

// ToolsDisk is the VM's copy of banger's read-only tools disk (/dev/vdc:
// the guest agent).
func (d Dir) ToolsDisk() string { return filepath.Join(string(d), "tools.ext4") }

// AgentSock is the host side of the guest's vsock (Firecracker's uds_path),
// where banger's guest agent is reached.
func (d Dir) AgentSock() string { return filepath.Join(string(d), "agent.sock") }

// PIDFile is the VMM's pidfile.
func (d Dir) PIDFile() string { return filepath.Join(string(d), "vmm.pid") }

// SerialLog is the guest console log.
func (d Dir) SerialLog() string { return filepath.Join(string(d), "serial.log") }

// Snapshot is the parked VM's snapshot record.
func (d Dir) Snapshot() string { return filepath.Join(string(d), SnapshotName) }

// SnapshotMem is the parked VM's memory file.
func (d Dir) SnapshotMem() string { return filepath.Join(string(d), SnapshotMemName) }

// Kernel is the VM's copy of its kernel.
func (d Dir) Kernel() string { return filepath.Join(string(d), "kernel") }

// Initrd is the VM's copy of its initrd.
func (d Dir) Initrd() string { return filepath.Join(string(d), "initrd") }

// The file names, for work relative to a directory handle.
const (
	RootfsName      = "rootfs.ext4"
	WorkDiskName    = "work.ext4"
	ToolsDiskName   = "tools.ext4"
	KernelName      = "kernel"
	InitrdName      = "initrd"
	APISockName     = "api.sock"
	AgentSockName   = "agent.sock"
	PIDFileName     = "vmm.pid"
	SerialLogName   = "serial.log"
	SnapshotName    = "vm.snap"
	SnapshotMemName = "vm.mem"
	LayoutName      = "layout"
	FrozenPrefix    = "frozen-"
)

// Layout is the content of LayoutName for a VMM given relative names.
const Layout = "relative\n"
