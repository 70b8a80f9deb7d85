package fcvmm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseArgs(t *testing.T) {
	ok := [][]string{
		{"--api-sock", "/tmp/a.sock", "--id", "vm-1", "--no-seccomp"},
		{"--api-sock", "/tmp/a.sock", "--id", "x", "--seccomp-filter", "/f"},
		{"--api-sock", "/p", "--id", "x", "--seccomp-filter", "/f", "--start-time-us", "1", "--start-time-cpu-us", "2", "--parent-cpu-time-us", "3"},
		{"--log-path", "/l", "--level", "Debug", "--show-level", "--show-log-origin", "--metrics-path", "/m", "--boot-timer", "--enable-pci"},
		{"--config-file", "/c.json", "--no-api"},
		{},
	}
	for _, a := range ok {
		if _, err := parseArgs(a); err != nil {
			t.Errorf("parseArgs(%q): %v", a, err)
		}
	}
	bad := [][]string{
		{"--bogus"},
		{"--api-sock"},
		{"--api-sock", "a", "--api-sock", "b"},
		{"--no-seccomp", "--seccomp-filter", "f"},
		{"--no-api"},
		{"api-sock", "x"},
		{"--api-sock=/x"},
		{"--http-api-max-payload-size", "lots"},
	}
	for _, a := range bad {
		if _, err := parseArgs(a); err == nil {
			t.Errorf("parseArgs(%q) accepted", a)
		}
	}
	a, _ := parseArgs([]string{"--api-sock", "/s", "--no-seccomp"})
	if a.value("api-sock", "") != "/s" || !a.has("no-seccomp") || a.value("id", defaultID) != defaultID {
		t.Errorf("parsed %+v", a)
	}
}

func TestValidateID(t *testing.T) {
	for _, id := range []string{"anonymous-instance", "a", "0f1e2d3c-aaaa-bbbb-cccc-0123456789ab", strings.Repeat("x", 64)} {
		if err := validateID(id); err != nil {
			t.Errorf("validateID(%q): %v", id, err)
		}
	}
	for _, id := range []string{"", strings.Repeat("x", 65), "a_b", "a b", "a/b", "é"} {
		if err := validateID(id); err == nil {
			t.Errorf("validateID(%q) accepted", id)
		}
	}
}

func TestGuestCmdline(t *testing.T) {
	s := func(x string) *string { return &x }
	root := &driveCfg{id: "rootfs", root: true}
	cases := []struct {
		args *string
		root *driveCfg
		tsc  int
		want string
	}{
		{nil, nil, 0, defaultBootArgs + " pci=off"},
		{s("console=ttyS0 reboot=k"), root, 2596144, "console=ttyS0 reboot=k pci=off root=/dev/vda rw tsc_early_khz=2596144"},
		{s("console=ttyS0 -- init-arg"), &driveCfg{root: true, readOnly: true}, 0, "console=ttyS0 pci=off root=/dev/vda ro -- init-arg"},
		{s("quiet"), &driveCfg{root: true, partuuid: "abcd-01"}, 0, "quiet pci=off root=PARTUUID=abcd-01 rw"},
		{s("tsc_early_khz=1000"), nil, 2596144, "tsc_early_khz=1000 pci=off"},
		{s(""), nil, 0, "pci=off"},
	}
	for _, c := range cases {
		got, err := guestCmdline(c.args, c.root, c.tsc)
		if err != nil || got != c.want {
			t.Errorf("guestCmdline(%v) = %q, %v; want %q", c.args, got, err, c.want)
		}
	}
	if _, err := guestCmdline(s(strings.Repeat("a", 2040)), root, 0); err == nil {
		t.Error("a command line over 2048 bytes was accepted")
	}
	if err := checkCmdline("a\nb"); err == nil {
		t.Error("a control character was accepted")
	}
}

