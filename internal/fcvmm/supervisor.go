package fcvmm

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// supervisor runs the QEMU behind a started microVM and ends the VMM
// process: it spawns QEMU on the descriptors the API opened (launch), lets
// it run (run), relays its QMP events (guest power-off, reboot, the agent
// port), and exits the process as Firecracker would when QEMU ends or a
// signal comes. The API state machine (vmm) reaches QEMU only through it.
type supervisor struct {
	log *logger
	met *metrics

	poweredOff atomic.Bool  // the guest powered off: QEMU stopped, the VMM lives on
	guestReset atomic.Bool  // the guest rebooted: the VMM is ending with status 0
	lastReason atomic.Value // last SHUTDOWN reason QEMU reported

	mu         sync.Mutex   // guards proc, stopping, apiLn and ttyRestore
	proc       *qemuProc    //
	stopping   bool         // a signal is ending the VMM
	apiLn      net.Listener // the API socket's listener (nil with --no-api)
	ttyRestore func()       // undoes raw mode on a terminal stdin
	stdoutFd   int          // where the console goes by default
	exit       func(int)    // os.Exit; tests replace it
}

func newSupervisor(log *logger, met *metrics) *supervisor {
	return &supervisor{log: log, met: met, stdoutFd: 1, exit: os.Exit}
}

// errNotRunning: no QEMU runs.
var errNotRunning = errors.New("the microVM is not running")

func (s *supervisor) currentProc() *qemuProc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc
}

// consoleFd returns where ttyS0 goes: stdout, or serialOut (PUT /serial).
func (s *supervisor) consoleFd(serialOut string) (int, error) {
	if serialOut == "" {
		return s.stdoutFd, nil
	}
	return unix.Open(serialOut, unix.O_WRONLY|unix.O_CREAT|unix.O_APPEND|unix.O_NONBLOCK|unix.O_CLOEXEC, 0o644)
}

// ---- starting QEMU ----

// launch starts QEMU for cfg with the guest command line cmdline and
// returns once QEMU has built the machine (it answers QMP only then) and,
// for a restore (r), loaded r's memory file. out is where ttyS0 goes. It
// also returns the VMM's end of the serial line, for run. Errors are built
// with fail.
func (s *supervisor) launch(cfg *vmConfig, cmdline string, kvm bool, r *restoreSpec, out int, fail errorf) (*qemuProc, net.Conn, *apiError) {
	ch, err := openChannels(cfg.vsock != nil)
	if err != nil {
		return nil, nil, fail("Internal error while starting microVM: %v", err)
	}
	plan := planLaunch(cfg, ch.serialQ, ch.qmpQ, ch.agentQ, kvm, cmdline)
	if r != nil {
		plan.args = append(plan.args, "-S", "-incoming", "defer")
	}
	s.log.debug("fc_vmm", "Starting %s %s", plan.binary, strings.Join(plan.args, " "))
	qp, err := spawn(plan, ch.stderrW)
	ch.closeQEMUEnds()
	if err != nil {
		ch.closeVMMEnds()
		return nil, nil, fail("Internal error while starting microVM: cannot run %s: %v", plan.binary, err)
	}
	stderrDone := s.attach(qp, ch, cfg.vsock, out)
	if !s.adopt(qp) {
		qp.kill(time.Second)
		return nil, nil, fail("Internal error while starting microVM: the VMM is stopping")
	}
	if failure := s.awaitMachine(qp, r); failure != nil {
		return nil, nil, s.abandon(qp, stderrDone, r, failure, fail)
	}
	return qp, ch.serial, nil
}

// qemuChannels are the socket pairs and the pipe between the VMM and QEMU:
// the serial line, QMP, the vsock bridge's virtio-serial port (PUT /vsock
// only) and QEMU's stderr.
type qemuChannels struct {
	serial, qmp, agent    net.Conn // the VMM's ends (agent nil without vsock)
	serialQ, qmpQ, agentQ *os.File // QEMU's ends
	stderrR, stderrW      *os.File
}

