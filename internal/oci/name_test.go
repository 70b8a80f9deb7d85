package oci

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDefaultName(t *testing.T) {
	dg := "sha256:" + strings.Repeat("0123456789abcdef", 4)
	for _, tc := range []struct{ ref, want string }{
		{"docker.io/library/debian:bookworm", "debian-bookworm"},
		{"debian:bookworm", "debian-bookworm"},
		{"debian", "debian-latest"},
		{"ghcr.io/org/app:v1.2", "app-v1.2"},
		{"ghcr.io/org/app:V1.2_RC", "app-v1.2_rc"},
		{"quay.io/org/team/app@" + dg, "app-0123456789ab"},
		{"debian:bookworm@" + dg, "debian-0123456789ab"},
		{"localhost:5000/x/y:tag", "y-tag"},
		{"_under:x", ""},
		{"ubuntu:" + strings.Repeat("a", 128), "ubuntu-" + strings.Repeat("a", 56)},
		{"__/x:-y", ""},
		{"", ""},
		{"UPPER/case", ""},
	} {
		got, err := DefaultName(tc.ref)
		if tc.want == "" {
			if err == nil && !validName.MatchString(got) {
				t.Errorf("DefaultName(%q) = %q: invalid name and no error", tc.ref, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("DefaultName(%q) = %q, %v; want %q", tc.ref, got, err, tc.want)
		}
		if !validName.MatchString(got) {
			t.Errorf("DefaultName(%q) = %q does not match %s", tc.ref, got, validName)
		}
	}
	if _, err := DefaultName("UPPER/case"); err == nil {
		t.Error("invalid reference accepted")
	}
}

func TestPruneCache(t *testing.T) {
	cache := t.TempDir()
	if n, b, err := PruneCache(filepath.Join(cache, "missing"), false); n != 0 || b != 0 || err != nil {
		t.Errorf("missing cache: %d, %d, %v", n, b, err)
	}
	blobs := BlobDir(cache)
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name string, size int) {
		if err := os.WriteFile(filepath.Join(blobs, name), make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(strings.Repeat("a", 64), 100)
	write(strings.Repeat("b", 64), 200)
	write(".tmp-aaaaaaaaaaaa-123", 7) // an interrupted download

	freed, n, err := PruneCache(cache, true)
	if err != nil || freed != 307 || n != 2 {
		t.Errorf("dry run: %d bytes, %d blobs, %v; want 307, 2", freed, n, err)
	}
	if ents, _ := os.ReadDir(blobs); len(ents) != 3 {
		t.Errorf("dry run removed files: %v", ents)
	}
	if ents, _ := os.ReadDir(cache); len(ents) != 1 {
		t.Errorf("dry run renamed things: %v", ents)
	}

	freed, n, err = PruneCache(cache, false)
	if err != nil || freed != 307 || n != 2 {
		t.Errorf("prune: %d bytes, %d blobs, %v; want 307, 2", freed, n, err)
	}
	ents, _ := os.ReadDir(cache)
	if len(ents) != 1 || ents[0].Name() != "oci" || !ents[0].IsDir() {
		t.Errorf("after prune the cache holds %v, want an empty oci/", ents)
	}
	if sub, _ := os.ReadDir(filepath.Join(cache, "oci")); len(sub) != 0 {
		t.Errorf("oci/ not empty: %v", sub)
	}
	// Leftovers of an interrupted prune are collected.
	if err := os.MkdirAll(filepath.Join(cache, "oci.prune-dead", "blobs", "sha256"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cache, "oci.prune-dead", "blobs", "sha256", strings.Repeat("c", 64)), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if freed, n, err = PruneCache(cache, false); err != nil || freed != 1 || n != 1 {
		t.Errorf("leftover prune: %d, %d, %v", freed, n, err)
	}
	if _, err := os.Stat(filepath.Join(cache, "oci.prune-dead")); !os.IsNotExist(err) {
		t.Errorf("leftover not removed: %v", err)
	}
}
