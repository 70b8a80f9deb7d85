package guestbuild

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestBootGuest builds (or reuses) the guest in the test cache, boots it
// twice under `qemu-system-x86_64 -M microvm -accel tcg` on the same disks
// (first the ELF vmlinux via PVH, then the bzImage), and checks the guest
// contract over SSH through slirp (restrict=on, hostfwd on 127.0.0.1 only).
func TestBootGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM; skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	cache := testCacheDir()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	t0 := time.Now()
	var prog bytes.Buffer
	a, err := Ensure(ctx, Options{CacheDir: cache, Progress: &prog})
	if err != nil {
		t.Fatalf("Ensure: %v\n%s", err, prog.String())
	}
	first := time.Since(t0)
	t1 := time.Now()
	if b, err := Ensure(ctx, Options{CacheDir: cache}); err != nil || b != a {
		t.Fatalf("second Ensure: %+v %v", b, err)
	}
	t.Logf("Ensure: %v (progress:\n%s), again: %v", first, strings.TrimSpace(prog.String()), time.Since(t1))
	t.Logf("artifacts: %+v", a)
	if v, err := os.ReadFile(a.Vmlinux); err != nil {
		t.Fatal(err)
	} else if _, err := PVHEntry(v); err != nil {
		t.Fatalf("published vmlinux: %v", err)
	}

	dir := t.TempDir()
	root := filepath.Join(dir, "root.ext4")
	if err := copySparse(a.Rootfs, root); err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := ssh.NewSignerFromKey(key)
	if err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(dir, "home")
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	os.WriteFile(filepath.Join(home, ".ssh", "authorized_keys"), ssh.MarshalAuthorizedKey(signer.PublicKey()), 0o600)
	os.WriteFile(filepath.Join(home, "hello.txt"), []byte("from the work disk\n"), 0o644)
	work := filepath.Join(dir, "work.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-d", home, work, "32M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 work disk: %v %s", err, out)
	}

	tsc := hostTSCkHz(t)
	boot := func(name, kernel, mode, end string) (bootID, hostKey string) {
		t.Helper()
		port := freePort(t)
		cmdline := fmt.Sprintf("console=ttyS0 reboot=k panic=1 quiet root=/dev/vda %s tsc_early_khz=%d "+
			"banger.ip=10.0.2.15/24 banger.gw=10.0.2.2 banger.hostname=bg-%s banger.dns=10.0.2.3", mode, tsc, name)
		vm := startQEMU(t, ctx, qemu, filepath.Join(dir, name+"-serial.log"),
			"-M", "microvm", "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1",
			"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
			"-kernel", kernel, "-initrd", a.Initrd, "-append", cmdline,
			"-drive", "file="+root+",if=none,id=d0,format=raw,cache=unsafe", "-device", "virtio-blk-device,drive=d0",
			"-drive", "file="+work+",if=none,id=d1,format=raw,cache=unsafe", "-device", "virtio-blk-device,drive=d1",
			"-netdev", fmt.Sprintf("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:%d-:22", port),
			"-device", "virtio-net-device,netdev=n0", "-device", "virtio-rng-device")
		ready := vm.waitLine(t, "BANGER-READY ", 120*time.Second)
		readyAt := time.Since(vm.start)
		m := regexp.MustCompile(`^BANGER-READY boot_id=([0-9a-f-]{36})$`).FindStringSubmatch(ready)
		if m == nil {
			t.Fatalf("%s: malformed ready line %q", name, ready)
		}
		bootID = m[1]
		var keys []string
		for _, l := range strings.Split(vm.log(), "\n") {
			if k, ok := strings.CutPrefix(l, "BANGER-HOSTKEY "); ok {
				keys = append(keys, k)
			}
		}
		hostKey = strings.Join(keys, "\n")
		if len(keys) != 2 || !strings.HasPrefix(keys[0], "ssh-ed25519 ") || !strings.HasPrefix(keys[1], "ecdsa-sha2-nistp256 ") {
			t.Errorf("%s: BANGER-HOSTKEY lines: %q", name, keys)
		}

		var seenKey string
		client, err := ssh.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port), &ssh.ClientConfig{
			User: "root",
			Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
			HostKeyCallback: func(_ string, _ net.Addr, k ssh.PublicKey) error {
				seenKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
				return nil
			},
			Timeout: 20 * time.Second,
		})
		if err != nil {
			t.Fatalf("%s: ssh: %v\nserial:\n%s", name, err, vm.log())
		}
		defer client.Close()
		sshAt := time.Since(vm.start)
		if !slices.Contains(keys, seenKey) {
			t.Errorf("%s: ssh host key %q, console announced %q", name, seenKey, keys)
		}
		// OpenSSH's preference (ed25519 first) must work too, and a Go client
		// restricted to ed25519 must see the announced ed25519 key.
		if c2, err := ssh.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port), &ssh.ClientConfig{
			User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
			HostKeyAlgorithms: []string{ssh.KeyAlgoED25519},
			HostKeyCallback: func(_ string, _ net.Addr, k ssh.PublicKey) error {
				if got := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))); got != keys[0] {
					return fmt.Errorf("ed25519 key %q, announced %q", got, keys[0])
				}
				return nil
			},
			Timeout: 20 * time.Second,
		}); err != nil {
			t.Errorf("%s: ssh with ed25519 host key: %v", name, err)
		} else {
			c2.Close()
		}
		out, err := runSSH(client, "cat /proc/sys/kernel/random/boot_id")
		if err != nil || strings.TrimSpace(out) != bootID {
			t.Errorf("%s: boot_id over ssh = %q, %v; ready line said %s", name, out, err, bootID)
		}
		_, err = runSSH(client, "sh -c 'exit 42'")
		var ee *ssh.ExitError
		if !errors.As(err, &ee) || ee.ExitStatus() != 42 {
			t.Errorf("%s: sh -c 'exit 42': %v, want exit status 42", name, err)
		}
		out, err = runSSH(client, `set -e
hostname
cat /etc/resolv.conf
grep ' /root ' /proc/mounts | cut -d' ' -f1,3
cat /root/hello.txt
ip -4 addr show eth0 | grep -o 'inet [0-9./]*'
ip route | grep default
for c in sync reboot poweroff cat sh tar mount df dd; do command -v $c >/dev/null || echo "missing $c"; done
df / /root >/dev/null
dd if=/dev/zero of=/tmp/z bs=1k count=8 2>/dev/null
tar -cf /tmp/t.tar -C /etc passwd group && tar -tf /tmp/t.tar | tr '\n' ' '; echo
grep -c '^devpts /dev/pts' /proc/mounts
grep -E '^tmpfs /(run|tmp) ' /proc/mounts | cut -d' ' -f2 | tr '\n' ' '; echo
echo "$PATH"
echo "root mount: $(awk '$2 == "/" { print $1, substr($4, 1, 2) }' /proc/mounts)"
sync`)
		if err != nil {
			t.Errorf("%s: checks: %v\n%s", name, err, out)
		}
		want := []string{"bg-" + name, "nameserver 10.0.2.3", "/dev/vdb ext4", "from the work disk",
			"inet 10.0.2.15/24", "default via 10.0.2.2", "passwd group", "\n1\n", "/run /tmp",
			"root mount: /dev/vda " + mode}
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", name, w, out)
			}
		}
		if strings.Contains(out, "missing") {
			t.Errorf("%s: %s", name, out)
		}
		// A pty session (dropbear needs devpts for it).
		if s, err := client.NewSession(); err == nil {
			if err := s.RequestPty("xterm", 24, 80, ssh.TerminalModes{}); err != nil {
				t.Errorf("%s: pty: %v", name, err)
			} else if o, err := s.CombinedOutput("tty"); err != nil || !strings.HasPrefix(string(o), "/dev/pts/") {
				t.Errorf("%s: tty in a pty session = %q, %v", name, o, err)
			}
			s.Close()
		}

		t2 := time.Now()
		s, _ := client.NewSession()
		s.Start(end) // the connection dies with the guest
		exitErr := vm.wait(60 * time.Second)
		if exitErr == errTimeout {
			t.Fatalf("%s: qemu still running 60s after %q\n%s", name, end, vm.log())
		}
		t.Logf("%s: BANGER-READY %.2fs, ssh %.2fs after launch; %q -> qemu exited (%v) in %.2fs",
			name, readyAt.Seconds(), sshAt.Seconds(), end, exitErr, time.Since(t2).Seconds())
		if n := strings.Count(vm.log(), "BANGER-READY"); n != 1 {
			t.Errorf("%s: %d BANGER-READY lines", name, n)
		}
		if strings.Contains(vm.log(), "BANGER-ERROR") || strings.Contains(vm.log(), "BANGER-WARN") {
			t.Errorf("%s: serial log has errors:\n%s", name, vm.log())
		}
		return bootID, hostKey
	}

	id1, key1 := boot("pvh", a.Vmlinux, "rw", "reboot -f")
	id2, key2 := boot("bzimage", a.Vmlinuz, "rw", "poweroff -f")
	id3, key3 := boot("readonly", a.Vmlinux, "ro", "reboot -f")
	if id1 == id2 || id2 == id3 {
		t.Errorf("boot_id repeated: %s %s %s", id1, id2, id3)
	}
	if key1 != key2 || key2 != key3 {
		t.Errorf("host keys changed across reboots of one disk: %q -> %q -> %q", key1, key2, key3)
	}
}

