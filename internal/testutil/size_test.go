package testutil

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// The size limits of non-test Go code ([P11]): a file that grows past
// maxFileLines or a function past maxFuncLines holds more than one concern
// and is split by responsibility.
const (
	maxFileLines = 800
	maxFuncLines = 120
)

// TestFileAndFunctionSizes fails for every non-test Go file under internal/
// and cmd/ over maxFileLines lines and every function over maxFuncLines,
// naming each.
func TestFileAndFunctionSizes(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	for _, top := range []string{"internal", "cmd"} {
		err := filepath.WalkDir(filepath.Join(root, top), func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			for _, over := range oversized(t, p) {
				t.Errorf("%s: %s", rel, over)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// oversized lists what in one file is over the limits.
func oversized(t *testing.T, path string) []string {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Errorf("%s: %v", path, err)
		return nil
	}
	var out []string
	if n := fset.File(f.Pos()).LineCount(); n > maxFileLines {
		out = append(out, "file has "+itoa(n)+" lines, more than "+itoa(maxFileLines))
	}
	for _, decl := range f.Decls {
		fd, ok := decl.(*ast.FuncDecl)
		if !ok || fd.Body == nil {
			continue
		}
		if n := fset.Position(fd.End()).Line - fset.Position(fd.Pos()).Line + 1; n > maxFuncLines {
			out = append(out, "func "+fd.Name.Name+" has "+itoa(n)+" lines, more than "+itoa(maxFuncLines))
		}
	}
	return out
}

// TestOversizedFindsBoth: the checker reports a long file and a long
// function (so the size test cannot pass by finding nothing).
func TestOversizedFindsBoth(t *testing.T) {
	var b strings.Builder
	b.WriteString("package x\n\nfunc long() {\n")
	for i := 0; i < maxFuncLines; i++ {
		b.WriteString("\t_ = 1\n")
	}
	b.WriteString("}\n")
	for i := 0; i < maxFileLines; i++ {
		b.WriteString("// filler\n")
	}
	p := filepath.Join(t.TempDir(), "x.go")
	os.WriteFile(p, []byte(b.String()), 0o644)
	got := oversized(t, p)
	if len(got) != 2 || !strings.HasPrefix(got[0], "file has ") || !strings.HasPrefix(got[1], "func long has 122 lines") {
		t.Errorf("oversized: %q", got)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
