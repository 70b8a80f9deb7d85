package sysexec

import (
	"errors"
	"fmt"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// execAllowed may import os/exec besides sysexec: a package directory, or
// one file, relative to the module root.
var execAllowed = map[string]bool{
	"internal/sysexec":       true, // the one home of os/exec
	"internal/fcvmm/qemu.go": true, // the VMM process launcher: QEMU runs under exec.Cmd with its pipes and process attributes
}

// TestOnlySysexecImportsOsExec: programs are run through sysexec; a
// package that imports os/exec itself fails here, named with its file.
func TestOnlySysexecImportsOsExec(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bad, err := execImporters(root, execAllowed)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bad {
		t.Errorf("%s imports os/exec: run programs through internal/sysexec (or add it to execAllowed with the reason)", b)
	}
}

// TestExecImportersDetects runs the checker on a synthetic module.
func TestExecImportersDetects(t *testing.T) {
	root := t.TempDir()
	files := map[string]string{
		"go.mod":                    "module example.com/m\n",
		"internal/a/a.go":           "package a\n\nimport \"os/exec\"\n\nvar _ = exec.Command\n",
		"internal/a/a_test.go":      "package a\n\nimport _ \"os/exec\"\n",
		"internal/b/b.go":           "package b\n\nimport (\n\t\"fmt\"\n\tx \"os/exec\"\n)\n\nvar _, _ = fmt.Sprint, x.Command\n",
		"internal/c/c.go":           "package c\n\nimport \"os\"\n\nvar _ = os.Exit\n",
		"internal/ok/ok.go":         "package ok\n\nimport _ \"os/exec\"\n",
		"internal/one/allowed.go":   "package one\n\nimport _ \"os/exec\"\n",
		"internal/one/other.go":     "package one\n\nimport _ \"os/exec\"\n",
		"internal/d/testdata/td.go": "package td\n\nimport _ \"os/exec\"\n",
		"cmd/tool/main.go":          "package main\n\nimport _ \"os/exec\"\n\nfunc main() {}\n",
	}
	for name, body := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := execImporters(root, map[string]bool{"internal/ok": true, "internal/one/allowed.go": true})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"cmd/tool/main.go (package main)", "internal/a/a.go (package a)",
		"internal/b/b.go (package b)", "internal/one/other.go (package one)"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("execImporters =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	os.WriteFile(filepath.Join(root, "internal/c/broken.go"), []byte("package c\nimport (\n"), 0o644)
	if _, err := execImporters(root, nil); err == nil {
		t.Error("a file that does not parse was not reported")
	}
}

// moduleRoot is the directory holding go.mod, above the working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// execImporters lists the non-test Go files under root that import os/exec
// ("path (package name)", sorted), but for those allowed by file or by
// package directory. testdata, vendor and hidden directories are skipped.
func execImporters(root string, allowed map[string]bool) ([]string, error) {
	var bad []string
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if p != root && (name == "testdata" || name == "vendor" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if allowed[rel] || allowed[filepath.ToSlash(filepath.Dir(rel))] {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.ImportsOnly)
		if err != nil {
			return fmt.Errorf("parse %s: %w", rel, err)
		}
		for _, imp := range f.Imports {
			if path, _ := strconv.Unquote(imp.Path.Value); path == "os/exec" {
				bad = append(bad, fmt.Sprintf("%s (package %s)", rel, f.Name.Name))
				break
			}
		}
		return nil
	})
	sort.Strings(bad)
	return bad, err
}
