package fcvmm

import (
	"encoding/json"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	qmpTimeout       = 10 * time.Second
	startTimeout     = 60 * time.Second // QEMU building the machine and loading the kernel
	metricsInterval  = 60 * time.Second
	serialDrainLimit = 2 * time.Second
)

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
	startError := startError
	if r != nil {
		startError = loadError
	}
	b := v.cfg.boot
	if b == nil {
		return startError("Cannot start microvm without kernel configuration.")
	}
	if err := checkKernel(b.kernel); err != nil {
		return startError("%s", err.Error())
	}
	host := hostFacts()
	kvm, tsc := host.kvm, host.tscKHz
	var root *driveCfg
	if len(v.cfg.drives) > 0 && v.cfg.drives[0].root {
		root = v.cfg.drives[0]
	}
	var cmdline string
	var err error
	if r != nil {
		cmdline = r.cmdline
		if kvm != r.kvm {
			return startError("%s", r.accelMismatch(kvm))
		}
	} else if cmdline, err = guestCmdline(b.bootArgs, root, tsc); err != nil {
		return startError("Invalid kernel command line: %s", err.Error())
	}
	out, err := v.consoleFd()
	if err != nil {
		return startError("Internal error while starting microVM: cannot open the serial output file: %s", rustIOError(err))
	}
	serConn, serQ, err := socketPair("serial")
	if err != nil {
		return startError("Internal error while starting microVM: %v", err)
	}
	qmpConn, qmpQ, err := socketPair("qmp")
	if err != nil {
		serConn.Close()
		serQ.Close()
		return startError("Internal error while starting microVM: %v", err)
	}
	// The vsock bridge's virtio-serial port (PUT /vsock) is a third socket
	// pair.
	var agentConn net.Conn
	var agentQ *os.File
	if v.cfg.vsock != nil {
		agentConn, agentQ, err = socketPair("agent")
		if err != nil {
			serConn.Close()
			serQ.Close()
			qmpConn.Close()
			qmpQ.Close()
			return startError("Internal error while starting microVM: %v", err)
		}
	}
	closeAgent := func() {
		if agentConn != nil {
			agentConn.Close()
			agentQ.Close()
		}
	}
	stderrR, stderrW, err := os.Pipe()
	if err != nil {
		serConn.Close()
		serQ.Close()
		qmpConn.Close()
		qmpQ.Close()
		closeAgent()
		return startError("Internal error while starting microVM: %v", err)
	}
	plan := planLaunch(&v.cfg, serQ, qmpQ, agentQ, kvm, cmdline)
	if r != nil {
		plan.args = append(plan.args, "-S", "-incoming", "defer")
	}
	v.log.debug("fc_vmm", "Starting %s %s", plan.binary, strings.Join(plan.args, " "))
	qp, err := spawn(plan, stderrW)
	stderrW.Close()
	serQ.Close()
	qmpQ.Close()
	if agentQ != nil {
		agentQ.Close()
	}
	if err != nil {
		serConn.Close()
		qmpConn.Close()
		if agentConn != nil {
			agentConn.Close()
		}
		stderrR.Close()
		return startError("Internal error while starting microVM: cannot run %s: %v", plan.binary, err)
	}
	if agentConn != nil {
		// Created now so that VSERPORT_CHANGE events find it; it starts
		// carrying connections once QEMU is up.
		qp.vsock = newVsockBridge(v.cfg.vsock.ln, agentConn, v.log)
	}
	qp.stderr = &stderrTail{}
	stderrDone := make(chan struct{})
	go func() { qp.stderr.consume(stderrR, v.log); close(stderrDone) }()
	qp.serial = newSerialPump(serConn, out)
	qp.qmp = newQMP(qmpConn, v.onQMPEvent)

	v.procMu.Lock()
	v.proc = qp
	stopping := v.stopping
	v.procMu.Unlock()
	if stopping {
		qp.kill(time.Second)
		return startError("Internal error while starting microVM: the VMM is stopping")
	}

	hs := make(chan error, 1)
	go func() { hs <- qp.qmp.handshake(startTimeout) }()
	var failure error
	select {
	case failure = <-hs:
	case <-qp.done:
		failure = errQMPClosed
	}
	if failure == nil && r != nil {
		failure = v.incoming(qp, r)
	}
	if failure != nil {
		qp.kill(2 * time.Second)
		select {
		case <-stderrDone:
		case <-time.After(time.Second):
		}
		v.procMu.Lock()
		v.proc = nil
		v.procMu.Unlock()
		qp.qmp.close()
		if qp.vsock != nil {
			qp.vsock.serial.Close() // uds_path stays bound for another try
		}
		why := qp.stderr.String()
		if r != nil {
			if why != "" {
				return startError("Failed to restore from snapshot: %v (QEMU: %s)", failure, why)
			}
			return startError("Failed to restore from snapshot: %v", failure)
		}
		if why == "" {
			why = failure.Error()
		}
		return startError("Internal error while starting microVM: QEMU failed: %s", why)
	}

	v.started = true
	v.cmdline = cmdline
	v.kvm = kvm
	v.paused = r != nil && !r.resume
	if qp.vsock != nil {
		qp.vsock.start()
		if r != nil && r.agentOpen {
			// The guest's port was open when the snapshot was taken, and
			// the restored guest does not open it again.
			qp.vsock.guestPort(true)
		}
		v.log.info("fc_vmm", "vsock: guest port %d carried over virtio-serial port %s; host socket %s", agentVsockPort, agentPortName, v.cfg.vsock.path)
	}
	if isTTY, ok := stdinForwardable(); ok && v.cfg.serialOut == "" {
		if isTTY {
			restore := rawTerminal(0)
			v.procMu.Lock()
			v.ttyRestore = restore
			v.procMu.Unlock()
		}
		go forwardStdin(serConn)
	}
	go v.watch(qp)
	go v.flushMetricsPeriodically(qp)
	accel := "tcg"
	if kvm {
		accel = "kvm"
	}
	v.log.info("fc_vmm", "Successfully started microvm (QEMU pid %d, accel %s, boot args %s)", qp.pid, accel, bootArgsOf(b))
	return nil
}