var errTimeout = errors.New("timeout")

type qemuVM struct {
	cmd   *exec.Cmd
	start time.Time
	lines chan string
	done  chan error
	mu    sync.Mutex
	buf   bytes.Buffer
}

func startQEMU(t *testing.T, ctx context.Context, qemu, logPath string, args ...string) *qemuVM {
	t.Helper()
	cmd := exec.CommandContext(ctx, qemu, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	vm := &qemuVM{cmd: cmd, lines: make(chan string, 4096), done: make(chan error, 1)}
	vm.start = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			l := strings.TrimRight(sc.Text(), "\r")
			fmt.Fprintln(logf, l)
			vm.mu.Lock()
			vm.buf.WriteString(l + "\n")
			vm.mu.Unlock()
			select {
			case vm.lines <- l:
			default:
			}
		}
		logf.Close()
		close(vm.lines)
		vm.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
		}
	})
	return vm
}

func (vm *qemuVM) log() string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.buf.String()
}

// waitLine returns the first serial line starting with prefix.
func (vm *qemuVM) waitLine(t *testing.T, prefix string, d time.Duration) string {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case l, ok := <-vm.lines:
			if !ok {
				t.Fatalf("qemu ended before %q:\n%s", prefix, vm.log())
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-timer.C:
			t.Fatalf("no %q after %v:\n%s", prefix, d, vm.log())
		}
	}
}

