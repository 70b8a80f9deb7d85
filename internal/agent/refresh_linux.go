package agent

import (
	"encoding/binary"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// addEntropy credits b to the kernel's input pool (RNDADDENTROPY, which
// needs CAP_SYS_ADMIN: the agent runs as root) and reseeds the CRNG
// (RNDRESEEDCRNG), so the next read of /dev/urandom or getrandom no longer
// follows from the snapshot's state.
func addEntropy(b []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+len(b))
	binary.NativeEndian.PutUint32(info[0:], uint32(len(b)*8))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(b)))
	copy(info[8:], b)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0]))); e != 0 {
		return e
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); e != 0 && e != unix.EINVAL {
		return e // EINVAL: a kernel before 4.17 without the ioctl; the credit alone reseeds soon
	}
	return nil
}

// setClock steps CLOCK_REALTIME to t and returns how far it moved.
func setClock(t time.Time) (int64, error) {
	before := time.Now()
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return 0, err
	}
	return t.Sub(before).Nanoseconds(), nil
}
