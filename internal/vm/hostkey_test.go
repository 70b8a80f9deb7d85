package vm

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/guestbuild"
	"github.com/banger-dev/banger/internal/guestssh"
	"github.com/banger-dev/banger/internal/store"
	"golang.org/x/crypto/ssh"
)

func hkSigner(t *testing.T, ec bool) ssh.Signer {
	t.Helper()
	var key any
	if ec {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		key = k
	} else {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		key = k
	}
	s, err := ssh.NewSignerFromKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func hostKeyLine(k ssh.PublicKey) string {
	return guestssh.ConsoleHostKeyMarker + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) + "\r\n"
}

const readyLine = "BANGER-READY boot_id=4f1c9a2e-0d3b-4a7e-9c55-8e2f1b6d7a10\r\n"

// sshServe answers SSH handshakes on ln with hostKeys, trusting client;
// enough for guestssh.Dial, which returns once authenticated.
func sshServe(t *testing.T, ln net.Listener, client ssh.PublicKey, hostKeys ...ssh.Signer) {
	t.Helper()
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
		if string(k.Marshal()) == string(client.Marshal()) {
			return nil, nil
		}
		return nil, errors.New("unknown client key")
	}}
	for _, k := range hostKeys {
		cfg.AddHostKey(k)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sc, chans, reqs, err := ssh.NewServerConn(c, cfg)
				if err != nil {
					return
				}
				defer sc.Close()
				go ssh.DiscardRequests(reqs)
				for ch := range chans {
					ch.Reject(ssh.Prohibited, "test server")
				}
			}()
		}
	}()
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

type hkFixture struct {
	dir    string
	serial string
	kh     *guestssh.KnownHosts
	client ssh.Signer
	opts   guestssh.DialOptions
}

func newHKFixture(t *testing.T) *hkFixture {
	dir := t.TempDir()
	kh := guestssh.OpenKnownHosts(filepath.Join(dir, "ssh", "known_hosts"))
	client := hkSigner(t, false)
	return &hkFixture{dir: dir, serial: filepath.Join(dir, "serial.log"), kh: kh, client: client,
		opts: guestssh.DialOptions{Signer: client, KnownHosts: kh, Timeout: 5 * time.Second}}
}

func (f *hkFixture) dial(addr string) error {
	c, err := guestssh.Dial(context.Background(), addr, f.opts)
	if err == nil {
		c.Close()
	}
	return err
}

var tinyImage = store.ImageRecord{Name: "tiny", Meta: map[string]string{"source": "guestbuild 0123456789ab"}}

// The pin comes from this boot's console: an imposter that answers on the
// guest's address first (another guest on the bridge) is refused, whatever
// key it has - the key of an earlier boot still in the serial log, a key
// printed after the ready line, a key of its own - and an earlier VM's pin
// for the reused address is gone. Before, the first answer was pinned.
func TestConsolePinRefusesImposterAnsweringFirst(t *testing.T) {
	f := newHKFixture(t)
	stale, guestEd, guestEC, late, own := hkSigner(t, false), hkSigner(t, false), hkSigner(t, true), hkSigner(t, false), hkSigner(t, false)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	// An earlier VM at this address, pinned then.
	if err := f.kh.Pin(addr, stale.PublicKey()); err != nil {
		t.Fatal(err)
	}
	// An earlier boot, complete, in the appended serial log.
	appendFile(t, f.serial, "old boot\r\n"+hostKeyLine(stale.PublicKey())+readyLine+"login: ")
	mark := markConsole(f.serial)

	// This boot's console arrives while pinHostKeys waits.
	go func() {
		time.Sleep(150 * time.Millisecond)
		appendFile(t, f.serial, "[    0.4] random: crng init done\r\n"+hostKeyLine(guestEd.PublicKey()))
		time.Sleep(150 * time.Millisecond)
		appendFile(t, f.serial, hostKeyLine(guestEC.PublicKey())+"BANGER-READY boot_id=4f1c")
		time.Sleep(100 * time.Millisecond)
		appendFile(t, f.serial, "9a2e-0d3b-4a7e-9c55-8e2f1b6d7a10\r\n"+hostKeyLine(late.PublicKey()))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := mark.pinHostKeys(ctx, f.kh, addr, tinyImage); err != nil {
		t.Fatal(err)
	}

	var mm *guestssh.HostKeyMismatchError
	for name, imposter := range map[string]ssh.Signer{"stale boot's key": stale, "key after ready": late, "own key": own, "own ecdsa key": hkSigner(t, true)} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		sshServe(t, l, f.client.PublicKey(), imposter)
		if err := f.dial(addr); !errors.As(err, &mm) {
			t.Errorf("imposter with the %s: want *HostKeyMismatchError, got %v", name, err)
		}
		l.Close()
	}
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	sshServe(t, ln, f.client.PublicKey(), guestEd, guestEC)
	if err := f.dial(addr); err != nil {
		t.Fatalf("the guest itself: %v", err)
	}
	data, _ := os.ReadFile(f.kh.Path())
	if strings.Count(string(data), "\n") != 2 {
		t.Fatalf("known_hosts holds more than this boot's two keys:\n%s", data)
	}
}

