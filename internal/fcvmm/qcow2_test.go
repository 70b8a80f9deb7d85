package fcvmm

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// setFormat sets user.banger.format on path, as banger's root helper does,
// or skips the test where the file system has no user xattrs.
func setFormat(t testing.TB, path, value string) {
	t.Helper()
	if err := unix.Setxattr(path, formatXattr, []byte(value), 0); err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			t.Skipf("%s: no user extended attributes here", filepath.Dir(path))
		}
		t.Fatalf("setxattr %s: %v", path, err)
	}
}

// qcow2Header is a minimal qcow2 header (version 3, 64 KiB clusters, 1 GiB)
// naming backing (with backingFmt, if not "") and with the given
// incompatible feature bits: enough for the header checks, not an image QEMU
// could use.
func qcow2Header(backing, backingFmt string, incompat uint64) []byte {
	h := make([]byte, 8192)
	be := binary.BigEndian
	copy(h, qcow2Magic)
	be.PutUint32(h[4:], 3)
	be.PutUint32(h[20:], 16)
	be.PutUint64(h[24:], 1<<30)
	be.PutUint64(h[72:], incompat)
	be.PutUint32(h[96:], 4)
	be.PutUint32(h[100:], 104)
	off := 104
	if backingFmt != "" {
		be.PutUint32(h[off:], qcow2ExtBackingFmt)
		be.PutUint32(h[off+4:], uint32(len(backingFmt)))
		copy(h[off+8:], backingFmt)
		off += 8 + (len(backingFmt)+7)&^7
	}
	off += 8 // the end marker (zeros)
	if backing != "" {
		be.PutUint64(h[8:], uint64(off))
		be.PutUint32(h[16:], uint32(len(backing)))
		copy(h[off:], backing)
	}
	return h
}

// openDrive opens path as PUT /drives would.
func openDrive(path string, readOnly bool) (*driveCfg, error) {
	d := &driveCfg{id: "d", path: path, readOnly: readOnly}
	if err := d.open(); err != nil {
		return nil, err
	}
	return d, nil
}

// TestDriveFormatFromAttributeOnly: a drive is qcow2 only when the opened
// file carries user.banger.format = qcow2. A raw disk holding a qcow2 header
// (here one naming a host file as its backing file) is raw without the
// attribute, and so with any other value.
func TestDriveFormatFromAttributeOnly(t *testing.T) {
	dir := t.TempDir()
	secret := writeFile(t, filepath.Join(dir, "secret"), []byte("host secret"))
	disguised := writeFile(t, filepath.Join(dir, "guest-wrote-this.img"), qcow2Header(secret, "raw", 0))
	d, err := openDrive(disguised, false)
	if err != nil {
		t.Fatal(err)
	}
	if d.formatName() != formatRaw || d.backing != nil || driveLockingOpts(d) != "file.locking=off" {
		t.Errorf("a qcow2 header without the attribute: format %q, backing %v, %q", d.formatName(), d.backing, driveLockingOpts(d))
	}
	d.close()
	for _, v := range []string{"raw", "QCOW2", "qcow2\n", "qcow", "qcow2qcow2qcow2qcow2"} {
		setFormat(t, disguised, v)
		d, err := openDrive(disguised, true)
		if err != nil {
			t.Fatalf("attribute %q: %v", v, err)
		}
		if d.formatName() != formatRaw {
			t.Errorf("attribute %q: format %q, want raw", v, d.formatName())
		}
		d.close()
	}

	setFormat(t, disguised, "qcow2")
	for _, ro := range []bool{false, true} {
		d, err := openDrive(disguised, ro)
		if err != nil {
			t.Fatalf("read-only %v: %v", ro, err)
		}
		if d.formatName() != formatQcow2 || strings.Join(d.backing, ",") != "raw" {
			t.Errorf("read-only %v: format %q, backing %v", ro, d.formatName(), d.backing)
		}
		if got, want := driveLockingOpts(d), "file.locking=off,backing.driver=raw,backing.file.locking=off"; got != want {
			t.Errorf("locking options %q, want %q", got, want)
		}
		d.close()
	}
}

