// Package fcvmm is banger-vmm: a virtual machine monitor that speaks
// Firecracker's process and API contract (impersonating Firecracker v1.14.1)
// but runs the guest in QEMU's microvm machine.
//
// It exists because banger's build and test hosts have no Firecracker binary
// and no usable KVM (the machine is itself a PVM guest), while
// firecracker-go-sdk v1.0.0 — which banger drives VMs with — only needs
// something that accepts Firecracker's flags and answers its HTTP API on a
// Unix socket. The process contract and the API are modelled on Firecracker
// (see docs/vmm.md for the implemented subset and every deviation):
//
//   - The command line takes Firecracker's flags (--api-sock, --id,
//     --no-seccomp, --seccomp-filter, --config-file, --log-path, ...), exits
//     153 on a parsing error, prints "Firecracker v1.14.1" for --version and
//     binds the API socket at start-up, never unlinking it.
//   - The API (machine-config, boot-source, drives, network-interfaces,
//     logger, metrics, entropy, serial, vsock, actions, vm, GET / and
//     /version) is validated like Firecracker's: the SDK's generated models
//     for the schema, unknown fields rejected, the same pre-boot and
//     post-boot rules and the same fault messages where Firecracker's are
//     known.
//   - Files are opened when they are PUT, as Firecracker does, relative paths
//     against the VMM's working directory, and the open descriptors (kernel,
//     initrd, drives, taps) are what QEMU is given at InstanceStart; no API
//     path ends up in QEMU's argv. A drive is raw unless the opened file
//     carries the user.banger.format=qcow2 attribute root sets (qcow2.go);
//     its content never decides.
//   - QEMU is the VMM's only child and dies with it (PR_SET_PDEATHSIG); the
//     VMM dies by the signal it gets (SIGTERM, SIGINT, SIGQUIT), exits 156 on
//     SIGHUP, ignores SIGPIPE and exits 0 when the guest reboots.
//
// The guest sees a microvm machine with an 8250 UART on ttyS0 (forwarded to
// the VMM's stdout byte for byte), an i8042 keyboard controller (for
// SendCtrlAltDel and reboot=k), virtio-mmio block, net and rng devices found
// through ACPI, and the kernel command line Firecracker would build. With
// PUT /vsock it also gets a virtio-serial port named banger.agent, which
// carries host connections made to uds_path with Firecracker's
// CONNECT/OK handshake, one at a time (vsock.go).
package fcvmm
