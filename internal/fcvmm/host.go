package fcvmm

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// hostInfo is what InstanceStart needs to know about the host: the
// accelerator and, under TCG, the TSC rate for the guest's command line.
type hostInfo struct {
	kvm    bool
	tscKHz int
}

var (
	hostOnce sync.Once
	hostVal  hostInfo
)

// hostFacts reads the host's facts once per process. Main starts reading
// them in the background as the VMM starts (reading the kernel log for the
// TSC rate takes milliseconds), so InstanceStart normally finds them ready.
func hostFacts() hostInfo {
	hostOnce.Do(func() {
		hostVal.kvm = useKVM()
		if !hostVal.kvm {
			hostVal.tscKHz = hostTSCkHz()
		}
	})
	return hostVal
}

var tscDetected = regexp.MustCompile(`tsc: (?:Refined TSC clocksource calibration: |Detected )([0-9]+)\.([0-9]{1,3})[0-9]* MHz`)

// hostTSCkHz returns the host's TSC rate in kHz: the kernel's last
// "tsc: Detected/Refined ... MHz" line from the kernel log, else "cpu MHz"
// from /proc/cpuinfo; 0 when neither is available. Under TCG the guest's TSC
// runs at the host's rate, and -M microvm guests need it on the command line
// (tsc_early_khz=), having neither HPET nor ACPI PM timer to calibrate with.
func hostTSCkHz() int {
	buf := make([]byte, 1<<20)
	if n, err := unix.Klogctl(unix.SYSLOG_ACTION_READ_ALL, buf); err == nil && n > 0 {
		if k := tscFromKlog(buf[:n]); k > 0 {
			return k
		}
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		defer f.Close()
		return tscFromCPUInfo(f)
	}
	return 0
}

func tscFromKlog(log []byte) int {
	k := 0
	for _, m := range tscDetected.FindAllSubmatch(log, -1) {
		mhz, _ := strconv.Atoi(string(m[1]))
		frac := string(m[2]) + strings.Repeat("0", 3-len(m[2]))
		f, _ := strconv.Atoi(frac)
		k = mhz*1000 + f
	}
	return k
}

func tscFromCPUInfo(r io.Reader) int {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(name) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil || mhz <= 0 {
			return 0
		}
		return int(mhz*1000 + 0.5)
	}
	return 0
}

// kernelImageError is the reason a kernel cannot be booted, in the words
// Firecracker uses for an image its ELF loader refuses.
type kernelImageError struct{ detail string }

func (e *kernelImageError) Error() string {
	return "Cannot load kernel due to invalid memory configuration or invalid kernel image: " + e.detail
}

// checkKernel accepts what Firecracker's x86_64 loader accepts and QEMU's
// microvm can boot: a 64-bit x86 ELF vmlinux. QEMU boots an ELF only through
// its PVH entry point, so the PVH note (XEN_ELFNOTE_PHYS32_ENTRY) is required
// too; Firecracker could also enter such a kernel the 64-bit way.
func checkKernel(f *os.File) error {
	var magic [4]byte
	if _, err := f.ReadAt(magic[:], 0); err != nil || string(magic[:]) != elf.ELFMAG {
		return &kernelImageError{"Kernel Loader: failed to load ELF kernel image"}
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return &kernelImageError{"Kernel Loader: failed to load ELF kernel image: " + err.Error()}
	}
	if ef.Class != elf.ELFCLASS64 || ef.Machine != elf.EM_X86_64 {
		return &kernelImageError{"Kernel Loader: failed to load ELF kernel image: not an x86_64 ELF64 kernel"}
	}
	if _, ok := pvhEntry(ef); !ok {
		return &kernelImageError{"Kernel Loader: the ELF kernel has no PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY), which banger-vmm needs to boot it under QEMU"}
	}
	return nil
}

// pvhEntry finds the Xen PHYS32_ENTRY note of an ELF kernel.
func pvhEntry(ef *elf.File) (uint64, bool) {
	const xenElfnotePhys32Entry = 18
	for _, p := range ef.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data, err := io.ReadAll(io.LimitReader(p.Open(), 1<<20))
		if err != nil {
			continue
		}
		for len(data) >= 12 {
			namesz := ef.ByteOrder.Uint32(data[0:4])
			descsz := ef.ByteOrder.Uint32(data[4:8])
			typ := ef.ByteOrder.Uint32(data[8:12])
			off := 12 + int(align4(namesz))
			end := off + int(align4(descsz))
			if off > len(data) || off+int(descsz) > len(data) {
				break
			}
			name := bytes.TrimRight(data[12:12+int(namesz)], "\x00")
			if string(name) == "Xen" && typ == xenElfnotePhys32Entry && descsz >= 4 {
				desc := data[off : off+int(descsz)]
				if descsz >= 8 {
					return ef.ByteOrder.Uint64(desc), true
				}
				return uint64(ef.ByteOrder.Uint32(desc)), true
			}
			if end > len(data) {
				break
			}
			data = data[end:]
		}
	}
	return 0, false
}

func align4(n uint32) uint32 { return (n + 3) &^ 3 }

// TUN/TAP constants (linux/if_tun.h).
const (
	iffTap      = 0x0002
	iffNoPI     = 0x1000
	iffVnetHdr  = 0x4000
	tunSetIff   = 0x400454ca
	ifNameSize  = 16
	ifreqLength = 40
)

// openTap opens the existing tap device name as Firecracker does
// (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR on /dev/net/tun). The descriptor is what
// QEMU gets at InstanceStart.
func openTap(name string) (*os.File, error) {
	if len(name) >= ifNameSize || name == "" || strings.ContainsRune(name, 0) {
		return nil, errors.New("Open tap device failed: Invalid interface name")
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("Open tap device failed: Couldn't open /dev/net/tun: %s", rustIOError(err))
	}
	var ifr [ifreqLength]byte
	copy(ifr[:ifNameSize-1], name)
	binary.LittleEndian.PutUint16(ifr[ifNameSize:], iffTap|iffNoPI|iffVnetHdr)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), tunSetIff, uintptr(unsafe.Pointer(&ifr[0]))); errno != 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("Open tap device failed: Error while creating ifreq structure: %s. Invalid TUN/TAP Backend provided by %s. Check our documentation on setting up the network devices.", rustIOError(errno), name)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}
