package image

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/store"
)

// TestDerivedRegisterFindPrune: a derived image is found again by its key
// only; a second build of the same repository is a new image; cache prune
// removes the older one when no VM uses it and keeps the newest of each
// repository; a built-in or a foreign image's name is never taken.
func TestDerivedRegisterFindPrune(t *testing.T) {
	s := newService(t)
	ctx := context.Background()
	src := filepath.Join(t.TempDir(), "vm-rootfs")
	if err := os.WriteFile(src, []byte("an ext4 image"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Store.PutKernel(ctx, store.KernelRecord{ID: "k1", Name: "k1", Version: "6.1", Vmlinux: src, CreatedAt: "2026-01-01T00:00:00Z"}); err != nil {
		t.Fatal(err)
	}
	base := Resolved{Image: store.ImageRecord{ID: "base", Meta: map[string]string{}}, Kernel: store.KernelRecord{ID: "k1"}}
	reg := func(name, key, file string) {
		t.Helper()
		if _, err := s.RegisterDerived(ctx, DerivedParams{Name: name, Key: key, Base: base, BaseName: "debian-bookworm", File: file, Rootfs: src}); err != nil {
			t.Fatal(err)
		}
	}
	reg("app-aaaaaaaa", "aaaaaaaaaaaa", "/src/app/.banger/image.toml")
	if _, ok := s.FindDerived(ctx, "app-aaaaaaaa", "aaaaaaaaaaaa"); !ok {
		t.Fatal("registered derived image not found by its key")
	}
	if _, ok := s.FindDerived(ctx, "app-aaaaaaaa", "bbbbbbbbbbbb"); ok {
		t.Fatal("found by another key")
	}
	im, _ := s.Store.GetImage(ctx, "app-aaaaaaaa")
	if b, err := os.ReadFile(im.Rootfs); err != nil || string(b) != "an ext4 image" || !strings.HasPrefix(im.Rootfs, s.Layout.ImagesDir()) {
		t.Fatalf("rootfs %s: %q %v", im.Rootfs, b, err)
	}
	reg("lib-cccccccc", "cccccccccccc", "/src/lib/.banger/image.toml")
	reg("app-bbbbbbbb", "bbbbbbbbbbbb", "/src/app/.banger/image.toml")

	if _, err := s.RegisterDerived(ctx, DerivedParams{Name: "tiny", Key: "x", Base: base, Rootfs: src}); err == nil {
		t.Fatal("a derived image took a built-in's name")
	}
	if err := s.Store.PutImage(ctx, store.ImageRecord{ID: "mine", Name: "mine-dddddddd", Rootfs: src, KernelID: "k1", Meta: map[string]string{}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RegisterDerived(ctx, DerivedParams{Name: "mine-dddddddd", Key: "d", Base: base, Rootfs: src}); err == nil {
		t.Fatal("a derived image replaced a registered one")
	}

	r, err := s.CachePrune(ctx, true)
	if err != nil || strings.Join(r.Images, ",") != "app-aaaaaaaa" {
		t.Fatalf("dry run: %+v %v", r, err)
	}
	if _, err := s.Store.GetImage(ctx, "app-aaaaaaaa"); err != nil {
		t.Fatal("a dry run deleted an image")
	}
	r, err = s.CachePrune(ctx, false)
	if err != nil || strings.Join(r.Images, ",") != "app-aaaaaaaa" {
		t.Fatalf("prune: %+v %v", r, err)
	}
	ims, _ := s.Store.ListImages(ctx)
	var names []string
	for _, im := range ims {
		names = append(names, im.Name)
	}
	sort.Strings(names)
	if strings.Join(names, ",") != "app-bbbbbbbb,lib-cccccccc,mine-dddddddd" {
		t.Fatalf("left after prune: %v", names)
	}
	if _, err := os.Stat(filepath.Join(s.Layout.ImagesDir(), "app-aaaaaaaa")); !os.IsNotExist(err) {
		t.Fatalf("the pruned image's directory is still there: %v", err)
	}
}
