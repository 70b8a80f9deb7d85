package testutil

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestPackageDocs requires exactly one package doc comment in every Go
// package directory under internal/ and cmd/.
func TestPackageDocs(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	for _, top := range []string{"internal", "cmd"} {
		filepath.WalkDir(filepath.Join(root, top), func(dir string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return err
			}
			fset := token.NewFileSet()
			entries, err := os.ReadDir(dir)
			if err != nil {
				return err
			}
			docs, files := 0, 0
			for _, en := range entries {
				n := en.Name()
				if en.IsDir() || !strings.HasSuffix(n, ".go") || strings.HasSuffix(n, "_test.go") {
					continue
				}
				f, err := parser.ParseFile(fset, filepath.Join(dir, n), nil, parser.ParseComments|parser.PackageClauseOnly)
				if err != nil {
					t.Errorf("%s: %v", n, err)
					continue
				}
				files++
				if f.Doc != nil {
					docs++
				}
			}
			rel, _ := filepath.Rel(root, dir)
			if files > 0 && docs == 0 {
				t.Errorf("%s has no package doc comment", rel)
			}
			if docs > 1 {
				t.Errorf("%s has %d package doc comments; keep one", rel, docs)
			}
			return nil
		})
	}
}