func (v *vmm) flushMetricsPeriodically(qp *qemuProc) {
	t := time.NewTicker(metricsInterval)
	defer t.Stop()
	for {
		select {
		case <-qp.done:
			return
		case <-t.C:
			v.met.flush(v.log.missed.Load())
		}
	}
}

// sendCtrlAltDel presses Ctrl+Alt+Del on the guest's AT keyboard (QEMU's
// i8042) and returns at once, like Firecracker.
func (v *vmm) sendCtrlAltDel() {
	q := v.currentProc()
	if q == nil {
		return
	}
	go func() {
		keys := []map[string]string{{"type": "qcode", "data": "ctrl"}, {"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "delete"}}
		if _, err := q.qmp.execute("send-key", map[string]any{"keys": keys}, qmpTimeout); err != nil {
			v.log.warn("fc_vmm", "Failed to send Ctrl+Alt+Del: %v", err)
		}
	}()
}

func (v *vmm) onQMPEvent(name string, data json.RawMessage) {
	var d struct {
		Guest  bool   `json:"guest"`
		Reason string `json:"reason"`
	}
	json.Unmarshal(data, &d)
	switch name {
	case "SHUTDOWN":
		v.lastReason.Store(d.Reason)
		switch d.Reason {
		case "guest-shutdown":
			// Firecracker keeps running after a guest power-off, its vCPUs
			// stopped; QEMU (-no-shutdown) does the same.
			v.poweredOff.Store(true)
			v.vsockGuestPort(false)
			v.log.info("fc_vmm", "The guest powered off; the VMM keeps running.")
		case "guest-reset", "guest-panic":
			// A reboot (reboot=k through the i8042, a triple fault, a panic
			// with panic=N) ends Firecracker with status 0. -no-shutdown
			// makes QEMU pause on it rather than exit, so end QEMU here.
			v.guestReset.Store(true)
			v.log.info("fc_vmm", "The guest rebooted (%s).", d.Reason)
			go v.endAfterReset()
		}
	case "VSERPORT_CHANGE":
		var p struct {
			ID   string `json:"id"`
			Open bool   `json:"open"`
		}
		json.Unmarshal(data, &p)
		if p.ID == agentPortID {
			v.log.debug("fc_vmm", "vsock: guest port %s open: %v", agentPortName, p.Open)
			v.vsockGuestPort(p.Open)
		}
	case "GUEST_PANICKED":
		v.log.warn("fc_vmm", "The guest kernel panicked.")
	default:
		v.log.debug("fc_vmm", "QEMU event %s %s", name, string(data))
	}
}

// vsockGuestPort tells the vsock bridge whether the guest has its port open.
func (v *vmm) vsockGuestPort(open bool) {
	if q := v.currentProc(); q != nil && q.vsock != nil {
		q.vsock.guestPort(open)
	}
}

// endAfterReset asks QEMU to quit after a guest reset, and kills it if it
// does not within two seconds. watch then exits 0.
func (v *vmm) endAfterReset() {
	q := v.currentProc()
	if q == nil {
		return
	}
	q.qmp.execute("quit", nil, 2*time.Second)
	select {
	case <-q.done:
	case <-time.After(2 * time.Second):
		q.kill(2 * time.Second)
	}
}

// watch ends the VMM when QEMU ends: exit 0 after a guest reboot (as
// Firecracker exits on the i8042 reset), 1 when QEMU died for another
// reason. The API socket stays on disk.
func (v *vmm) watch(qp *qemuProc) {
	<-qp.done
	v.procMu.Lock()
	stopping := v.stopping
	v.procMu.Unlock()
	if stopping {
		return // a signal is ending the VMM; the handler finishes the job
	}
	qp.serial.drain(serialDrainLimit)
	select { // let the last QMP events (the shutdown reason) arrive
	case <-qp.qmp.closed:
	case <-time.After(time.Second):
	}
	reason, _ := v.lastReason.Load().(string)
	code := exitOK
	switch {
	case v.guestReset.Load():
		v.log.info("fc_vmm", "Vmm is stopping.")
	case qp.status.Signaled():
		code = exitGeneric
		v.log.errorf("fc_vmm", "QEMU was killed by signal %d (%s); %s", int(qp.status.Signal()), qp.status.Signal(), qp.stderr.String())
	case qp.status.ExitStatus() != 0:
		code = exitGeneric
		v.log.errorf("fc_vmm", "QEMU exited with status %d: %s", qp.status.ExitStatus(), qp.stderr.String())
	case reason == "host-signal" || reason == "host-qmp-quit" || reason == "host-ui":
		code = exitGeneric
		v.log.errorf("fc_vmm", "QEMU was stopped from the host (%s)", reason)
	default:
		v.log.info("fc_vmm", "Vmm is stopping.")
	}
	v.met.flush(v.log.missed.Load())
	v.finish(code)
}

// finish restores the terminal and exits.
func (v *vmm) finish(code int) {
	v.restoreTerminal()
	v.exit(code)
}

func (v *vmm) restoreTerminal() {
	v.procMu.Lock()
	restore := v.ttyRestore
	v.procMu.Unlock()
	if restore != nil {
		restore()
	}
}

// onSignal handles SIGTERM, SIGINT, SIGQUIT (kill QEMU, then die by the same
// signal) and SIGHUP (kill QEMU, exit 156).
func (v *vmm) onSignal(sig syscall.Signal) {
	qp := v.beginStop()
	// Wait until QEMU is reaped: its tap and disks are free once the VMM
	// is gone (a restore may open the same tap at once).
	qp.kill(5 * time.Second)
	v.restoreTerminal()
	if sig == syscall.SIGHUP {
		v.log.info("fc_main", "Received SIGHUP; exiting.")
		v.exit(exitSIGHUP)
		return
	}
	dieBySignal(sig)
}

// beginStop marks the VMM as ending and stops its API at once: Firecracker
// dies on the signal, so no request may succeed after it, even while QEMU
// is being taken down. It returns the QEMU to end.
func (v *vmm) beginStop() *qemuProc {
	v.procMu.Lock()
	v.stopping = true
	qp, ln := v.proc, v.apiLn
	v.procMu.Unlock()
	if ln != nil {
		ln.Close()
	}
	return qp
}

func (v *vmm) isStopping() bool {
	v.procMu.Lock()
	defer v.procMu.Unlock()
	return v.stopping
}

// ensureStdio points closed descriptors 0-2 at /dev/null, so no socket or
// file the VMM opens later becomes "stdout" by accident.
func ensureStdio() {
	for fd := 0; fd <= 2; fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == unix.EBADF {
			if n, err := unix.Open("/dev/null", unix.O_RDWR, 0); err == nil && n != fd {
				unix.Dup2(n, fd)
				unix.Close(n)
			}
		}
	}
}
