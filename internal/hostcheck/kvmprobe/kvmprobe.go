// Package kvmprobe is banger's one KVM probe: whether this process can run
// a stock guest kernel under KVM. It is internal/hostcheck's leaf, with no
// banger imports, so that banger-vmm (internal/fcvmm) can use it without
// the rest of hostcheck's; hostcheck's VMM choice and doctor use it too.
package kvmprobe

import (
	"os"

	"golang.org/x/sys/unix"
)

// Usable reports whether this process can run a stock guest kernel under
// KVM: /dev/kvm must open read-write and answer KVM_GET_API_VERSION with
// 12, and KVM must not be the PVM flavour (/sys/module/kvm_pvm), which only
// runs PVM guest kernels.
func Usable() bool {
	return usable("/dev/kvm", "/sys/module/kvm_pvm")
}

func usable(dev, pvmModule string) bool {
	if _, err := os.Stat(pvmModule); err == nil {
		return false
	}
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	const kvmGetAPIVersion = 0xAE00
	v, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), kvmGetAPIVersion, 0)
	return errno == 0 && v == 12
}