// TestQcow2HeaderRefusals: what a root-marked qcow2 image must not ask of
// QEMU is refused when the drive is opened.
func TestQcow2HeaderRefusals(t *testing.T) {
	dir := t.TempDir()
	base := writeFile(t, filepath.Join(dir, "base.raw"), make([]byte, 4096))
	for name, c := range map[string]struct {
		data []byte
		want string
	}{
		"raw content":      {make([]byte, 65536), "not a qcow2 image (no qcow2 magic)"},
		"short":            {[]byte("QFI"), "not a qcow2 image (too short)"},
		"relative backing": {qcow2Header("base.raw", "raw", 0), `the qcow2 backing file "base.raw" is not an absolute path`},
		"no backing fmt":   {qcow2Header(base, "", 0), "the qcow2 image names its backing file " + base + " without its format (QEMU would probe the file's content)"},
		"vvfat backing":    {qcow2Header(base, "vvfat", 0), `the qcow2 backing file ` + base + ` has format "vvfat" (only raw and qcow2 are opened)`},
		"data file":        {qcow2Header("", "", qcow2IncompatData), "the qcow2 image uses an external data file, which banger-vmm does not open"},
		"missing backing":  {qcow2Header(filepath.Join(dir, "gone.raw"), "raw", 0), "qcow2 backing file " + filepath.Join(dir, "gone.raw") + ": No such file or directory (os error 2)"},
		"loop":             {qcow2Header(filepath.Join(dir, "loop"), "qcow2", 0), "the qcow2 backing chain is longer than 32 images"},
	} {
		p := writeFile(t, filepath.Join(dir, strings.ReplaceAll(name, " ", "_")), c.data)
		if name == "loop" {
			os.Rename(p, filepath.Join(dir, "loop"))
			p = filepath.Join(dir, "loop")
		}
		setFormat(t, p, "qcow2")
		d, err := openDrive(p, false)
		if err == nil {
			d.close()
			t.Errorf("%s: accepted", name)
			continue
		}
		if err.Error() != c.want {
			t.Errorf("%s: %q, want %q", name, err, c.want)
		}
	}
	// A qcow2 image without a backing file.
	p := writeFile(t, filepath.Join(dir, "plain.qcow2"), qcow2Header("", "", 0))
	setFormat(t, p, "qcow2")
	d, err := openDrive(p, false)
	if err != nil {
		t.Fatal(err)
	}
	if d.backing != nil || driveLockingOpts(d) != "file.locking=off" {
		t.Errorf("no backing file: %v %q", d.backing, driveLockingOpts(d))
	}
	d.close()
}

