package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/guestbuild"
	"github.com/banger-dev/banger/internal/guestssh"
	"github.com/banger-dev/banger/internal/testutil"
)

// BenchmarkVMRunRmTrue times `banger vm run --rm -- true` end to end:
// create (disks), boot, SSH, the command, delete.
func BenchmarkVMRunRmTrue(b *testing.B) {
	v := newVMEnv(b)
	v.must("vm", "run", "--rm", "--", "true") // warm: image published, bridge up
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if r := v.banger("vm", "run", "--rm", "--", "true"); r.code != 0 {
			b.Fatalf("exit %d: %s", r.code, r.stderr)
		}
	}
}

// BenchmarkVMRunRmTrueByImage times `vm run --rm -- true` on each built-in
// image with the shipped [vm_defaults] (2 vCPUs, 2 GiB, an 8G work disk):
// what the dev box costs over the minimal image and tiny.
func BenchmarkVMRunRmTrueByImage(b *testing.B) {
	v := newDevboxEnv(b)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	if _, err := guestbuild.EnsureDebian(ctx, guestOpts()); err != nil {
		b.Fatal(err)
	}
	for _, im := range []string{guestbuild.TinyImage, guestbuild.MinimalImage, guestbuild.DevImage} {
		b.Run(im, func(b *testing.B) {
			v.must("vm", "run", "--rm", "--image", im, "--", "true") // warm: image published, bridge up
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if r := v.banger("vm", "run", "--rm", "--image", im, "--", "true"); r.code != 0 {
					b.Fatalf("exit %d: %s", r.code, r.stderr)
				}
			}
		})
	}
}

// BenchmarkBareQEMUBootSSHTrue is the floor banger is measured against: the
// same kernel, initrd and image booted by plain qemu-system-x86_64 -M microvm
// on a tap in a fresh namespace, until `true` has run over SSH.
func BenchmarkBareQEMUBootSSHTrue(b *testing.B) {
	bareQEMUBoots(b, b.N, b.ResetTimer)
}

