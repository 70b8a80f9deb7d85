// Package workspace turns a directory inside a git repository into what a
// guest receives: the repository's real history (a shallow clone of HEAD)
// with the host's working tree laid over it, as one tar stream.
//
// What is copied: git-tracked files by default; with IncludeUntracked also
// untracked files that git does not ignore (git's own rules: .gitignore,
// info/exclude, the global excludes file). Ignored files are never copied,
// so .env files and credentials stay on the host. Submodules are refused.
package workspace

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Options choose what is copied.
type Options struct {
	IncludeUntracked bool
}

// Workspace is an inspected repository.
type Workspace struct {
	Root             string   // repository top level
	Name             string   // base name of Root
	Head             string   // HEAD commit
	Files            []string // relative paths copied, sorted as git lists them
	SkippedUntracked int      // untracked, non-ignored files left out
	Mode             string   // "tracked" or "tracked+untracked"
}

func git(ctx context.Context, dir string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("git %s: %s", strings.Join(args, " "), strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

func splitZ(b []byte) []string {
	var out []string
	for _, s := range strings.Split(string(b), "\x00") {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Inspect checks that path is inside a non-bare git repository without
// submodules and lists the files to copy.
func Inspect(ctx context.Context, path string, o Options) (*Workspace, error) {
	if _, err := exec.LookPath("git"); err != nil {
		return nil, errors.New("git is not installed on this host")
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("workspace %s: %w", path, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("workspace %s is not a directory", path)
	}
	if out, err := git(ctx, path, "rev-parse", "--is-bare-repository"); err != nil {
		return nil, fmt.Errorf("%s is not inside a git repository", path)
	} else if strings.TrimSpace(string(out)) == "true" {
		return nil, fmt.Errorf("%s is a bare git repository; give a path inside a working tree", path)
	}
	top, err := git(ctx, path, "rev-parse", "--show-toplevel")
	if err != nil {
		return nil, err
	}
	w := &Workspace{Root: strings.TrimSpace(string(top)), Mode: "tracked"}
	w.Name = filepath.Base(w.Root)
	head, err := git(ctx, w.Root, "rev-parse", "--verify", "HEAD")
	if err != nil {
		return nil, fmt.Errorf("%s has no commits yet; commit something first", w.Root)
	}
	w.Head = strings.TrimSpace(string(head))
	stage, err := git(ctx, w.Root, "ls-files", "-z", "--stage")
	if err != nil {
		return nil, err
	}
	for _, e := range splitZ(stage) {
		if strings.HasPrefix(e, "160000 ") {
			return nil, fmt.Errorf("%s has git submodules (%s); they are not copied in this mode", w.Root, strings.SplitN(e, "\t", 2)[1])
		}
	}
	tracked, err := git(ctx, w.Root, "ls-files", "-z", "--cached")
	if err != nil {
		return nil, err
	}
	// A tracked file deleted in the working tree is not copied (the guest's
	// git status then shows it deleted, as the host's does).
	for _, f := range splitZ(tracked) {
		if _, err := os.Lstat(filepath.Join(w.Root, f)); err == nil {
			w.Files = append(w.Files, f)
		}
	}
	untracked, err := git(ctx, w.Root, "ls-files", "-z", "--others", "--exclude-standard")
	if err != nil {
		return nil, err
	}
	u := splitZ(untracked)
	if o.IncludeUntracked {
		w.Files = append(w.Files, u...)
		w.Mode = "tracked+untracked"
	} else {
		w.SkippedUntracked = len(u)
	}
	return w, nil
}

// WriteTar writes the workspace as a tar stream rooted at the repository:
// ".git/" from a fresh shallow clone of HEAD (real history for git status,
// diff and log), then every selected file as it is in the working tree.
// A tracked file deleted in the working tree is absent, so the guest's git
// status shows it deleted too.
func (w *Workspace) WriteTar(ctx context.Context, out io.Writer) error {
	tmp, err := os.MkdirTemp("", "banger-ws-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	clone := filepath.Join(tmp, "clone")
	if _, err := git(ctx, tmp, "clone", "--quiet", "--depth", "1", "--no-local", "--no-tags", "file://"+w.Root, clone); err != nil {
		return err
	}
	// Keep the host's branch name and an "origin" the guest can't reach.
	tw := tar.NewWriter(out)
	if err := addTree(tw, filepath.Join(clone, ".git"), ".git"); err != nil {
		return err
	}
	for _, rel := range w.Files {
		if err := addPath(tw, filepath.Join(w.Root, rel), rel); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // deleted in the working tree
			}
			return err
		}
	}
	return tw.Close()
}

func addTree(tw *tar.Writer, dir, prefix string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		name := filepath.ToSlash(filepath.Join(prefix, rel))
		return addPath(tw, p, name)
	})
}

// addPath adds one file, directory or symlink (never following links).
func addPath(tw *tar.Writer, p, name string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	link := ""
	if fi.Mode()&os.ModeSymlink != 0 {
		if link, err = os.Readlink(p); err != nil {
			return err
		}
	} else if !fi.Mode().IsRegular() && !fi.IsDir() {
		return nil // sockets, fifos, devices: not workspace content
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return err
	}
	hdr.Name = name
	hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "root", "root"
	if fi.IsDir() {
		hdr.Name += "/"
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return nil
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(tw, f)
	return err
}