// openChannels opens the channels, the agent port's if agent; on failure
// it closes what it opened.
func openChannels(agent bool) (*qemuChannels, error) {
	ch := &qemuChannels{}
	var err error
	if ch.serial, ch.serialQ, err = socketPair("serial"); err != nil {
		return nil, err
	}
	if ch.qmp, ch.qmpQ, err = socketPair("qmp"); err != nil {
		ch.closeVMMEnds()
		ch.closeQEMUEnds()
		return nil, err
	}
	if agent {
		if ch.agent, ch.agentQ, err = socketPair("agent"); err != nil {
			ch.closeVMMEnds()
			ch.closeQEMUEnds()
			return nil, err
		}
	}
	if ch.stderrR, ch.stderrW, err = os.Pipe(); err != nil {
		ch.closeVMMEnds()
		ch.closeQEMUEnds()
		return nil, err
	}
	return ch, nil
}

// closeQEMUEnds closes QEMU's ends: QEMU inherited them, or will never run.
func (ch *qemuChannels) closeQEMUEnds() {
	for _, f := range []*os.File{ch.stderrW, ch.serialQ, ch.qmpQ, ch.agentQ} {
		if f != nil {
			f.Close()
		}
	}
}

// closeVMMEnds closes the VMM's ends, when QEMU could not be started.
func (ch *qemuChannels) closeVMMEnds() {
	for _, c := range []net.Conn{ch.serial, ch.qmp, ch.agent} {
		if c != nil {
			c.Close()
		}
	}
	if ch.stderrR != nil {
		ch.stderrR.Close()
	}
}

// attach connects the VMM's ends to a spawned QEMU: the vsock bridge, the
// reader of QEMU's stderr, the serial pump (to out) and QMP. The returned
// channel is closed once QEMU's stderr was read to its end.
func (s *supervisor) attach(qp *qemuProc, ch *qemuChannels, vs *vsockCfg, out int) chan struct{} {
	if ch.agent != nil {
		// Created now so that VSERPORT_CHANGE events find it; it starts
		// carrying connections once QEMU is up.
		qp.vsock = newVsockBridge(vs.ln, ch.agent, s.log)
	}
	qp.stderr = &stderrTail{}
	stderrDone := make(chan struct{})
	go func() { qp.stderr.consume(ch.stderrR, s.log); close(stderrDone) }()
	qp.serial = newSerialPump(ch.serial, out)
	qp.qmp = newQMP(ch.qmp, s.onQMPEvent)
	return stderrDone
}

// adopt makes qp the VMM's QEMU, and reports false when a signal is
// already ending the VMM (qp must then be killed).
func (s *supervisor) adopt(qp *qemuProc) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.proc = qp
	return !s.stopping
}

// awaitMachine waits until QEMU answers QMP (it has built the machine) or
// dies, then, for a restore, loads the snapshot's memory into it.
func (s *supervisor) awaitMachine(qp *qemuProc, r *restoreSpec) error {
	hs := make(chan error, 1)
	go func() { hs <- qp.qmp.handshake(startTimeout) }()
	var failure error
	select {
	case failure = <-hs:
	case <-qp.done:
		failure = errQMPClosed
	}
	if failure == nil && r != nil {
		failure = s.incoming(qp, r)
	}
	return failure
}

// abandon ends a QEMU that failed to build the machine (or to load the
// snapshot) and says why, in QEMU's own words when it left any.
func (s *supervisor) abandon(qp *qemuProc, stderrDone chan struct{}, r *restoreSpec, failure error, fail errorf) *apiError {
	qp.kill(2 * time.Second)
	select {
	case <-stderrDone:
	case <-time.After(time.Second):
	}
	s.mu.Lock()
	s.proc = nil
	s.mu.Unlock()
	qp.qmp.close()
	if qp.vsock != nil {
		qp.vsock.serial.Close() // uds_path stays bound for another try
	}
	why := qp.stderr.String()
	if r != nil {
		if why != "" {
			return fail("Failed to restore from snapshot: %v (QEMU: %s)", failure, why)
		}
		return fail("Failed to restore from snapshot: %v", failure)
	}
	if why == "" {
		why = failure.Error()
	}
	return fail("Internal error while starting microVM: QEMU failed: %s", why)
}

