package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// ent is one tar entry of a test layer.
type ent struct {
	name     string
	typ      byte
	mode     int64
	uid, gid int
	body     string
	link     string
	pax      map[string]string
}

func file(name, body string, mode int64) ent {
	return ent{name: name, typ: tar.TypeReg, mode: mode, body: body}
}

func dir(name string, mode int64) ent { return ent{name: name, typ: tar.TypeDir, mode: mode} }

func symlink(name, target string) ent {
	return ent{name: name, typ: tar.TypeSymlink, mode: 0o777, link: target}
}

func hardlink(name, target string) ent {
	return ent{name: name, typ: tar.TypeLink, mode: 0o644, link: target}
}

func owned(e ent, uid, gid int) ent { e.uid, e.gid = uid, gid; return e }

func tarBytes(t testing.TB, ents ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{
			Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			Linkname: e.link, Size: int64(len(e.body)), Format: tar.FormatPAX, PAXRecords: e.pax,
		}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if e.typ == tar.TypeChar {
			h.Devmajor, h.Devminor = 1, 3
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar header %s: %v", e.name, err)
		}
		if h.Size > 0 {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gzipBytes(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zstdBytes(t testing.TB, b []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(b, nil)
}

// writeLayers writes blobs to files and returns their paths.
func writeLayers(t testing.TB, blobs ...[]byte) []string {
	t.Helper()
	d := t.TempDir()
	var out []string
	for i, b := range blobs {
		p := filepath.Join(d, "layer"+string(rune('0'+i)))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// capNetRaw is a VFS_CAP_REVISION_2 security.capability value granting
// cap_net_raw (bit 13), permitted and effective.
const capNetRaw = "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

const weirdName = `weird name\b#'é`

// standardLayers exercises every flatten rule; see TestFlatten for what the
// result must be.
func standardLayers(t testing.TB) []string {
	l1 := tarBytes(t,
		// Some tools write a global header first.
		ent{name: "pax_global_header", typ: tar.TypeXGlobalHeader, pax: map[string]string{"comment": "x"}},
		dir("./", 0o755),
		dir("etc/", 0o755),
		file("etc/hostname", "base\n", 0o644),
		file("etc/gone", "x", 0o644),
		file("etc/readonly", "ro\n", 0o444),
		dir("var/lib/stuff/", 0o755),
		file("var/lib/stuff/a", "a", 0o644),
		dir("opq/", 0o755),
		file("opq/lower1", "1", 0o644),
		dir("opq/sub/", 0o755),
		file("opq/sub/lower2", "2", 0o644),
		owned(file("usr/bin/su", "#!su\n", 0o4755), 0, 0),
		hardlink("usr/bin/su-link", "usr/bin/su"),
		file("usr/lib/os-release", "ID=test\n", 0o644),
		symlink("etc/os-release", "../usr/lib/os-release"),
		// The child comes before its directory entry.
		owned(file("home/user/secret", "s3cret", 0o600), 1000, 1000),
		owned(dir("home/user/", 0o700), 1000, 1000),
		ent{name: "dev/null", typ: tar.TypeChar, mode: 0o666},
		ent{name: "run/fifo", typ: tar.TypeFifo, mode: 0o644},
		dir("tmp/", 0o1777),
		owned(file(weirdName, "weird", 0o640), 1234, 5678),
		owned(file("sgid", "g", 0o2755), 0, 50),
		ent{name: "usr/bin/ping", typ: tar.TypeReg, mode: 0o755, body: "ping", pax: map[string]string{"SCHILY.xattr.security.capability": capNetRaw}},
	)
	l2 := tarBytes(t,
		file("etc/.wh.gone", "", 0o644),
		file("var/lib/.wh.stuff", "", 0o644),
		file("opq/keep-before", "kb", 0o644),
		file("opq/.wh..wh..opq", "", 0o644),
		file("opq/new", "n", 0o644),
		file("etc/hostname", "layer2\n", 0o644),
		symlink("link-to-etc", "etc"),
		file("link-to-etc/via-link", "vl", 0o644),
		file("etc/.wh.never-existed", "", 0o644),
	)
	l3 := tarBytes(t,
		file("usr/bin/added", "added", 0o755),
		file("etc/.wh.readonly", "", 0o644),
		file("etc/readonly", "ro2\n", 0o444), // whiteout + re-add in one layer
	)
	return writeLayers(t, gzipBytes(t, l1), zstdBytes(t, l2), l3)
}
