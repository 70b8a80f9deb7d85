package updater

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var stageWant = []string{"banger", "bangerd", "banger-vmm"}

type entry struct {
	name     string
	typ      byte
	body     string
	linkname string
}

func reg(name, body string) entry { return entry{name: name, typ: tar.TypeReg, body: body} }

func goodEntries() []entry {
	return []entry{reg("banger", "#!cli\n"), reg("bangerd", "#!daemon\n"), reg("banger-vmm", "#!vmm\n")}
}

func writeTarball(t *testing.T, entries []entry) string {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644, Linkname: e.linkname, ModTime: time.Unix(1700000000, 0)}
		if e.typ == tar.TypeReg {
			hdr.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "release.tar.gz")
	if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestStageExactSet(t *testing.T) {
	tarball := writeTarball(t, goodEntries())
	stageDir := filepath.Join(t.TempDir(), "updates", "v1.2.3")
	// Leftovers from an earlier attempt are wiped: the stage dir is fresh.
	if err := os.MkdirAll(stageDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stageDir, "leftover"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	staged, err := Stage(tarball, stageDir, stageWant)
	if err != nil {
		t.Fatal(err)
	}
	if len(staged) != 3 {
		t.Fatalf("staged = %v", staged)
	}
	for _, e := range goodEntries() {
		p := staged[e.name]
		if p != filepath.Join(stageDir, e.name) {
			t.Errorf("%s staged at %s", e.name, p)
		}
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s mode %v, want regular 0755", e.name, fi.Mode())
		}
		got, _ := os.ReadFile(p)
		if string(got) != e.body {
			t.Errorf("%s content %q, want %q", e.name, got, e.body)
		}
	}
	ents, _ := os.ReadDir(stageDir)
	if len(ents) != 3 {
		t.Errorf("stage dir holds %d entries, want 3", len(ents))
	}
}

func TestStageRefusals(t *testing.T) {
	good := goodEntries()
	with := func(extra ...entry) []entry { return append(append([]entry{}, good...), extra...) }
	cases := map[string][]entry{
		"extra entry":        with(reg("install.sh", "#!/bin/sh\n")),
		"missing entry":      good[:2],
		"empty archive":      {},
		"traversal":          with(reg("../evil", "x")),
		"deep traversal":     with(reg("sub/../../evil", "x")),
		"traversal as want":  {reg("../banger", "x"), good[1], good[2]},
		"absolute path":      with(reg("/tmp/evil", "x")),
		"absolute as want":   {reg("/banger", "x"), good[1], good[2]},
		"symlink":            {{name: "banger", typ: tar.TypeSymlink, linkname: "/bin/sh"}, good[1], good[2]},
		"extra symlink":      with(entry{name: "evil", typ: tar.TypeSymlink, linkname: "/etc/passwd"}),
		"hardlink":           {good[0], good[1], {name: "banger-vmm", typ: tar.TypeLink, linkname: "banger"}},
		"directory":          with(entry{name: "bin/", typ: tar.TypeDir}),
		"directory as want":  {{name: "banger", typ: tar.TypeDir}, good[1], good[2]},
		"duplicate":          with(reg("banger", "second copy")),
		"nested":             {reg("bin/banger", "x"), good[1], good[2]},
		"char device":        with(entry{name: "null", typ: tar.TypeChar}),
		"fifo as want":       {{name: "banger", typ: tar.TypeFifo}, good[1], good[2]},
		"dot-slash prefixed": {reg("./banger", "x"), good[1], good[2]},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			tarball := writeTarball(t, entries)
			parent := t.TempDir()
			stageDir := filepath.Join(parent, "stage")
			staged, err := Stage(tarball, stageDir, stageWant)
			t.Log(err)
			if !errors.Is(err, ErrUnsafeArchive) {
				t.Fatalf("err = %v, want ErrUnsafeArchive", err)
			}
			if staged != nil {
				t.Errorf("staged = %v on refusal", staged)
			}
			if _, err := os.Lstat(stageDir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("stage dir left behind (err %v)", err)
			}
			// Nothing escaped next to the stage dir either.
			if ents, _ := os.ReadDir(parent); len(ents) != 0 {
				t.Errorf("parent holds %d entries after a refusal", len(ents))
			}
		})
	}
}

func TestStageRefusesNonGzipAndCorrupt(t *testing.T) {
	p := filepath.Join(t.TempDir(), "plain.tar")
	if err := os.WriteFile(p, []byte("not gzip at all"), 0o600); err != nil {
		t.Fatal(err)
	}
	stageDir := filepath.Join(t.TempDir(), "stage")
	if _, err := Stage(p, stageDir, stageWant); !errors.Is(err, ErrUnsafeArchive) {
		t.Fatalf("err = %v", err)
	}
	assertAbsent(t, stageDir)

	good, err := os.ReadFile(writeTarball(t, goodEntries()))
	if err != nil {
		t.Fatal(err)
	}
	cut := filepath.Join(t.TempDir(), "cut.tar.gz")
	if err := os.WriteFile(cut, good[:len(good)-12], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Stage(cut, stageDir, stageWant); !errors.Is(err, ErrUnsafeArchive) {
		t.Fatalf("truncated gzip: err = %v", err)
	}
	assertAbsent(t, stageDir)
}

func TestStageSizeCap(t *testing.T) {
	old := MaxStagedBytes
	MaxStagedBytes = 10
	t.Cleanup(func() { MaxStagedBytes = old })
	stageDir := filepath.Join(t.TempDir(), "stage")
	if _, err := Stage(writeTarball(t, goodEntries()), stageDir, stageWant); !errors.Is(err, ErrUnsafeArchive) {
		t.Fatalf("err = %v", err)
	}
	assertAbsent(t, stageDir)
}

func TestStageArgumentChecks(t *testing.T) {
	tarball := writeTarball(t, goodEntries())
	if _, err := Stage(tarball, "relative/stage", stageWant); err == nil {
		t.Error("relative stage dir accepted")
	}
	if _, err := Stage(tarball, "/", stageWant); err == nil {
		t.Error("/ accepted as stage dir")
	}
	dir := filepath.Join(t.TempDir(), "s")
	for _, want := range [][]string{nil, {"banger", "banger"}, {"../banger"}, {"a/b"}} {
		if _, err := Stage(tarball, dir, want); err == nil {
			t.Errorf("want %q accepted", want)
		}
	}
}
