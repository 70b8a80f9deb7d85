package fcvmm

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BenchmarkInstanceStart times PUT /actions InstanceStart, the request
// Firecracker answers in milliseconds and for which clients size their
// timeouts accordingly. Each iteration is a fresh banger-vmm process (as
// each VM gets one), configured as banger configures it — logger, machine,
// the test guest's vmlinux and initrd, a work and a root drive, a vsock —
// and only the InstanceStart request is timed; the machine is killed
// afterwards. The root drive is raw, or a qcow2 overlay over a raw file
// (user.banger.format = qcow2). Besides ns/op (the mean), it reports the
// median and the extremes.
//
//	go test ./internal/fcvmm -run '^$' -bench InstanceStart -benchtime 25x
//
// FCVMM_TEST_BIN times another banger-vmm binary (an older one, say).
func BenchmarkInstanceStart(b *testing.B) {
	env := bootPrereqs(b)
	dir := b.TempDir()
	raw := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			b.Fatal(err)
		}
		if err := os.Truncate(p, 64<<20); err != nil {
			b.Fatal(err)
		}
		return p
	}
	work, root := raw("work.ext4"), raw("rootfs.ext4")
	overlay := filepath.Join(dir, "overlay.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", root, overlay).CombinedOutput(); err != nil {
		b.Fatalf("qemu-img: %v %s", err, out)
	}
	setFormat(b, overlay, "qcow2")
	for _, c := range []struct{ name, root string }{{"raw", root}, {"qcow2", overlay}} {
		b.Run(c.name, func(b *testing.B) {
			var took []time.Duration
			b.StopTimer()
			for i := 0; i < b.N; i++ {
				took = append(took, instanceStartOnce(b, env, dir, i, c.root, work))
			}
			sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
			ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
			b.ReportMetric(ms(took[len(took)/2]), "p50-ms")
			b.ReportMetric(ms(took[0]), "min-ms")
			b.ReportMetric(ms(took[len(took)-1]), "max-ms")
		})
	}
}

// instanceStartOnce runs one banger-vmm, configures it and times its
// InstanceStart (the benchmark's timer runs for that request only).
func instanceStartOnce(b *testing.B, env *bootEnv, dir string, i int, root, work string) time.Duration {
	b.Helper()
	vmDir, err := os.MkdirTemp(dir, "vm")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(vmDir)
	sock := filepath.Join(vmDir, "fc.sock")
	cmd := exec.Command(env.bin, "--api-sock", sock, "--id", fmt.Sprintf("bench-%d", i), "--no-seccomp")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM) // QEMU is killed and reaped first
		cmd.Wait()
	}()
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(2 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("banger-vmm did not bind its socket")
		}
	}
	tv := &testVMM{sock: sock, client: clientFor(sock)}
	put := func(path, body string) {
		b.Helper()
		if r := tv.do(b, "PUT", path, body); r.status != 204 {
			b.Fatalf("PUT %s: %d %s", path, r.status, r.body)
		}
	}
	put("/logger", `{"log_path":"`+filepath.Join(vmDir, "fc.log")+`","level":"Info"}`)
	put("/machine-config", `{"vcpu_count":1,"mem_size_mib":256}`)
	put("/boot-source", `{"kernel_image_path":"`+env.art.Vmlinux+`","initrd_path":"`+env.art.Initrd+`","boot_args":"console=ttyS0 reboot=k panic=1 quiet"}`)
	put("/drives/work", `{"drive_id":"work","path_on_host":"`+work+`","is_root_device":false,"is_read_only":false}`)
	put("/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"`+root+`","is_root_device":true,"is_read_only":false}`)
	put("/vsock", `{"guest_cid":3,"uds_path":"`+filepath.Join(vmDir, "agent.sock")+`"}`)
	b.StartTimer()
	t0 := time.Now()
	r := tv.do(b, "PUT", "/actions", `{"action_type":"InstanceStart"}`)
	d := time.Since(t0)
	b.StopTimer()
	if r.status != 204 {
		log, _ := os.ReadFile(filepath.Join(vmDir, "fc.log"))
		b.Fatalf("InstanceStart: %d %s\n%s", r.status, r.body, strings.TrimSpace(string(log)))
	}
	return d
}
