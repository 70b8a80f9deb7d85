// Package hostcheck answers what this host offers banger: which VMM to
// run, whether a directory's filesystem makes reflink copies, and the whole
// 'banger doctor' report; whether KVM is usable comes from its leaf package
// kvmprobe. Its checks are quick and change nothing (the reflink probe's two
// temporary files aside).
//
// The daemon imports it (the VMM choice, the doctor), and vm for the
// VMMChoice type. It imports no service package (vm, image, store, privops,
// fcvmm): what the doctor needs of the running daemon comes in a
// DoctorInput. banger-vmm (internal/fcvmm) imports kvmprobe alone.
package hostcheck

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger-dev/banger/internal/hostcheck/kvmprobe"
	"github.com/banger-dev/banger/internal/sysexec"
)

// VMM kinds.
const (
	KindFirecracker = "firecracker"
	KindBangerVMM   = "banger-vmm"
)

// VMMChoice is the VMM binary in use and what it is.
type VMMChoice struct {
	Binary string
	Kind   string // KindFirecracker or KindBangerVMM
	Reason string
}

// ChooseVMM picks the VMM: firecrackerBin (the config's firecracker_bin)
// when set; Firecracker on PATH when KVM is usable; else banger's own
// QEMU-backed VMM (BANGER_VMM_BIN, beside this executable, in
// /usr/local/lib/banger, or on PATH).
// lookPath finds a program as the code that runs it will (sysexec: PATH,
// then the sbin directories); tests replace it.
var lookPath = sysexec.LookPath

func ChooseVMM(firecrackerBin string) (VMMChoice, error) {
	return chooseVMM(firecrackerBin, kvmprobe.Usable(), bangerVMMCandidates)
}

func chooseVMM(firecrackerBin string, kvm bool, candidates func() []string) (VMMChoice, error) {
	if firecrackerBin != "" {
		if _, err := os.Stat(firecrackerBin); err != nil {
			return VMMChoice{}, fmt.Errorf("firecracker_bin %s: %w", firecrackerBin, err)
		}
		return VMMChoice{Binary: firecrackerBin, Kind: kindOf(firecrackerBin), Reason: "firecracker_bin in config"}, nil
	}
	if kvm {
		if p, err := lookPath("firecracker"); err == nil {
			return VMMChoice{Binary: p, Kind: KindFirecracker, Reason: "firecracker on PATH and KVM usable"}, nil
		}
	}
	reason := "no usable KVM"
	if kvm {
		reason = "no firecracker binary found"
	}
	for _, c := range candidates() {
		if fi, err := os.Stat(c); err == nil && fi.Mode().IsRegular() {
			abs, _ := filepath.Abs(c)
			return VMMChoice{Binary: abs, Kind: KindBangerVMM, Reason: reason + "; using banger's QEMU-backed VMM"}, nil
		}
	}
	return VMMChoice{}, errors.New("no VMM found: set firecracker_bin, or build banger-vmm ('make build') next to bangerd")
}

// kindOf tells a configured binary's kind by its name.
func kindOf(p string) string {
	if strings.Contains(filepath.Base(p), "banger-vmm") {
		return KindBangerVMM
	}
	return KindFirecracker
}

// bangerVMMCandidates lists where banger-vmm may be, in order of preference.
func bangerVMMCandidates() []string {
	var cands []string
	if p := os.Getenv("BANGER_VMM_BIN"); p != "" {
		cands = append(cands, p)
	}
	if exe, err := os.Executable(); err == nil {
		cands = append(cands, filepath.Join(filepath.Dir(exe), "banger-vmm"))
	}
	cands = append(cands, "/usr/local/lib/banger/banger-vmm")
	if p, err := lookPath("banger-vmm"); err == nil {
		cands = append(cands, p)
	}
	return cands
}