// TestQcow2ChainFromQemuImg: a chain made by qemu-img, as banger's root
// helper makes it (explicit backing formats, absolute names), gives QEMU
// pinned formats and no locks at every level.
func TestQcow2ChainFromQemuImg(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img is not installed")
	}
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(base, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(base, 64<<20)
	mid, top := filepath.Join(dir, "mid.qcow2"), filepath.Join(dir, "top.qcow2")
	for _, c := range [][]string{
		{"create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, mid},
		{"create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", mid, top},
	} {
		if out, err := exec.Command("qemu-img", c...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v %s", c, err, out)
		}
	}
	setFormat(t, top, "qcow2")
	d, err := openDrive(top, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	want := "file.locking=off,backing.driver=qcow2,backing.file.locking=off,backing.backing.driver=raw,backing.backing.file.locking=off"
	if d.formatName() != formatQcow2 || driveLockingOpts(d) != want {
		t.Errorf("format %q, options %q; want qcow2, %q", d.formatName(), driveLockingOpts(d), want)
	}
	// The middle image has no attribute: opened as a drive itself, raw.
	m, err := openDrive(mid, true)
	if err != nil {
		t.Fatal(err)
	}
	if m.formatName() != formatRaw {
		t.Errorf("unmarked qcow2 image opened as %s", m.formatName())
	}
	m.close()
}

// TestAPIRelativePathsAndQcow2: drive, vsock and kernel paths relative to
// the VMM's working directory are opened there and kept as given; a
// root-marked qcow2 drive that cannot be used is a drive error at PUT.
func TestAPIRelativePathsAndQcow2(t *testing.T) {
	tv := newTestVMM(t)
	t.Chdir(tv.dir)
	writeFile(t, "base.raw", make([]byte, 1<<20))
	writeFile(t, "work.ext4", make([]byte, 1<<20))
	writeFile(t, "rootfs.ext4", qcow2Header(filepath.Join(tv.dir, "base.raw"), "raw", 0))
	setFormat(t, "rootfs.ext4", "qcow2")
	writeFile(t, "bad.qcow2", qcow2Header("base.raw", "raw", 0))
	setFormat(t, "bad.qcow2", "qcow2")

	expect(t, "relative root", tv.do(t, "PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"rootfs.ext4","is_root_device":true,"is_read_only":false}`), 204, "")
	expect(t, "relative work", tv.do(t, "PUT", "/drives/work", `{"drive_id":"work","path_on_host":"work.ext4","is_root_device":false,"is_read_only":false}`), 204, "")
	expect(t, "relative vsock", tv.do(t, "PUT", "/vsock", `{"guest_cid":3,"uds_path":"agent.sock"}`), 204, "")
	expect(t, "bad qcow2", tv.do(t, "PUT", "/drives/bad", `{"drive_id":"bad","path_on_host":"bad.qcow2","is_root_device":false,"is_read_only":false}`), 400,
		`Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: the qcow2 backing file "base.raw" is not an absolute path bad.qcow2`)
	if fi, err := os.Lstat(filepath.Join(tv.dir, "agent.sock")); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("uds_path agent.sock not bound in the working directory: %v", err)
	}
	d := tv.v.cfg.drives
	if len(d) != 2 || d[0].path != "rootfs.ext4" || d[0].formatName() != formatQcow2 || d[1].path != "work.ext4" || d[1].formatName() != formatRaw {
		t.Fatalf("drives %+v", d)
	}
	var cfg struct {
		Drives []struct {
			Path string `json:"path_on_host"`
		} `json:"drives"`
		Vsock struct {
			UdsPath string `json:"uds_path"`
		} `json:"vsock"`
	}
	json.Unmarshal([]byte(tv.do(t, "GET", "/vm/config", "").body), &cfg)
	if len(cfg.Drives) != 2 || cfg.Drives[0].Path != "rootfs.ext4" || cfg.Drives[1].Path != "work.ext4" || cfg.Vsock.UdsPath != "agent.sock" {
		t.Errorf("GET /vm/config: %+v", cfg)
	}
	// QEMU's argv: qcow2 with the chain pinned, raw as before, no path.
	boot, _ := os.Open("base.raw")
	defer boot.Close()
	tv.v.cfg.boot = &bootCfg{kernel: boot}
	p := planLaunch(&tv.v.cfg, boot, boot, nil, false, "console=ttyS0")
	argv := strings.Join(p.args, " ")
	for _, want := range []string{
		"-drive file=/dev/fdset/1,if=none,id=drive0,format=qcow2,cache=unsafe,readonly=off,file.locking=off,backing.driver=raw,backing.file.locking=off ",
		"-drive file=/dev/fdset/2,if=none,id=drive1,format=raw,cache=unsafe,readonly=off,file.locking=off ",
	} {
		if !strings.Contains(argv, want) {
			t.Errorf("argv lacks %q:\n%s", want, argv)
		}
	}
	if strings.Contains(argv, tv.dir) || strings.Contains(argv, ".ext4") {
		t.Errorf("a host path reached QEMU's argv: %s", argv)
	}
}
