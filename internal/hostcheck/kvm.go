package hostcheck

import (
	"os"

	"golang.org/x/sys/unix"
)

// KVMUsable reports whether this process can run a stock guest kernel under
// KVM: /dev/kvm must open read-write and answer KVM_GET_API_VERSION with
// 12, and KVM must not be the PVM flavour (/sys/module/kvm_pvm), which only
// runs PVM guest kernels.
func KVMUsable() bool {
	return kvmUsable("/dev/kvm", "/sys/module/kvm_pvm")
}

func kvmUsable(dev, pvmModule string) bool {
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
