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
			pkgs, err := parser.ParseDir(fset, dir, func(fi os.FileInfo) bool {
				return !strings.HasSuffix(fi.Name(), "_test.go")
			}, parser.ParseComments|parser.PackageClauseOnly)
			if err != nil {
				t.Errorf("%s: %v", dir, err)
				return nil
			}
			for name, p := range pkgs {
				docs := 0
				for _, f := range p.Files {
					if f.Doc != nil {
						docs++
					}
				}
				rel, _ := filepath.Rel(root, dir)
				if docs == 0 {
					t.Errorf("%s (package %s) has no package doc comment", rel, name)
				}
				if docs > 1 {
					t.Errorf("%s (package %s) has %d package doc comments; keep one", rel, name, docs)
				}
			}
			return nil
		})
	}
}
