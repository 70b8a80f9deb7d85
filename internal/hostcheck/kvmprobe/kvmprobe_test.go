package kvmprobe

import (
	"os"
	"path/filepath"
	"testing"
)

func TestUsable(t *testing.T) {
	dir := t.TempDir()
	noPVM := filepath.Join(dir, "no-kvm_pvm")
	if usable(filepath.Join(dir, "kvm"), noPVM) {
		t.Fatal("usable without a device")
	}
	// A device that opens but is not KVM (the ioctl fails).
	if usable("/dev/null", noPVM) {
		t.Fatal("/dev/null taken for KVM")
	}
	// The PVM flavour is refused whatever the device.
	if usable("/dev/null", dir) {
		t.Fatal("usable with kvm_pvm loaded")
	}
	if _, err := os.Stat("/dev/kvm"); err != nil && Usable() {
		t.Fatal("usable without /dev/kvm")
	}
}
