package guestbuild

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeBuild writes stand-in artifacts and a manifest into staging.
func fakeBuild(staging, tag string) error {
	for _, f := range []string{fileVmlinux, fileVmlinuz, fileInitrd, fileRootfs} {
		if err := os.WriteFile(filepath.Join(staging, f), []byte(tag+" "+f), 0o644); err != nil {
			return err
		}
	}
	b, _ := json.Marshal(manifest{Key: filepath.Base(staging), Recipe: recipeHash(), KernelVersion: "test-" + tag, BuiltAt: time.Now()})
	return os.WriteFile(filepath.Join(staging, fileManifest), b, 0o644)
}

func noStaging(t *testing.T, root string) {
	t.Helper()
	ms, _ := filepath.Glob(filepath.Join(root, ".staging-*"))
	if len(ms) != 0 {
		t.Errorf("staging directories left: %v", ms)
	}
}

func TestEnsurePublishedConcurrent(t *testing.T) {
	root := t.TempDir()
	var builds atomic.Int32
	var wg sync.WaitGroup
	dirs := make([]string, 4)
	errs := make([]error, 4)
	for i := range dirs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dirs[i], errs[i] = ensurePublished(context.Background(), root, "k1", progress{}, func(ctx context.Context, staging string) error {
				builds.Add(1)
				time.Sleep(300 * time.Millisecond) // long enough for the others to queue on the lock
				return fakeBuild(staging, "a")
			})
		}()
	}
	wg.Wait()
	for i := range dirs {
		if errs[i] != nil || dirs[i] != filepath.Join(root, "k1") {
			t.Errorf("caller %d: %q, %v", i, dirs[i], errs[i])
		}
	}
	if n := builds.Load(); n != 1 {
		t.Errorf("%d builds, want 1", n)
	}
	if !published(filepath.Join(root, "k1")) {
		t.Error("not published")
	}
	noStaging(t, root)
}

func TestEnsurePublishedFailure(t *testing.T) {
	root := t.TempDir()
	boom := errors.New("boom")
	_, err := ensurePublished(context.Background(), root, "k1", progress{}, func(ctx context.Context, staging string) error {
		fakeBuild(staging, "half") // everything written, then a failure
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "k1")); !os.IsNotExist(err) {
		t.Errorf("failed build published: %v", err)
	}
	noStaging(t, root)

	// A build that "succeeds" but leaves files out is not published either.
	_, err = ensurePublished(context.Background(), root, "k1", progress{}, func(ctx context.Context, staging string) error {
		return os.WriteFile(filepath.Join(staging, fileVmlinux), nil, 0o644)
	})
	if err == nil {
		t.Error("incomplete build accepted")
	}
	noStaging(t, root)

	// A leftover from a crashed build and a half-present final dir are cleaned.
	os.MkdirAll(filepath.Join(root, ".staging-k1-crashed", "work"), 0o755)
	os.MkdirAll(filepath.Join(root, "k1"), 0o755)
	dir, err := ensurePublished(context.Background(), root, "k1", progress{}, func(ctx context.Context, staging string) error {
		return fakeBuild(staging, "b")
	})
	if err != nil || !published(dir) {
		t.Fatalf("rebuild: %q %v", dir, err)
	}
	noStaging(t, root)
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o755 {
		t.Errorf("published dir mode %v", st.Mode())
	}
}

func TestEnsurePublishedCancelWhileLocked(t *testing.T) {
	root := t.TempDir()
	unlock, err := lockFile(context.Background(), filepath.Join(root, ".lock"), progress{})
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	var msgs bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = ensurePublished(ctx, root, "k1", progress{&msgs}, func(ctx context.Context, staging string) error {
		t.Error("built while another holder had the lock")
		return nil
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v", err)
	}
	if !strings.Contains(msgs.String(), "guest: waiting for another build") {
		t.Errorf("progress = %q", msgs.String())
	}
}

// TestEnsurePublishedCrossProcess runs two copies of this test binary that
// race to build the same key: exactly one builds, both see the result.
func TestEnsurePublishedCrossProcess(t *testing.T) {
	root := t.TempDir()
	count := filepath.Join(root, "builds.log")
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for i := 0; i < 2; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperEnsureProcess$", "-test.v")
		cmd.Env = append(os.Environ(), "GUESTBUILD_HELPER_ROOT="+root, "GUESTBUILD_HELPER_COUNT="+count, fmt.Sprintf("GUESTBUILD_HELPER_ID=%d", i))
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, cmd), append(outs, &out)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("helper %d: %v\n%s", i, err, outs[i])
		}
		if !strings.Contains(outs[i].String(), "PUBLISHED "+filepath.Join(root, "kx")) {
			t.Errorf("helper %d output:\n%s", i, outs[i])
		}
	}
	b, _ := os.ReadFile(count)
	if n := strings.Count(string(b), "\n"); n != 1 {
		t.Errorf("%d builds across processes, want 1:\n%s", n, b)
	}
	noStaging(t, root)
}

// TestHelperEnsureProcess is the child of TestEnsurePublishedCrossProcess.
func TestHelperEnsureProcess(t *testing.T) {
	root := os.Getenv("GUESTBUILD_HELPER_ROOT")
	if root == "" {
		t.Skip("helper process only")
	}
	dir, err := ensurePublished(context.Background(), root, "kx", progress{os.Stdout}, func(ctx context.Context, staging string) error {
		f, err := os.OpenFile(os.Getenv("GUESTBUILD_HELPER_COUNT"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		fmt.Fprintf(f, "built by %s\n", os.Getenv("GUESTBUILD_HELPER_ID"))
		f.Close()
		time.Sleep(500 * time.Millisecond)
		return fakeBuild(staging, os.Getenv("GUESTBUILD_HELPER_ID"))
	})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("PUBLISHED %s\n", dir)
}

func TestNewestPublishedFallback(t *testing.T) {
	root := t.TempDir()
	if _, err := newestPublished(root); !errors.Is(err, errNoPublished) {
		t.Fatalf("empty cache: %v", err)
	}
	for _, k := range []string{"old", "new"} {
		if _, err := ensurePublished(context.Background(), root, k, progress{}, func(ctx context.Context, staging string) error {
			return fakeBuild(staging, k)
		}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	a, err := newestPublished(root)
	if err != nil || a.Key != "new" || a.KernelVersion != "test-new" {
		t.Fatalf("newest = %+v, %v", a, err)
	}
	if a.Vmlinux != filepath.Join(root, "new", fileVmlinux) || a.Rootfs != filepath.Join(root, "new", fileRootfs) {
		t.Errorf("paths: %+v", a)
	}
}

func TestEnsureNeedsCacheDir(t *testing.T) {
	if _, err := Ensure(context.Background(), Options{}); err == nil {
		t.Error("empty CacheDir accepted")
	}
}
