package hostcheck

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// exe writes an executable file at dir/name and returns its path.
func exe(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func none() []string { return nil }

func TestChooseVMMConfigured(t *testing.T) {
	dir := t.TempDir()
	fc := exe(t, dir, "firecracker-v1.14")
	own := exe(t, dir, "banger-vmm")
	for _, kvm := range []bool{true, false} {
		got, err := chooseVMM(fc, kvm, none)
		if err != nil || got != (VMMChoice{Binary: fc, Kind: KindFirecracker, Reason: "firecracker_bin in config"}) {
			t.Fatalf("kvm=%v: %+v, %v", kvm, got, err)
		}
	}
	// The kind follows the name: banger-vmm named in the config is banger-vmm.
	if got, err := chooseVMM(own, true, none); err != nil || got.Kind != KindBangerVMM {
		t.Fatalf("configured banger-vmm: %+v, %v", got, err)
	}
	missing := filepath.Join(dir, "nope")
	if _, err := chooseVMM(missing, true, none); err == nil || !strings.HasPrefix(err.Error(), "firecracker_bin "+missing+": ") {
		t.Fatalf("missing firecracker_bin: %v", err)
	}
}

func TestChooseVMMFromPATH(t *testing.T) {
	path := t.TempDir()
	fc := exe(t, path, "firecracker")
	t.Setenv("PATH", path)
	own := exe(t, t.TempDir(), "banger-vmm")
	cands := func() []string { return []string{filepath.Join(path, "absent"), path /* a directory */, own} }

	// KVM usable: Firecracker on PATH.
	got, err := chooseVMM("", true, cands)
	if err != nil || got != (VMMChoice{Binary: fc, Kind: KindFirecracker, Reason: "firecracker on PATH and KVM usable"}) {
		t.Fatalf("kvm: %+v, %v", got, err)
	}
	// No KVM: the first regular banger-vmm candidate, Firecracker or not.
	got, err = chooseVMM("", false, cands)
	if err != nil || got != (VMMChoice{Binary: own, Kind: KindBangerVMM, Reason: "no usable KVM; using banger's QEMU-backed VMM"}) {
		t.Fatalf("no kvm: %+v, %v", got, err)
	}
	// KVM but no Firecracker.
	t.Setenv("PATH", t.TempDir())
	got, err = chooseVMM("", true, cands)
	if err != nil || got.Binary != own || got.Reason != "no firecracker binary found; using banger's QEMU-backed VMM" {
		t.Fatalf("kvm without firecracker: %+v, %v", got, err)
	}
	// Nothing at all.
	if _, err := chooseVMM("", false, none); err == nil || !strings.HasPrefix(err.Error(), "no VMM found") {
		t.Fatalf("no VMM: %v", err)
	}
}

func TestBangerVMMCandidates(t *testing.T) {
	path := t.TempDir()
	onPath := exe(t, path, "banger-vmm")
	t.Setenv("PATH", path)
	t.Setenv("BANGER_VMM_BIN", "/opt/x/banger-vmm")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/opt/x/banger-vmm", filepath.Join(filepath.Dir(self), "banger-vmm"), "/usr/local/lib/banger/banger-vmm", onPath}
	got := bangerVMMCandidates()
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("candidates %q, want %q", got, want)
	}
}
