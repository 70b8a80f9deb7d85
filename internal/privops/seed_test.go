package privops

import (
	"archive/tar"
	"os"
	"path/filepath"
	"testing"
)

func TestExtractSeedKeepsOnlySafeEntries(t *testing.T) {
	src := filepath.Join(t.TempDir(), "seed.tar")
	f, _ := os.Create(src)
	tw := tar.NewWriter(f)
	add := func(h tar.Header, body string) {
		h.Size = int64(len(body))
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	add(tar.Header{Name: ".config/", Typeflag: tar.TypeDir, Mode: 0o755}, "")
	add(tar.Header{Name: ".bashrc", Typeflag: tar.TypeReg, Mode: 0o666}, "PS1=x\n")
	add(tar.Header{Name: ".config/app.toml", Typeflag: tar.TypeReg, Mode: 0o600}, "a=1\n")
	add(tar.Header{Name: "../escape", Typeflag: tar.TypeReg, Mode: 0o644}, "no\n")
	add(tar.Header{Name: "/abs", Typeflag: tar.TypeReg, Mode: 0o644}, "no\n")
	add(tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"}, "")
	add(tar.Header{Name: ".ssh/authorized_keys", Typeflag: tar.TypeReg, Mode: 0o600}, "ssh-ed25519 AAAA intruder\n")
	tw.Close()
	f.Close()

	dir := filepath.Join(t.TempDir(), "seed")
	os.MkdirAll(dir, 0o700)
	sf, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer sf.Close()
	if err := extractSeed(sf, dir); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, ".bashrc")); string(b) != "PS1=x\n" {
		t.Fatalf(".bashrc = %q", b)
	}
	if fi, _ := os.Stat(filepath.Join(dir, ".bashrc")); fi.Mode().Perm() != 0o644 {
		t.Fatalf(".bashrc mode %v: group/other write must be dropped", fi.Mode().Perm())
	}
	if b, _ := os.ReadFile(filepath.Join(dir, ".config", "app.toml")); string(b) != "a=1\n" {
		t.Fatalf("app.toml = %q", b)
	}
	for _, p := range []string{filepath.Join(filepath.Dir(dir), "escape"), filepath.Join(dir, "abs"), filepath.Join(dir, "link"), filepath.Join(dir, ".ssh", "authorized_keys")} {
		if _, err := os.Lstat(p); err == nil {
			t.Fatalf("%s was created", p)
		}
	}
}

func writeTar(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	body := "export A=1\n"
	tw.WriteHeader(&tar.Header{Name: ".profile", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
	tw.Write([]byte(body))
	tw.Close()
	f.Close()
}
