package fcvmm

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/hostcheck/kvmprobe"
	"golang.org/x/sys/unix"
)

// Firecracker's default guest command line (v1.13+), used when boot_args is
// absent.
const defaultBootArgs = "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce"

// cmdlineMax is Firecracker's x86_64 CMDLINE_MAX_SIZE, NUL terminator
// included.
const cmdlineMax = 2048

// checkCmdline applies linux-loader's rules for a kernel command line.
func checkCmdline(s string) error {
	for _, c := range []byte(s) {
		if c < 0x20 || c > 0x7e {
			return errors.New("String contains a non-printable ASCII character.")
		}
	}
	if len(s)+1 > cmdlineMax {
		return errors.New("Inserting string would make command line too long.")
	}
	return nil
}

// guestCmdline builds the command line the guest gets: boot_args verbatim
// (Firecracker's default when absent), then what Firecracker appends before
// any " -- " init arguments: pci=off and the root device, plus
// tsc_early_khz when the guest runs under TCG (see hostTSCkHz).
func guestCmdline(bootArgs *string, root *driveCfg, tscKHz int) (string, error) {
	base := defaultBootArgs
	if bootArgs != nil {
		base = *bootArgs
	}
	kernel, initArgs, hasInit := strings.Cut(base, " -- ")
	var extra []string
	extra = append(extra, "pci=off")
	if root != nil {
		if root.partuuid != "" {
			extra = append(extra, "root=PARTUUID="+root.partuuid)
		} else {
			extra = append(extra, "root=/dev/vda")
		}
		if root.readOnly {
			extra = append(extra, "ro")
		} else {
			extra = append(extra, "rw")
		}
	}
	if tscKHz > 0 && !strings.Contains(" "+kernel+" ", " tsc_early_khz=") {
		extra = append(extra, "tsc_early_khz="+strconv.Itoa(tscKHz))
	}
	out := strings.TrimRight(kernel, " ")
	for _, e := range extra {
		if out != "" {
			out += " "
		}
		out += e
	}
	if hasInit {
		out += " -- " + initArgs
	}
	if err := checkCmdline(out); err != nil {
		return "", err
	}
	return out, nil
}

// launchPlan is everything QEMU is started with.
type launchPlan struct {
	binary string
	args   []string
	files  []*os.File // ExtraFiles: fd 3, 4, ...
}

// qemuBinary is qemu-system-x86_64 from PATH unless BANGER_QEMU names
// another.
func qemuBinary() string {
	if b := os.Getenv("BANGER_QEMU"); b != "" {
		return b
	}
	return "qemu-system-x86_64"
}

// useKVM decides the accelerator: BANGER_VMM_ACCEL=kvm|tcg forces it,
// otherwise KVM when /dev/kvm can run a stock kernel (kvmprobe.Usable).
func useKVM() bool {
	switch strings.ToLower(os.Getenv("BANGER_VMM_ACCEL")) {
	case "kvm":
		return true
	case "tcg":
		return false
	}
	return kvmprobe.Usable()
}

// planLaunch builds QEMU's argv. serial and qmp are QEMU's ends of the two
// socket pairs, agent that of the vsock bridge's virtio-serial port (nil
// without a vsock device); every host file is passed as an inherited descriptor that
// the VMM opened at PUT time, so no API-supplied path (and never the API
// socket) appears in QEMU's command line.
func planLaunch(v *vmConfig, serial, qmpSock, agent *os.File, kvm bool, cmdline string) *launchPlan {
	p := &launchPlan{binary: qemuBinary()}
	fd := func(f *os.File) int {
		p.files = append(p.files, f)
		return 2 + len(p.files)
	}
	accel, cpu := "tcg", "max"
	if kvm {
		accel, cpu = "kvm", "host"
	}
	a := []string{
		"-name", v.id,
		"-M", "microvm",
		"-accel", accel, "-cpu", cpu,
		"-m", strconv.FormatInt(v.machine.MemSizeMib, 10),
		"-smp", strconv.FormatInt(v.machine.VcpuCount, 10),
		"-nodefaults", "-no-user-config", "-display", "none",
		"-no-reboot", "-no-shutdown",
		"-chardev", fmt.Sprintf("socket,id=ser0,fd=%d", fd(serial)),
		"-serial", "chardev:ser0",
		"-chardev", fmt.Sprintf("socket,id=qmp0,fd=%d", fd(qmpSock)),
		"-mon", "chardev=qmp0,mode=control",
		"-kernel", fmt.Sprintf("/dev/fd/%d", fd(v.boot.kernel)),
	}
	if v.boot.initrd != nil {
		a = append(a, "-initrd", fmt.Sprintf("/dev/fd/%d", fd(v.boot.initrd)))
	}
	a = append(a, "-append", cmdline)
	// The AT keyboard controller: SendCtrlAltDel and reboot=k go through it.
	// microvm lists it in its ACPI DSDT (PNP0303), so the guest finds it.
	a = append(a, "-device", "i8042")
	for i, d := range v.drives {
		set := i + 1
		if d.rw != nil {
			a = append(a, "-add-fd", fmt.Sprintf("fd=%d,set=%d", fd(d.rw), set))
		}
		a = append(a, "-add-fd", fmt.Sprintf("fd=%d,set=%d", fd(d.ro), set))
		cache := "unsafe"
		if d.cacheType == "Writeback" {
			cache = "writeback"
		}
		ro := "off"
		if d.readOnly {
			ro = "on"
		}
		a = append(a,
			"-drive", fmt.Sprintf("file=/dev/fdset/%d,if=none,id=drive%d,format=%s,cache=%s,readonly=%s,%s", set, i, d.formatName(), cache, ro, driveLockingOpts(d)),
			"-device", fmt.Sprintf("virtio-blk-device,drive=drive%d", i))
	}
	for i, n := range v.nets {
		a = append(a,
			"-netdev", fmt.Sprintf("tap,id=net%d,fd=%d,vhost=off", i, fd(n.tap)),
			"-device", fmt.Sprintf("virtio-net-device,netdev=net%d,mac=%s", i, n.mac))
	}
	a = append(a, "-device", "virtio-rng-device")
	if agent != nil {
		// PUT /vsock: one virtio-serial port, named for the guest to find,
		// whose chardev is a socket pair with the VMM (see vsock.go).
		a = append(a,
			"-chardev", fmt.Sprintf("socket,id=%schr,fd=%d", agentPortID, fd(agent)),
			"-device", "virtio-serial-device,id=vser0",
			"-device", fmt.Sprintf("virtserialport,bus=vser0.0,chardev=%schr,name=%s,id=%s", agentPortID, agentPortName, agentPortID))
	}
	p.args = a
	return p
}

