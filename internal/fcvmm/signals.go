package fcvmm

import (
	"os"
	"os/signal"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// kernelSigaction is struct sigaction as rt_sigaction(2) takes it on
// x86_64 and arm64.
type kernelSigaction struct {
	handler  uintptr
	flags    uint64
	restorer uintptr
	mask     uint64
}

// dieBySignal ends the process by sig with the kernel's default action, so
// the parent's wait(2) sees "killed by sig" (what Firecracker, which has no
// handler for SIGTERM, SIGINT, SIGQUIT or SIGABRT, shows). Go's runtime is
// bypassed on purpose: its own SIGQUIT handler would dump goroutines and
// exit 2 instead.
func dieBySignal(sig syscall.Signal) {
	signal.Reset(sig)
	act := kernelSigaction{handler: 0} // SIG_DFL
	unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&act)), 0, 8, 0, 0)
	var set unix.Sigset_t
	set.Val[0] = 1 << (uint(sig) - 1)
	unix.RawSyscall6(unix.SYS_RT_SIGPROCMASK, unix.SIG_UNBLOCK, uintptr(unsafe.Pointer(&set)), 0, 8, 0, 0)
	unix.Kill(os.Getpid(), sig)
	unix.Tgkill(os.Getpid(), unix.Gettid(), sig)
	// A default action of "terminate" cannot be survived; should the signal
	// somehow be ignored, still do not pretend to have exited cleanly.
	os.Exit(128 + int(sig))
}

// The signals the VMM reacts to.
var (
	fatalSignals = []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT}
	hupSignal    = syscall.SIGHUP
)
