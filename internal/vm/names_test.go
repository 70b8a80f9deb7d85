package vm

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/banger-dev/banger/internal/store"
)

// TestGeneratedNameAvoidsTakenNames: concurrent `vm run` without --name
// drew the same generated name ("a VM named "rapid-lemur" already exists")
// about once in 16 eight-way runs. A generated name that is taken is
// replaced by a free one, even when every adjective-noun pair is taken.
func TestGeneratedNameAvoidsTakenNames(t *testing.T) {
	st := testStore(t)
	ctx := context.Background()
	s := &Service{Store: st}
	i := 0
	for _, a := range adjectives {
		for _, n := range nouns {
			i++
			name := a + "-" + n
			if err := st.InsertVM(ctx, store.VMRecord{ID: fmt.Sprintf("id%04d", i), Name: name, ImageID: "img", State: "stopped", GuestIP: fmt.Sprintf("10.%d.%d.2", i/250, i%250)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for k := 0; k < 20; k++ {
		got := s.freeName(ctx, "rapid-lemur")
		if err := ValidateName(got); err != nil {
			t.Fatalf("free name %q: %v", got, err)
		}
		if _, err := st.GetVM(ctx, got); err == nil {
			t.Fatalf("free name %q is taken", got)
		}
	}
	if got := s.freeName(ctx, "calm-otter-x"); got != "calm-otter-x" {
		t.Fatalf("a free name was replaced by %q", got)
	}
}

// testStore is a fresh store on disk holding kernel "k" and image "img",
// for VM records; it is closed when the test ends.
func testStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "banger.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	if err := st.PutKernel(ctx, store.KernelRecord{ID: "k", Name: "k", Version: "k", Vmlinux: "/k"}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutImage(ctx, store.ImageRecord{ID: "img", Name: "img", Rootfs: "/r", KernelID: "k"}); err != nil {
		t.Fatal(err)
	}
	return st
}