// formatName is the drive's QEMU format: raw unless open found the
// user.banger.format attribute (see qcow2.go).
func (d *driveCfg) formatName() string {
	if d.format == "" {
		return formatRaw
	}
	return d.format
}

// driveLockingOpts turns QEMU's image locking off on every file of a drive,
// as Firecracker takes no locks: the file itself, and for a qcow2 drive
// each file of its backing chain, which QEMU opens by the absolute names in
// the headers. Each backing file's format is pinned to the one its parent's
// header names (qcow2Chain checked there is one), so QEMU never probes a
// file's content.
func driveLockingOpts(d *driveCfg) string {
	s := "file.locking=off"
	if d.formatName() != formatQcow2 {
		return s
	}
	prefix := ""
	for _, f := range d.backing {
		prefix += "backing."
		s += "," + prefix + "driver=" + f + "," + prefix + "file.locking=off"
	}
	return s
}

// qemuProc is a running QEMU.
type qemuProc struct {
	cmd    *exec.Cmd
	pid    int
	done   chan struct{} // closed once QEMU was reaped
	status syscall.WaitStatus
	stderr *stderrTail
	qmp    *qmp
	serial *serialPump
	vsock  *vsockBridge // nil without PUT /vsock
}

// stderrTail keeps the last lines QEMU wrote to stderr and logs each one.
type stderrTail struct {
	mu    sync.Mutex
	lines []string
}

func (s *stderrTail) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.lines, "; ")
}

func (s *stderrTail) consume(f *os.File, log *logger) {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		s.mu.Lock()
		s.lines = append(s.lines, line)
		if len(s.lines) > 20 {
			s.lines = s.lines[1:]
		}
		s.mu.Unlock()
		log.warn("fc_vmm", "qemu: %s", line)
	}
	f.Close()
}

// spawn starts QEMU as the VMM's child with PR_SET_PDEATHSIG=SIGKILL.
//
// Linux delivers the parent-death signal when the *thread* that forked the
// child exits, not only the process, and Go threads can exit (a goroutine
// that ends while locked to its thread takes the thread with it). So the
// fork happens on a goroutine locked to its own OS thread, which then stays
// in wait4(2) for QEMU and only ends once QEMU was reaped: the signal can
// only fire when the whole VMM dies.
func spawn(p *launchPlan, stderrW *os.File) (*qemuProc, error) {
	cmd := exec.Command(p.binary, p.args...)
	cmd.ExtraFiles = p.files
	cmd.Stderr = stderrW
	cmd.Env = os.Environ()
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Pdeathsig: syscall.SIGKILL,
		Setpgid:   true, // a terminal's Ctrl-C reaches the VMM, which decides
	}
	qp := &qemuProc{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: this thread must outlive QEMU (see above).
		if err := cmd.Start(); err != nil {
			started <- err
			close(qp.done)
			return
		}
		qp.pid = cmd.Process.Pid
		started <- nil
		var ws syscall.WaitStatus
		for {
			_, err := syscall.Wait4(qp.pid, &ws, 0, nil)
			if err == syscall.EINTR {
				continue
			}
			break
		}
		qp.status = ws
		close(qp.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return qp, nil
}

// kill SIGKILLs QEMU and waits (at most timeout) until it was reaped.
func (q *qemuProc) kill(timeout time.Duration) {
	if q == nil || q.pid <= 0 {
		return
	}
	select {
	case <-q.done:
		return
	default:
	}
	unix.Kill(q.pid, unix.SIGKILL)
	select {
	case <-q.done:
	case <-time.After(timeout):
	}
}

// socketPair returns a connected pair of Unix stream sockets: the VMM's end
// as a net.Conn and QEMU's end as a file to inherit.
func socketPair(name string) (net.Conn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	mine := os.NewFile(uintptr(fds[0]), name+"-vmm")
	conn, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	return conn, os.NewFile(uintptr(fds[1]), name+"-qemu"), nil
}