func TestPlanLaunchKeepsPathsOut(t *testing.T) {
	dir := t.TempDir()
	open := func(name string) *os.File {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	cfg := &vmConfig{
		id:      "vm-1",
		machine: machineCfg{VcpuCount: 2, MemSizeMib: 256},
		boot:    &bootCfg{kernelPath: filepath.Join(dir, "vmlinux"), kernel: open("vmlinux"), initrd: open("initrd")},
		drives: []*driveCfg{
			{id: "root", root: true, rw: open("root.rw"), ro: open("root.ro"), cacheType: "Unsafe"},
			{id: "data", readOnly: true, ro: open("data.ro"), cacheType: "Writeback"},
		},
		nets: []*netCfg{{id: "eth0", hostDev: "tap0", mac: "06:00:00:00:00:01", tap: open("tap")}},
	}
	p := planLaunch(cfg, open("serial"), open("qmp"), nil, false, "console=ttyS0")
	argv := strings.Join(p.args, " ")
	if strings.Contains(argv, dir) {
		t.Errorf("a host path reached QEMU's argv: %s", argv)
	}
	if len(p.files) != 8 {
		t.Errorf("%d inherited files, want 8", len(p.files))
	}
	for _, want := range []string{
		"-M microvm", "-accel tcg", "-cpu max", "-m 256", "-smp 2", "-nodefaults", "-no-user-config", "-display none", "-no-reboot", "-no-shutdown",
		"-chardev socket,id=ser0,fd=3", "-serial chardev:ser0", "-chardev socket,id=qmp0,fd=4", "-mon chardev=qmp0,mode=control",
		"-kernel /dev/fd/5", "-initrd /dev/fd/6", "-append console=ttyS0", "-device i8042",
		"-add-fd fd=7,set=1 -add-fd fd=8,set=1 -drive file=/dev/fdset/1,if=none,id=drive0,format=raw,cache=unsafe,readonly=off",
		"-add-fd fd=9,set=2 -drive file=/dev/fdset/2,if=none,id=drive1,format=raw,cache=writeback,readonly=on",
		"-netdev tap,id=net0,fd=10,vhost=off -device virtio-net-device,netdev=net0,mac=06:00:00:00:00:01",
		"-device virtio-rng-device",
	} {
		if !strings.Contains(argv, want) {
			t.Errorf("argv lacks %q:\n%s", want, argv)
		}
	}
}

func TestPlanLaunchVsock(t *testing.T) {
	dir := t.TempDir()
	open := func(name string) *os.File {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	cfg := &vmConfig{id: "vm-1", machine: defaultMachine, boot: &bootCfg{kernel: open("vmlinux")}}
	p := planLaunch(cfg, open("serial"), open("qmp"), open("agent"), false, "console=ttyS0")
	argv := strings.Join(p.args, " ")
	want := "-device virtio-rng-device -chardev socket,id=agent0chr,fd=6 -device virtio-serial-device,id=vser0 " +
		"-device virtserialport,bus=vser0.0,chardev=agent0chr,name=banger.agent,id=agent0"
	if !strings.HasSuffix(argv, want) || len(p.files) != 4 {
		t.Errorf("argv %s (%d files), want it to end with %s", argv, len(p.files), want)
	}
	if p := planLaunch(cfg, open("serial2"), open("qmp2"), nil, false, ""); strings.Contains(strings.Join(p.args, " "), "virtio-serial") {
		t.Errorf("a virtio-serial device without PUT /vsock: %v", p.args)
	}
}

func TestTSCParsing(t *testing.T) {
	klog := []byte("<6>[    0.000059] tsc: Detected 2596.144 MHz processor\n<6>[    1.2] tsc: Refined TSC clocksource calibration: 2596.1 MHz\n")
	if k := tscFromKlog(klog); k != 2596100 {
		t.Errorf("tscFromKlog = %d", k)
	}
	if k := tscFromKlog([]byte("tsc: Detected 2596.144 MHz processor")); k != 2596144 {
		t.Errorf("tscFromKlog = %d", k)
	}
	if k := tscFromCPUInfo(strings.NewReader("processor\t: 0\ncpu MHz\t\t: 2596.144\n")); k != 2596144 {
		t.Errorf("tscFromCPUInfo = %d", k)
	}
}

func TestCheckKernelRefusesNonELF(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string][]byte{
		"bzImage": append(make([]byte, 0x202), []byte("HdrS")...),
		"elf32":   append([]byte("\x7fELF\x01\x01\x01"), make([]byte, 100)...),
		"empty":   nil,
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, 0o644)
		f, _ := os.Open(p)
		err := checkKernel(f)
		f.Close()
		if err == nil || !strings.HasPrefix(err.Error(), "Cannot load kernel due to invalid memory configuration or invalid kernel image: ") {
			t.Errorf("checkKernel(%s) = %v", name, err)
		}
	}
	// The test binary is an x86_64 ELF without a PVH note.
	if exe, err := os.Executable(); err == nil {
		f, _ := os.Open(exe)
		if err := checkKernel(f); err == nil || !strings.Contains(err.Error(), "PVH") {
			t.Errorf("checkKernel(test binary) = %v", err)
		}
		f.Close()
	}
}

func TestRustIOError(t *testing.T) {
	_, err := os.Open("/nonexistent/x")
	if got := rustIOError(err); got != "No such file or directory (os error 2)" {
		t.Errorf("rustIOError = %q", got)
	}
}