// An image whose guest is ready without printing its keys is refused with a
// one-line error naming the fix; nothing is trusted for the address after.
func TestConsolePinFailsClosedWithoutMarker(t *testing.T) {
	f := newHKFixture(t)
	old := hkSigner(t, false)
	addr := "172.30.0.9"
	if err := f.kh.Pin(addr, old.PublicKey()); err != nil {
		t.Fatal(err)
	}
	mark := markConsole(f.serial)
	appendFile(t, f.serial, "booting\r\n"+readyLine+hostKeyLine(old.PublicKey()))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := mark.pinHostKeys(ctx, f.kh, addr, tinyImage)
	if !errors.Is(err, guestssh.ErrNoConsoleHostKeys) || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "'banger image build tiny'") {
		t.Fatalf("got %v", err)
	}
	t.Log(err)
	cb := f.kh.Callback()
	var unknown *guestssh.HostKeyUnknownError
	if err := cb(addr+":22", nil, old.PublicKey()); !errors.As(err, &unknown) {
		t.Fatalf("the address's earlier pin survived a failed pin: %v", err)
	}
	// Other sources name their own fix.
	oci := store.ImageRecord{Name: "alp", Meta: map[string]string{"source": "oci docker.io/library/alpine:3@sha256:ab"}}
	if h := rebuildHint(oci); !strings.Contains(h, "banger image pull docker.io/library/alpine:3 --name alp --force") {
		t.Errorf("oci hint: %s", h)
	}
}

func TestConsolePinBoundedAndTimeBoxed(t *testing.T) {
	f := newHKFixture(t)
	// A guest that floods its console before being ready: refused at once,
	// without waiting for the deadline.
	mark := markConsole(f.serial)
	flood := strings.Repeat("x", 1023) + "\n"
	appendFile(t, f.serial, hostKeyLine(hkSigner(t, false).PublicKey())+strings.Repeat(flood, consoleScanLimit/1024+1)+readyLine)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	if err := mark.pinHostKeys(ctx, f.kh, "172.30.0.9", tinyImage); err == nil || !strings.Contains(err.Error(), "MiB") {
		t.Fatalf("flood: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("flood: took %v", d)
	}
	// A guest that never gets ready: the caller's deadline ends the wait.
	f2 := newHKFixture(t)
	mark = markConsole(f2.serial)
	appendFile(t, f2.serial, hostKeyLine(hkSigner(t, false).PublicKey()))
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if err := mark.pinHostKeys(ctx2, f2.kh, "172.30.0.9", tinyImage); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("never ready: %v", err)
	}
	if _, err := os.Stat(f2.kh.Path()); err == nil {
		if data, _ := os.ReadFile(f2.kh.Path()); len(data) != 0 {
			t.Fatalf("pinned without a ready line:\n%s", data)
		}
	}
}

// A serial log replaced or truncated after the mark holds only this boot.
func TestConsoleMarkLogReplaced(t *testing.T) {
	k := hkSigner(t, false)
	for _, how := range []string{"truncated", "replaced"} {
		f := newHKFixture(t)
		appendFile(t, f.serial, strings.Repeat("earlier boots\r\n", 200))
		mark := markConsole(f.serial)
		switch how {
		case "truncated":
			if err := os.Truncate(f.serial, 0); err != nil {
				t.Fatal(err)
			}
		case "replaced":
			os.Rename(f.serial, f.serial+".1")
			// Longer than the mark's offset, so only the inode tells.
			appendFile(t, f.serial, strings.Repeat("new boot noise\r\n", 300))
		}
		appendFile(t, f.serial, hostKeyLine(k.PublicKey())+readyLine)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		keys, err := mark.consoleHostKeys(ctx)
		cancel()
		if err != nil || len(keys) != 1 {
			t.Fatalf("%s: %d keys, %v", how, len(keys), err)
		}
	}
	// A serial log that is not a regular file is refused.
	f := newHKFixture(t)
	os.Mkdir(f.serial, 0o700)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := markConsole(f.serial).consoleHostKeys(ctx); err == nil {
		t.Fatal("a directory was read as the serial log")
	}
}