// run lets a started QEMU run: the vsock bridge (vs) starts carrying host
// connections (agentOpen: the restored guest has its port open already),
// stdin reaches ttyS0 when it may (stdinToConsole: no PUT /serial file),
// metrics are flushed periodically, and watch ends the VMM with QEMU.
func (s *supervisor) run(qp *qemuProc, serial net.Conn, vs *vsockCfg, agentOpen, stdinToConsole bool) {
	if qp.vsock != nil {
		qp.vsock.start()
		if agentOpen {
			// The guest's port was open when the snapshot was taken, and
			// the restored guest does not open it again.
			qp.vsock.guestPort(true)
		}
		s.log.info("fc_vmm", "vsock: guest port %d carried over virtio-serial port %s; host socket %s", agentVsockPort, agentPortName, vs.path)
	}
	if isTTY, ok := stdinForwardable(); ok && stdinToConsole {
		if isTTY {
			restore := rawTerminal(0)
			s.mu.Lock()
			s.ttyRestore = restore
			s.mu.Unlock()
		}
		go forwardStdin(serial)
	}
	go s.watch(qp)
	go s.flushMetricsPeriodically(qp)
}

func (s *supervisor) flushMetricsPeriodically(qp *qemuProc) {
	t := time.NewTicker(metricsInterval)
	defer t.Stop()
	for {
		select {
		case <-qp.done:
			return
		case <-t.C:
			s.met.flush(s.log.missed.Load())
		}
	}
}

// ---- the running guest ----

// setPaused stops (pause) or continues the guest's vCPUs; a powered-off
// guest stays stopped. errNotRunning: there is no QEMU.
func (s *supervisor) setPaused(pause bool) error {
	q := s.currentProc()
	if q == nil {
		return errNotRunning
	}
	cmd := "cont"
	if pause {
		cmd = "stop"
	}
	if cmd == "cont" && s.poweredOff.Load() {
		return nil
	}
	_, err := q.qmp.execute(cmd, nil, qmpTimeout)
	return err
}