// bareQEMUBoots boots tiny n times with plain QEMU until `true` ran over
// SSH, and returns each boot's time (reset is called before the first).
func bareQEMUBoots(b *testing.B, n int, reset func()) []time.Duration {
	testutil.RequiresGuest(b)
	ctx := context.Background()
	art, err := guestbuild.Ensure(ctx, guestOpts())
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	_, auth, err := guestssh.EnsureKey(filepath.Join(dir, "key"))
	if err != nil {
		b.Fatal(err)
	}
	seed := filepath.Join(dir, "seed")
	os.MkdirAll(filepath.Join(seed, ".ssh"), 0o700)
	os.WriteFile(filepath.Join(seed, ".ssh", "authorized_keys"), []byte(auth+"\n"), 0o600)
	ns := fmt.Sprintf("bgbench%d", os.Getpid())
	exec.Command("ip", "netns", "add", ns).Run()
	defer exec.Command("ip", "netns", "del", ns).Run()
	for _, args := range [][]string{{"link", "set", "lo", "up"}, {"tuntap", "add", "dev", "tap0", "mode", "tap"}, {"addr", "add", "172.31.77.1/24", "dev", "tap0"}, {"link", "set", "tap0", "up"}} {
		if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
			b.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	tsc := tscKHz()
	reset()
	var times []time.Duration
	for i := 0; i < n; i++ {
		t0 := time.Now()
		root := filepath.Join(dir, fmt.Sprintf("root%d.ext4", i))
		work := filepath.Join(dir, fmt.Sprintf("work%d.ext4", i))
		if _, err := disk.CloneRootfs(art.Rootfs, root); err != nil {
			b.Fatal(err)
		}
		if err := disk.MakeWorkDisk(ctx, work, 128<<20, seed); err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command("ip", "netns", "exec", ns, "qemu-system-x86_64", "-M", "microvm", "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1",
			"-nodefaults", "-no-user-config", "-display", "none", "-serial", "file:"+filepath.Join(dir, fmt.Sprintf("serial%d.log", i)), "-no-reboot",
			"-kernel", art.Vmlinux, "-initrd", art.Initrd,
			"-append", "console=ttyS0 reboot=k panic=1 net.ifnames=0 quiet root=/dev/vda rw banger.ip=172.31.77.2/24 banger.gw=172.31.77.1 banger.hostname=bench tsc_early_khz="+tsc,
			"-drive", "file="+root+",if=none,id=d0,format=raw,cache=unsafe", "-device", "virtio-blk-device,drive=d0",
			"-drive", "file="+work+",if=none,id=d1,format=raw,cache=unsafe", "-device", "virtio-blk-device,drive=d1",
			"-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no", "-device", "virtio-net-device,netdev=n0",
			"-device", "virtio-rng-device")
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		code, err := sshTrueInNS(ns, filepath.Join(dir, "key"), filepath.Join(dir, fmt.Sprintf("kh%d", i)), filepath.Join(dir, fmt.Sprintf("serial%d.log", i)))
		cmd.Process.Kill()
		cmd.Wait()
		if err != nil || code != 0 {
			b.Fatalf("ssh true: %d %v", code, err)
		}
		times = append(times, time.Since(t0))
	}
	return times
}

var warmColdProbed bool

// BenchmarkVMRunWarmVsCold ([P10]): in one process and one run, `vm run
// --rm -- true` cold (--cold) and warm (from the shape's template, made
// first by 'image warm') on tiny and on the dev box, with the shipped
// [vm_defaults] (2 vCPUs, 2 GiB, an 8G work disk), and the bare QEMU boot
// of tiny as the floor; it prints each median and warm ÷ cold.
func BenchmarkVMRunWarmVsCold(b *testing.B) {
	// The testing package calls a benchmark with b.N = 1 before the real
	// run (-benchtime 3x: N = 3); this one measures its own rounds, once,
	// in that run.
	if !warmColdProbed {
		warmColdProbed = true
		return
	}
	v := newDevboxEnv(b)
	cfg, _ := os.ReadFile(v.configFile())
	os.WriteFile(v.configFile(), []byte(strings.Replace(string(cfg), `start = "cold"`, `start = "warm"`, 1)), 0o600)
	v.must("daemon", "stop")
	median := func(ts []time.Duration) time.Duration {
		s := append([]time.Duration(nil), ts...)
		slices.Sort(s)
		return s[len(s)/2]
	}
	run := func(args ...string) time.Duration {
		t0 := time.Now()
		if r := v.banger(append([]string{"vm", "run", "--rm"}, args...)...); r.code != 0 {
			b.Fatalf("vm run %v: exit %d: %s", args, r.code, r.stderr)
		}
		return time.Since(t0)
	}
	rounds := max(b.N, 3)
	type row struct{ cold, warm time.Duration }
	rows := map[string]row{}
	for _, im := range []string{guestbuild.TinyImage, guestbuild.DevImage} {
		v.must("vm", "run", "--rm", "--cold", "--image", im, "--", "true") // warm caches: image, bridge
		v.must("image", "warm", im)
		var cold, warm []time.Duration
		for i := 0; i < rounds; i++ {
			cold = append(cold, run("--cold", "--image", im, "--", "true"))
			warm = append(warm, run("--image", im, "--", "true"))
		}
		rows[im] = row{median(cold), median(warm)}
	}
	bare := median(bareQEMUBoots(b, rounds, func() {}))
	for _, im := range []string{guestbuild.TinyImage, guestbuild.DevImage} {
		r := rows[im]
		ratio := float64(r.warm) / float64(r.cold)
		b.Logf("%-16s cold %6.2fs  warm %6.2fs  warm/cold %.2f", im, r.cold.Seconds(), r.warm.Seconds(), ratio)
		b.ReportMetric(ratio, im+"-warm/cold")
	}
	b.Logf("%-16s %6.2fs (plain QEMU boot of tiny to ssh true, the floor)", "bare qemu", bare.Seconds())
}

// sshTrueInNS pins the guest's host keys from its console (as banger does),
// waits (inside the namespace) until its SSH server sends its banner, then
// runs `true` with the system ssh client, retrying a failed connection as
// banger's own readiness wait does.
func sshTrueInNS(ns, keyPath, knownHosts, serialLog string) (int, error) {
	deadline := time.Now().Add(90 * time.Second)
	for {
		b, _ := os.ReadFile(serialLog)
		keys, ready, err := guestssh.ConsoleHostKeys(b)
		if ready {
			if err != nil {
				return -1, err
			}
			if err := guestssh.OpenKnownHosts(knownHosts).Pin("172.31.77.2", keys...); err != nil {
				return -1, err
			}
			break
		}
		if time.Now().After(deadline) {
			return -1, fmt.Errorf("no ready line on the console")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for time.Now().Before(deadline) {
		out, err := exec.Command("ip", "netns", "exec", ns, "bash", "-c",
			"exec 3<>/dev/tcp/172.31.77.2/22 && head -c4 <&3").Output()
		if err == nil && strings.HasPrefix(string(out), "SSH-") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	var last error
	for time.Now().Before(deadline) {
		args := guestssh.SystemSSHArgs("172.31.77.2:22", keyPath, knownHosts, "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "true")
		err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).Run()
		if err == nil {
			return 0, nil
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	return -1, last
}

func tscKHz() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "cpu MHz") {
			var mhz float64
			fmt.Sscanf(strings.TrimSpace(strings.SplitN(line, ":", 2)[1]), "%f", &mhz)
			return fmt.Sprint(int(mhz * 1000))
		}
	}
	return "2500000"
}

// BenchmarkWorkspacePrepare200MB times `vm workspace prepare` of a repository
// of 200 random 1 MiB files (incompressible, committed, one of them
// modified) into a running debian-bookworm guest: the shallow clone's pack
// travels, the guest checks the files out.
func BenchmarkWorkspacePrepare200MB(b *testing.B) {
	v := newDebianEnv(b)
	repo := filepath.Join(v.home, "big")
	os.MkdirAll(repo, 0o755)
	gitFixture(b, repo, `git init -q -b main && for i in $(seq 1 200); do head -c 1048576 /dev/urandom > f$i.bin; done &&
		git add -A && git commit -qm big && echo changed >> f1.bin`)
	v.must("vm", "create", "--name", "big", "--image", "debian-bookworm-minimal", "--disk-size", "2G", "--memory", "1024")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		v.must("vm", "workspace", "prepare", "big", repo)
		b.Logf("prepare took %v", time.Since(t0))
	}
	b.StopTimer()
	if out := v.must("vm", "exec", "big", "--", "sh", "-c", "ls | wc -l; git status --porcelain"); out != "200\n M f1.bin\n" {
		b.Fatalf("guest workspace: %q", out)
	}
}

// BenchmarkParkWake measures, on one VM of each image, in one run: `vm park`,
// the wake that `vm exec` does (wake + SSH + `true`), and a cold `vm start`
// followed by the same `vm exec` (stop first); the ratio wake ÷ cold start is
// logged. The dev box uses the shipped defaults (2 vCPUs, 2 GiB).
func BenchmarkParkWake(b *testing.B) {
	v := newDevboxEnv(b)
	for _, im := range []string{guestbuild.TinyImage, guestbuild.DevImage} {
		b.Run(im, func(b *testing.B) {
			name := "pw-" + strings.ReplaceAll(im, "-", "")
			if len(name) > 20 {
				name = name[:20]
			}
			v.must("vm", "create", "--name", name, "--image", im)
			defer v.banger("vm", "delete", name)
			var park, wake, cold time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				v.must("vm", "exec", name, "--", "true")
				t0 := time.Now()
				v.must("vm", "park", name)
				park += time.Since(t0)
				t1 := time.Now()
				v.must("vm", "exec", name, "--", "true")
				wake += time.Since(t1)
				v.must("vm", "stop", name)
				t2 := time.Now()
				v.must("vm", "start", name)
				v.must("vm", "exec", name, "--", "true")
				cold += time.Since(t2)
			}
			n := time.Duration(b.N)
			b.ReportMetric(float64((park / n).Milliseconds()), "park-ms")
			b.ReportMetric(float64((wake / n).Milliseconds()), "wake-exec-ms")
			b.ReportMetric(float64((cold / n).Milliseconds()), "cold-start-exec-ms")
			b.Logf("%s: park %v, wake+exec %v, cold start+exec %v, wake/cold %.3f", im, park/n, wake/n, cold/n, float64(wake)/float64(cold))
		})
	}
}

// BenchmarkForkParkByImageSize ([P9]): `vm fork` and `vm park` of a VM whose
// image is 1 GiB and of one whose image is 8 GiB (tiny's root filesystem
// grown with resize2fs, every block allocated by fallocate), with the state dir on this
// machine's ext4 (no reflink). A fork's disks are qcow2 overlays of the
// parent's frozen ones and a park writes memory only, so neither may grow
// with the image: the 8 GiB times must stay within 1.2x the 1 GiB ones.
func BenchmarkForkParkByImageSize(b *testing.B) {
	v := newVMEnv(b)
	var img struct {
		Rootfs string `json:"rootfs"`
	}
	v.must("image", "build", "tiny")
	if err := json.Unmarshal([]byte(v.must("image", "show", "tiny", "--json")), &img); err != nil {
		b.Fatal(err)
	}
	times := map[string][2]time.Duration{}
	for _, size := range []string{"1G", "8G"} {
		name := "big" + strings.ToLower(size)
		file := filepath.Join(v.home, name+".ext4")
		for _, c := range [][]string{
			{"cp", "--sparse=always", img.Rootfs, file},
			{"truncate", "-s", size, file},
			{"resize2fs", "-f", file},
			{"fallocate", "-l", size, file}, // every block allocated
		} {
			if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
				b.Fatalf("%v: %v %s", c, err, out)
			}
		}
		v.must("image", "register", "--name", name, "--rootfs", file)
		v.must("image", "promote", name)
		os.Remove(file)
		b.Run(size, func(b *testing.B) {
			v.must("vm", "create", "--name", "p"+name, "--image", name)
			defer v.banger("vm", "delete", "p"+name)
			var fork, park time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				kid := fmt.Sprintf("k%s-%d", name, i)
				t0 := time.Now()
				v.must("vm", "fork", "p"+name, "--name", kid)
				fork += time.Since(t0)
				t1 := time.Now()
				v.must("vm", "park", kid)
				park += time.Since(t1)
				v.must("vm", "delete", kid)
			}
			n := time.Duration(b.N)
			b.ReportMetric(float64((fork / n).Milliseconds()), "fork-ms")
			b.ReportMetric(float64((park / n).Milliseconds()), "park-ms")
			times[size] = [2]time.Duration{fork / n, park / n}
			b.Logf("%s image: fork %v, park of the fork %v", size, fork/n, park/n)
		})
	}
	if s, l := times["1G"], times["8G"]; s[0] > 0 && l[0] > 0 {
		b.Logf("8 GiB ÷ 1 GiB: fork %.2f, park %.2f (must be <= 1.2)", float64(l[0])/float64(s[0]), float64(l[1])/float64(s[1]))
		if float64(l[0]) > 1.2*float64(s[0]) || float64(l[1]) > 1.2*float64(s[1]) {
			b.Errorf("fork or park grows with the image's size: 1 GiB %v, 8 GiB %v", s, l)
		}
	}
}