// TestConsolePinRealGuest boots the tiny guest twice with a read-only root
// (so each boot makes its own host keys) under QEMU, its console appended to
// one serial log as the VMM does, and checks that the second boot's keys are
// the ones pinned from the log, that they differ from the first boot's, and
// that the guest's SSH server presents them (guestssh.Dial accepts only
// pinned keys). Needs root and qemu; not under -short.
func TestConsolePinRealGuest(t *testing.T) {
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
	cache := os.Getenv("BANGER_TEST_CACHE")
	if cache == "" {
		cache = "/var/cache/banger-test"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	a, err := guestbuild.Ensure(ctx, guestbuild.Options{CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	f := newHKFixture(t)
	root := filepath.Join(f.dir, "root.ext4")
	if out, err := exec.Command("cp", "--sparse=always", a.Rootfs, root).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	home := filepath.Join(f.dir, "home")
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	os.WriteFile(filepath.Join(home, ".ssh", "authorized_keys"), ssh.MarshalAuthorizedKey(f.client.PublicKey()), 0o600)
	work := filepath.Join(f.dir, "work.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-d", home, work, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	tsc := tscKHz(t)

	boot := func() (addr string, stop func()) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		serial, err := os.OpenFile(f.serial, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer serial.Close()
		cmd := exec.Command(qemu, "-M", "microvm", "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1",
			"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
			"-kernel", a.Vmlinux, "-initrd", a.Initrd,
			"-append", fmt.Sprintf("console=ttyS0 reboot=k panic=1 quiet root=/dev/vda ro tsc_early_khz=%d banger.ip=10.0.2.15/24 banger.gw=10.0.2.2", tsc),
			"-drive", "file="+root+",if=none,id=d0,format=raw,readonly=on", "-device", "virtio-blk-device,drive=d0",
			"-drive", "file="+work+",if=none,id=d1,format=raw,cache=unsafe", "-device", "virtio-blk-device,drive=d1",
			"-netdev", fmt.Sprintf("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:%d-:22", port),
			"-device", "virtio-net-device,netdev=n0", "-device", "virtio-rng-device")
		cmd.Stdout, cmd.Stderr = serial, serial
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		stop = func() {
			cmd.Process.Kill()
			cmd.Wait()
		}
		t.Cleanup(stop)
		return fmt.Sprintf("127.0.0.1:%d", port), stop
	}

	wctx, wcancel := context.WithTimeout(ctx, 3*time.Minute)
	defer wcancel()
	first := markConsole(f.serial)
	addr1, stop1 := boot()
	if err := first.pinHostKeys(wctx, f.kh, addr1, tinyImage); err != nil {
		t.Fatalf("first boot: %v", err)
	}
	keys1, _ := first.consoleHostKeys(wctx)
	stop1()

	second := markConsole(f.serial)
	if second.off == 0 {
		t.Fatal("the first boot wrote nothing to the serial log")
	}
	addr2, _ := boot()
	if err := second.pinHostKeys(wctx, f.kh, addr2, tinyImage); err != nil {
		t.Fatalf("second boot: %v", err)
	}
	keys2, err := second.consoleHostKeys(wctx)
	if err != nil || len(keys2) != 2 || keys2[0].Type() != ssh.KeyAlgoED25519 || keys2[1].Type() != ssh.KeyAlgoECDSA256 {
		t.Fatalf("second boot's console keys: %v %v", keys2, err)
	}
	for _, k1 := range keys1 {
		for _, k2 := range keys2 {
			if string(k1.Marshal()) == string(k2.Marshal()) {
				t.Fatalf("both boots announced %s: the read-only root should make per-boot keys", ssh.FingerprintSHA256(k1))
			}
		}
	}
	// The guest's server presents exactly the pinned keys: the default
	// preference, and each pinned type alone.
	c, err := guestssh.WaitReady(wctx, addr2, f.opts, 200*time.Millisecond)
	if err != nil {
		data, _ := os.ReadFile(f.serial)
		t.Fatalf("ssh to the second boot: %v\nserial:\n%s", err, data)
	}
	var out strings.Builder
	if code, err := c.Run(wctx, []string{"cat", "/proc/sys/kernel/random/boot_id"}, nil, &out, nil); err != nil || code != 0 {
		t.Fatalf("run: %d %v", code, err)
	}
	c.Close()
	data, _ := os.ReadFile(f.serial)
	if !strings.Contains(string(data[second.off:]), "BANGER-READY boot_id="+strings.TrimSpace(out.String())) {
		t.Fatalf("boot_id %q is not the second boot's", out.String())
	}
	for _, k := range keys2 {
		cfg := &ssh.ClientConfig{User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(f.client)}, HostKeyAlgorithms: []string{k.Type()},
			HostKeyCallback: ssh.FixedHostKey(k), Timeout: 20 * time.Second}
		sc, err := ssh.Dial("tcp", addr2, cfg)
		if err != nil {
			t.Fatalf("%s host key: %v", k.Type(), err)
		}
		sc.Close()
	}
}

// tscKHz is the host's TSC rate (QEMU's microvm under TCG needs it on a busy
// host, docs/guest.md).
func tscKHz(t *testing.T) int {
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
