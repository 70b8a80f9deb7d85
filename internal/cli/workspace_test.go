package cli

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// hostileExport is a fake for a hostile guest's side of 'vm workspace
// export': it writes total bytes of "patch" (or until the session is cut,
// as guestssh cuts it when ctx ends), then exits 0.
func hostileExport(total int64) func(ctx context.Context, stdout, stderr io.Writer) (int, error) {
	return func(ctx context.Context, stdout, stderr io.Writer) (int, error) {
		chunk := bytes.Repeat([]byte("+evil\n"), 64<<10/6)
		for sent := int64(0); sent < total; sent += int64(len(chunk)) {
			if ctx.Err() != nil {
				return -1, ctx.Err()
			}
			if _, err := stdout.Write(chunk); err != nil {
				return -1, err
			}
		}
		return 0, nil
	}
}

// TestExportPatchRefusesHugePatch: a guest that sends a 256 MiB patch to an
// export capped at 4 MiB gets a one-line error naming --max-size, the output
// file keeps its old content, nothing reaches stdout, and the patch is never
// held in memory.
func TestExportPatchRefusesHugePatch(t *testing.T) {
	for _, toFile := range []bool{true, false} {
		out := filepath.Join(t.TempDir(), "guest.patch")
		if err := os.WriteFile(out, []byte("old\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		target := ""
		if toFile {
			target = out
		}
		var stdout, notes bytes.Buffer
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		start := time.Now()
		err := exportPatch(context.Background(), "dev", 4<<20, target, &stdout, &notes, hostileExport(256<<20))
		took := time.Since(start)
		runtime.ReadMemStats(&after)
		if err == nil || !strings.Contains(err.Error(), "--max-size") || !strings.Contains(err.Error(), "larger than 4.0 MiB") || strings.Contains(err.Error(), "\n") {
			t.Fatalf("to file %v: err = %v", toFile, err)
		}
		if got, _ := os.ReadFile(out); string(got) != "old\n" {
			t.Errorf("to file %v: output file now holds %d bytes", toFile, len(got))
		}
		if stdout.Len() != 0 || notes.Len() != 0 {
			t.Errorf("to file %v: %d bytes on stdout, notes %q", toFile, stdout.Len(), notes.String())
		}
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
			t.Errorf("to file %v: allocated %d MiB", toFile, alloc>>20)
		}
		if took > 5*time.Second {
			t.Errorf("to file %v: took %v", toFile, took)
		}
		left, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".banger-export-*"))
		if len(left) != 0 {
			t.Errorf("left behind: %v", left)
		}
	}
}

// TestExportPatchWrites: a patch under the limit goes to the file (with the
// "wrote" note) or to stdout, whole.
func TestExportPatchWrites(t *testing.T) {
	patch := func(ctx context.Context, stdout, stderr io.Writer) (int, error) {
		io.WriteString(stdout, "diff --git a/x b/x\n+hello\n")
		return 0, nil
	}
	out := filepath.Join(t.TempDir(), "guest.patch")
	var stdout, notes bytes.Buffer
	if err := exportPatch(context.Background(), "dev", 1<<20, out, &stdout, &notes, patch); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); string(got) != "diff --git a/x b/x\n+hello\n" || notes.String() != "banger: wrote 26 bytes to "+out+"\n" {
		t.Errorf("file %q, notes %q", got, notes.String())
	}
	notes.Reset()
	if err := exportPatch(context.Background(), "dev", 1<<20, "", &stdout, &notes, patch); err != nil {
		t.Fatal(err)
	}
	if stdout.String() != "diff --git a/x b/x\n+hello\n" || notes.Len() != 0 {
		t.Errorf("stdout %q, notes %q", stdout.String(), notes.String())
	}
}

// TestExportPatchFailure: a failed export writes nothing and its error
// carries only the start of the guest's stderr.
func TestExportPatchFailure(t *testing.T) {
	fail := func(ctx context.Context, stdout, stderr io.Writer) (int, error) {
		io.WriteString(stdout, "partial")
		io.WriteString(stderr, "fatal: not a git repository\n"+strings.Repeat("noise ", 1<<20))
		return 128, nil
	}
	var stdout, notes bytes.Buffer
	err := exportPatch(context.Background(), "dev", 1<<20, "", &stdout, &notes, fail)
	if err == nil || !strings.HasPrefix(err.Error(), "export from dev failed (exit 128): fatal: not a git repository") || len(err.Error()) > maxExportStderr+100 {
		t.Fatalf("err = %.200v (%d bytes)", err, len(err.Error()))
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout got %q", stdout.String())
	}
}
