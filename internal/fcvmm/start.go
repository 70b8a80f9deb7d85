package fcvmm

import (
	"time"
)

const (
	qmpTimeout       = 10 * time.Second
	startTimeout     = 60 * time.Second // QEMU building the machine and loading the kernel
	metricsInterval  = 60 * time.Second
	serialDrainLimit = 2 * time.Second
)

// errorf builds an InstanceStart (or snapshot load) error.
type errorf func(format string, a ...any) *apiError

func startError(format string, a ...any) *apiError {
	e := badRequest(format, a...)
	e.msg = "Start microvm error: " + e.msg
	return e
}

// startMicroVM is InstanceStart: check the kernel, build the command line,
// launch QEMU on descriptors opened at PUT time, and return once QEMU has
// built the machine (it answers QMP only then), without waiting for the
// guest.
//
// With r (PUT /snapshot/load), the same machine is launched paused and
// waiting for its state (-S -incoming defer), which is then loaded from r's
// memory file (see snapshot.go); errors are then the load's.
func (v *vmm) startMicroVM(r *restoreSpec) *apiError {
	var fail errorf = startError
	if r != nil {
		fail = loadError
	}
	b := v.cfg.boot
	if b == nil {
		return fail("Cannot start microvm without kernel configuration.")
	}
	if err := checkKernel(b.kernel); err != nil {
		return fail("%s", err.Error())
	}
	host := hostFacts()
	cmdline, e := v.launchCmdline(r, host, fail)
	if e != nil {
		return e
	}
	out, err := v.sup.consoleFd(v.cfg.serialOut)
	if err != nil {
		return fail("Internal error while starting microVM: cannot open the serial output file: %s", rustIOError(err))
	}
	qp, serial, e := v.sup.launch(&v.cfg, cmdline, host.kvm, r, out, fail)
	if e != nil {
		return e
	}
	v.started = true
	v.cmdline = cmdline
	v.kvm = host.kvm
	v.paused = r != nil && !r.resume
	v.sup.run(qp, serial, v.cfg.vsock, r != nil && r.agentOpen, v.cfg.serialOut == "")
	accel := "tcg"
	if host.kvm {
		accel = "kvm"
	}
	v.log.info("fc_vmm", "Successfully started microvm (QEMU pid %d, accel %s, boot args %s)", qp.pid, accel, bootArgsOf(b))
	return nil
}

// launchCmdline is the guest's command line: for a restore the snapshot's,
// which needs the accelerator the snapshot was made under; otherwise built
// from boot_args and the root drive (guestCmdline).
func (v *vmm) launchCmdline(r *restoreSpec, host hostInfo, fail errorf) (string, *apiError) {
	if r != nil {
		if host.kvm != r.kvm {
			return "", fail("%s", r.accelMismatch(host.kvm))
		}
		return r.cmdline, nil
	}
	var root *driveCfg
	if len(v.cfg.drives) > 0 && v.cfg.drives[0].root {
		root = v.cfg.drives[0]
	}
	cmdline, err := guestCmdline(v.cfg.boot.bootArgs, root, host.tscKHz)
	if err != nil {
		return "", fail("Invalid kernel command line: %s", err.Error())
	}
	return cmdline, nil
}