// sendCtrlAltDel presses Ctrl+Alt+Del on the guest's AT keyboard (QEMU's
// i8042) and returns at once, like Firecracker.
func (s *supervisor) sendCtrlAltDel() {
	q := s.currentProc()
	if q == nil {
		return
	}
	go func() {
		keys := []map[string]string{{"type": "qcode", "data": "ctrl"}, {"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "delete"}}
		if _, err := q.qmp.execute("send-key", map[string]any{"keys": keys}, qmpTimeout); err != nil {
			s.log.warn("fc_vmm", "Failed to send Ctrl+Alt+Del: %v", err)
		}
	}()
}

func (s *supervisor) onQMPEvent(name string, data json.RawMessage) {
	var d struct {
		Guest  bool   `json:"guest"`
		Reason string `json:"reason"`
	}
	json.Unmarshal(data, &d)
	switch name {
	case "SHUTDOWN":
		s.lastReason.Store(d.Reason)
		switch d.Reason {
		case "guest-shutdown":
			// Firecracker keeps running after a guest power-off, its vCPUs
			// stopped; QEMU (-no-shutdown) does the same.
			s.poweredOff.Store(true)
			s.vsockGuestPort(false)
			s.log.info("fc_vmm", "The guest powered off; the VMM keeps running.")
		case "guest-reset", "guest-panic":
			// A reboot (reboot=k through the i8042, a triple fault, a panic
			// with panic=N) ends Firecracker with status 0. -no-shutdown
			// makes QEMU pause on it rather than exit, so end QEMU here.
			s.guestReset.Store(true)
			s.log.info("fc_vmm", "The guest rebooted (%s).", d.Reason)
			go s.endAfterReset()
		}
	case "VSERPORT_CHANGE":
		var p struct {
			ID   string `json:"id"`
			Open bool   `json:"open"`
		}
		json.Unmarshal(data, &p)
		if p.ID == agentPortID {
			s.log.debug("fc_vmm", "vsock: guest port %s open: %v", agentPortName, p.Open)
			s.vsockGuestPort(p.Open)
		}
	case "GUEST_PANICKED":
		s.log.warn("fc_vmm", "The guest kernel panicked.")
	default:
		s.log.debug("fc_vmm", "QEMU event %s %s", name, string(data))
	}
}

// vsockGuestPort tells the vsock bridge whether the guest has its port open.
func (s *supervisor) vsockGuestPort(open bool) {
	if q := s.currentProc(); q != nil && q.vsock != nil {
		q.vsock.guestPort(open)
	}
}

// ---- the end ----

// endAfterReset asks QEMU to quit after a guest reset, and kills it if it
// does not within two seconds. watch then exits 0.
func (s *supervisor) endAfterReset() {
	q := s.currentProc()
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
func (s *supervisor) watch(qp *qemuProc) {
	<-qp.done
	s.mu.Lock()
	stopping := s.stopping
	s.mu.Unlock()
	if stopping {
		return // a signal is ending the VMM; the handler finishes the job
	}
	qp.serial.drain(serialDrainLimit)
	select { // let the last QMP events (the shutdown reason) arrive
	case <-qp.qmp.closed:
	case <-time.After(time.Second):
	}
	reason, _ := s.lastReason.Load().(string)
	code := exitOK
	switch {
	case s.guestReset.Load():
		s.log.info("fc_vmm", "Vmm is stopping.")
	case qp.status.Signaled():
		code = exitGeneric
		s.log.errorf("fc_vmm", "QEMU was killed by signal %d (%s); %s", int(qp.status.Signal()), qp.status.Signal(), qp.stderr.String())
	case qp.status.ExitStatus() != 0:
		code = exitGeneric
		s.log.errorf("fc_vmm", "QEMU exited with status %d: %s", qp.status.ExitStatus(), qp.stderr.String())
	case reason == "host-signal" || reason == "host-qmp-quit" || reason == "host-ui":
		code = exitGeneric
		s.log.errorf("fc_vmm", "QEMU was stopped from the host (%s)", reason)
	default:
		s.log.info("fc_vmm", "Vmm is stopping.")
	}
	s.met.flush(s.log.missed.Load())
	s.finish(code)
}

// finish restores the terminal and exits.
func (s *supervisor) finish(code int) {
	s.restoreTerminal()
	s.exit(code)
}

func (s *supervisor) restoreTerminal() {
	s.mu.Lock()
	restore := s.ttyRestore
	s.mu.Unlock()
	if restore != nil {
		restore()
	}
}

// onSignal handles SIGTERM, SIGINT, SIGQUIT (kill QEMU, then die by the same
// signal) and SIGHUP (kill QEMU, exit 156).
func (s *supervisor) onSignal(sig syscall.Signal) {
	qp := s.beginStop()
	// Wait until QEMU is reaped: its tap and disks are free once the VMM
	// is gone (a restore may open the same tap at once).
	qp.kill(5 * time.Second)
	s.restoreTerminal()
	if sig == syscall.SIGHUP {
		s.log.info("fc_main", "Received SIGHUP; exiting.")
		s.exit(exitSIGHUP)
		return
	}
	dieBySignal(sig)
}

// beginStop marks the VMM as ending and stops its API at once: Firecracker
// dies on the signal, so no request may succeed after it, even while QEMU
// is being taken down. It returns the QEMU to end.
func (s *supervisor) beginStop() *qemuProc {
	s.mu.Lock()
	s.stopping = true
	qp, ln := s.proc, s.apiLn
	s.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	return qp
}

func (s *supervisor) isStopping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopping
}

// setAPIListener records the API socket's listener, which beginStop closes.
func (s *supervisor) setAPIListener(ln net.Listener) {
	s.mu.Lock()
	s.apiLn = ln
	s.mu.Unlock()
}