func (vm *qemuVM) wait(d time.Duration) error {
	go func() {
		for range vm.lines { // keep draining the serial output
		}
	}()
	select {
	case err := <-vm.done:
		return err
	case <-time.After(d):
		return errTimeout
	}
}

func runSSH(c *ssh.Client, cmd string) (string, error) {
	s, err := c.NewSession()
	if err != nil {
		return "", err
	}
	defer s.Close()
	out, err := s.CombinedOutput(cmd)
	return string(out), err
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// hostTSCkHz is the guest's tsc_early_khz under TCG (-M microvm has no HPET
// or PM timer to calibrate against): the host TSC rate.
func hostTSCkHz(t *testing.T) int {
	if out, err := exec.Command("dmesg").Output(); err == nil {
		if m := regexp.MustCompile(`tsc: Detected ([0-9.]+) MHz`).FindSubmatch(out); m != nil {
			if f, err := strconv.ParseFloat(string(m[1]), 64); err == nil {
				return int(f * 1000)
			}
		}
	}
	b, _ := os.ReadFile("/proc/cpuinfo")
	if m := regexp.MustCompile(`cpu MHz\s*:\s*([0-9.]+)`).FindSubmatch(b); m != nil {
		if f, err := strconv.ParseFloat(string(m[1]), 64); err == nil {
			return int(f * 1000)
		}
	}
	t.Skip("cannot find the host TSC rate")
	return 0
}

// copySparse copies src to dst, leaving runs of zero blocks as holes.
func copySparse(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	zero := make([]byte, len(buf))
	var off int64
	for {
		n, err := io.ReadFull(in, buf)
		if n > 0 {
			if !bytes.Equal(buf[:n], zero[:n]) {
				if _, werr := out.WriteAt(buf[:n], off); werr != nil {
					out.Close()
					return werr
				}
			}
			off += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			out.Close()
			return err
		}
	}
	if err := out.Truncate(st.Size()); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
