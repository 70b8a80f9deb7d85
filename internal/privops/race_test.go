package privops

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The attacker: a process of the owner uid that keeps swapping everything
// it can write for symlinks to root's secret while the helper works
// ([P7] item 3). It runs as the test binary re-executed (see TestMain).
func TestMain(m *testing.M) {
	if dir := os.Getenv("BANGER_TEST_ATTACK"); dir != "" {
		attack(dir)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func attack(root string) {
	state := filepath.Join(root, "state")
	secret := filepath.Join(root, "secret")
	vms := filepath.Join(root, "priv", "vms")
	stop := filepath.Join(state, "stop")
	wins := 0
	for i := 0; ; i++ {
		if _, err := os.Stat(stop); err == nil {
			break
		}
		// Swap the owner's inputs for links to root's secret and back
		// (with pauses, so some of the helper's calls start on real files
		// and meet the swap half way).
		time.Sleep(time.Duration(i%4) * 500 * time.Microsecond)
		for _, f := range []string{"base.ext4", "seed.tar", "tools.ext4", "vmlinux"} {
			p := filepath.Join(state, f)
			_ = os.Rename(p, p+".real")
			_ = os.Symlink(secret, p)
			_ = os.Remove(p)
			_ = os.Rename(p+".real", p)
		}
		// Try to plant links inside root's VM tree (seed dirs, disks, the
		// VM dirs themselves).
		entries, _ := os.ReadDir(vms)
		for _, e := range entries {
			d := filepath.Join(vms, e.Name())
			if os.Symlink(filepath.Join(root, "victim"), filepath.Join(d, fmt.Sprintf("seed-x%d", i))) == nil {
				wins++
			}
			if os.Rename(d, d+".moved") == nil {
				wins++
				_ = os.Rename(d+".moved", d)
			}
			sub, _ := os.ReadDir(d)
			for _, s := range sub {
				if strings.HasPrefix(s.Name(), "seed-") {
					if os.RemoveAll(filepath.Join(d, s.Name())) == nil {
						if os.Symlink(filepath.Join(root, "victim"), filepath.Join(d, s.Name())) == nil {
							wins++
						}
					}
				}
			}
		}
	}
	fmt.Println("attacker wins:", wins)
}

// TestHelperFileWorkUnderOwnerSwaps is [P7] item 3 as a bounded race: while
// an owner process loops swapping its files and anything it can reach in
// the VM tree for symlinks, PrepareDisks, LaunchVMM's kernel copy and
// RemoveVMDir never read root's secret into a VM disk, never write or
// delete outside the VM tree, and the attacker never gets a link into it.
func TestHelperFileWorkUnderOwnerSwaps(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		if _, err := os.Stat("/sbin/mkfs.ext4"); err != nil {
			t.Skip("needs mkfs.ext4")
		}
	}
	const owner = 4245
	root, err := os.MkdirTemp("", "bgrace")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	os.Chmod(root, 0o755)
	state := filepath.Join(root, "state")
	os.MkdirAll(state, 0o755)
	os.Chown(state, owner, owner)
	marker := bytes.Repeat([]byte("ROOT-SECRET-"), 400)
	os.WriteFile(filepath.Join(root, "secret"), marker, 0o600)
	victim := filepath.Join(root, "victim")
	os.MkdirAll(victim, 0o700)
	os.WriteFile(filepath.Join(victim, "keep"), []byte("keep"), 0o600)
	for _, f := range []string{"base.ext4", "tools.ext4", "vmlinux"} {
		p := filepath.Join(state, f)
		os.WriteFile(p, bytes.Repeat([]byte("owner-data "), 1000), 0o644)
		os.Chown(p, owner, owner)
	}
	seed := filepath.Join(state, "seed.tar")
	writeTar(t, seed)
	os.Chown(seed, owner, owner)

	p := Policy{Roots: []string{state}, VMsDir: filepath.Join(root, "priv", "vms"), OwnerUID: owner, OwnerGID: owner}
	l := &Local{Policy: p}

	self, _ := os.Executable()
	cp := filepath.Join(root, "attacker")
	b, _ := os.ReadFile(self)
	os.WriteFile(cp, b, 0o755)
	cmd := exec.Command(cp, "-test.run=^$")
	cmd.Env = append(os.Environ(), "BANGER_TEST_ATTACK="+root)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: owner, Gid: owner}}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ok, refused := 0, 0
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; i < 200 && ok < 5 && time.Now().Before(deadline); i++ {
		id := fmt.Sprintf("vm%d", i)
		_, err := l.PrepareDisks(ctx, DisksReq{ID: id, BaseRootfs: filepath.Join(state, "base.ext4"), WorkDiskBytes: 64 << 20,
			AuthorizedKey: "ssh-ed25519 AAAAC3Nz banger\n", WorkSeed: seed, ToolsSource: filepath.Join(state, "tools.ext4")})
		if err != nil {
			if refused == 0 {
				t.Logf("first refusal: %v", err)
			}
			refused++
			continue
		}
		ok++
		d, _, err := l.vmDir(id, false)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.cloneInto(d, "kernel", filepath.Join(state, "vmlinux")); err != nil {
			refused++
		}
		d.Close()
		for _, f := range []string{"rootfs.ext4", "work.ext4", "tools.ext4", "kernel"} {
			data, _ := os.ReadFile(filepath.Join(p.VMsDir, id, f))
			if bytes.Contains(data, []byte("ROOT-SECRET-")) {
				t.Errorf("%s/%s holds root's secret", id, f)
			}
		}
		if err := l.RemoveVMDir(ctx, VMReq{ID: id}); err != nil {
			t.Errorf("remove %s: %v", id, err)
		}
	}
	os.WriteFile(filepath.Join(state, "stop"), nil, 0o644)
	cmd.Wait()
	t.Logf("prepared %d, refused %d; %s", ok, refused, strings.TrimSpace(out.String()))
	if !strings.Contains(out.String(), "attacker wins: 0") {
		t.Errorf("the owner reached into root's VM tree: %s", out.String())
	}
	if b, err := os.ReadFile(filepath.Join(victim, "keep")); err != nil || string(b) != "keep" {
		t.Errorf("victim dir touched: %v", err)
	}
	if fi, _ := os.Stat(victim); fi.Mode().Perm() != 0o700 {
		t.Errorf("victim dir mode changed to %v", fi.Mode().Perm())
	}
	if ents, _ := os.ReadDir(victim); len(ents) != 1 {
		t.Errorf("files created in the victim dir: %v", ents)
	}
	// Without the attacker, the same request works.
	if _, err := l.PrepareDisks(ctx, DisksReq{ID: "calm", BaseRootfs: filepath.Join(state, "base.ext4"), WorkDiskBytes: 64 << 20,
		AuthorizedKey: "ssh-ed25519 AAAAC3Nz banger\n", WorkSeed: seed, ToolsSource: filepath.Join(state, "tools.ext4")}); err != nil {
		t.Errorf("PrepareDisks without an attacker: %v", err)
	}
	// The layout the attacks above won against: VM dirs inside the owner's
	// state dir. The helper now refuses to work there at all.
	old := &Local{Policy: Policy{Roots: []string{state}, VMsDir: filepath.Join(state, "vms"), OwnerUID: owner, OwnerGID: owner}}
	_, err = old.PrepareDisks(ctx, DisksReq{ID: "old", BaseRootfs: filepath.Join(state, "base.ext4"), WorkDiskBytes: 64 << 20,
		AuthorizedKey: "ssh-ed25519 AAAAC3Nz banger\n"})
	if err == nil || !strings.Contains(err.Error(), "not root-only") {
		t.Errorf("a VM tree inside the owner's state dir was used: %v", err)
	}
}
