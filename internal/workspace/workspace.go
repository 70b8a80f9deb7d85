// Package workspace turns a directory inside a git repository into what a
// guest receives: the repository's real history (a shallow clone of HEAD)
// with the host's working tree laid over it, as one tar stream.
//
// What is copied: git-tracked files by default; with IncludeUntracked also
// untracked files that git does not ignore (git's own rules: .gitignore,
// info/exclude, the global excludes file). Ignored files are never copied,
// so .env files and credentials stay on the host. Submodules are refused
// unless FullCopy, which copies the repository's own .git (all history) and
// the submodules' files.
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
	"path/filepath"
	"sort"
	"strings"

	"github.com/banger-dev/banger/internal/sysexec"
)

// Options choose what is copied.
type Options struct {
	IncludeUntracked bool
	// FullCopy copies the repository's own .git (all history, refs, index,
	// submodules' git dirs) and the submodules' files, instead of a shallow
	// clone of HEAD.
	FullCopy bool
	// Branch names a guest-only branch created after the copy.
	Branch string
	// From (needs Branch) starts the branch at this commit instead of the
	// working tree: the guest gets that commit's files.
	From string
}

// Workspace is an inspected repository.
type Workspace struct {
	Root             string   // repository top level
	Name             string   // base name of Root
	Head             string   // HEAD commit
	Files            []string // relative paths copied, sorted as git lists them
	SkippedUntracked int      // untracked, non-ignored files left out
	Mode             string   // "tracked" or "tracked+untracked" (+"+full-copy"), or "from <commit>"
	// Changed are the Files that differ from HEAD (or are untracked): with
	// a git-capable guest only these travel, the rest is checked out of the
	// shallow clone in the guest. Deleted are in HEAD but not in the
	// working tree.
	Changed []string
	Deleted []string
	// FromCommit is Options.From resolved to a commit id.
	FromCommit string
	Opts       Options
}

// deletedList is the file (inside the copied .git) listing the paths the
// guest deletes after its checkout, NUL-separated.
const deletedList = "banger-deleted"

// git runs git with args in dir and returns its stdout; a failure names
// the command and carries the tail of its stderr.
func git(ctx context.Context, dir string, args ...string) ([]byte, error) {
	res, err := sysexec.Run(ctx, sysexec.Cmd{Path: "git", Args: args, Dir: dir})
	if err != nil {
		return nil, err
	}
	return res.Stdout, nil
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

// Inspect checks that path is inside a non-bare git repository (without
// submodules, unless FullCopy) and lists the files to copy.
func Inspect(ctx context.Context, path string, o Options) (*Workspace, error) {
	if err := checkWorkTree(ctx, path); err != nil {
		return nil, err
	}
	w, err := openRepository(ctx, path, o)
	if err != nil {
		return nil, err
	}
	if err := w.checkBranch(ctx); err != nil {
		return nil, err
	}
	if o.From != "" {
		if err := w.resolveFrom(ctx); err != nil {
			return nil, err
		}
		return w, nil // the guest checks that commit out: no working-tree files travel
	}
	if err := w.refuseSubmodules(ctx); err != nil {
		return nil, err
	}
	untracked, err := w.listFiles(ctx)
	if err != nil {
		return nil, err
	}
	if o.FullCopy {
		w.Mode += "+full-copy"
		return w, nil
	}
	if err := w.findChanges(ctx, untracked); err != nil {
		return nil, err
	}
	return w, nil
}

// checkWorkTree checks that git is installed and that path is a directory
// inside a git working tree (not a bare repository).
func checkWorkTree(ctx context.Context, path string) error {
	if _, err := sysexec.LookPath("git"); err != nil {
		return errors.New("git is not installed on this host")
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("workspace %s: %w", path, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("workspace %s is not a directory", path)
	}
	if out, err := git(ctx, path, "rev-parse", "--is-bare-repository"); err != nil {
		return fmt.Errorf("%s is not inside a git repository", path)
	} else if strings.TrimSpace(string(out)) == "true" {
		return fmt.Errorf("%s is a bare git repository; give a path inside a working tree", path)
	}
	return nil
}

// openRepository starts the Workspace of the repository holding path: its
// top level, name and HEAD commit (it must have one).
func openRepository(ctx context.Context, path string, o Options) (*Workspace, error) {
	top, err := git(ctx, path, "rev-parse", "--show-toplevel")
	if err != nil {
		return nil, err
	}
	w := &Workspace{Root: strings.TrimSpace(string(top)), Mode: "tracked", Opts: o}
	w.Name = filepath.Base(w.Root)
	head, err := git(ctx, w.Root, "rev-parse", "--verify", "HEAD")
	if err != nil {
		return nil, fmt.Errorf("%s has no commits yet; commit something first", w.Root)
	}
	w.Head = strings.TrimSpace(string(head))
	return w, nil
}

// checkBranch refuses From without Branch and a Branch git would not
// accept as a branch name.
func (w *Workspace) checkBranch(ctx context.Context) error {
	o := w.Opts
	if o.From != "" && o.Branch == "" {
		return errors.New("--from needs --branch: it names the guest-only branch that starts at --from")
	}
	if o.Branch != "" {
		if _, err := git(ctx, w.Root, "check-ref-format", "--branch", o.Branch); err != nil || strings.HasPrefix(o.Branch, "-") {
			return fmt.Errorf("--branch %q is not a valid branch name", o.Branch)
		}
	}
	return nil
}

// resolveFrom resolves Options.From to a commit (refusing it with FullCopy)
// and sets the mode to it.
func (w *Workspace) resolveFrom(ctx context.Context) error {
	o := w.Opts
	if o.FullCopy {
		return errors.New("--from and --full-copy cannot be combined: a full copy is the working tree as it is")
	}
	c, err := git(ctx, w.Root, "rev-parse", "--verify", "--quiet", o.From+"^{commit}")
	if err != nil {
		return fmt.Errorf("--from %q is not a commit in %s", o.From, w.Root)
	}
	w.FromCommit = strings.TrimSpace(string(c))
	w.Mode = "from " + w.FromCommit[:12]
	return nil
}

// refuseSubmodules fails when the index holds a submodule, unless FullCopy.
func (w *Workspace) refuseSubmodules(ctx context.Context) error {
	stage, err := git(ctx, w.Root, "ls-files", "-z", "--stage")
	if err != nil {
		return err
	}
	for _, e := range splitZ(stage) {
		if strings.HasPrefix(e, "160000 ") && !w.Opts.FullCopy {
			return fmt.Errorf("%s has git submodules (%s); copy it with --full-copy", w.Root, strings.SplitN(e, "\t", 2)[1])
		}
	}
	return nil
}

// listFiles lists the tracked files present in the working tree (with
// FullCopy, the submodules' too) and, with IncludeUntracked, the untracked
// files git does not ignore; otherwise it counts those as skipped. It
// returns the untracked files.
func (w *Workspace) listFiles(ctx context.Context) ([]string, error) {
	lsArgs := []string{"ls-files", "-z", "--cached"}
	if w.Opts.FullCopy {
		lsArgs = append(lsArgs, "--recurse-submodules")
	}
	tracked, err := git(ctx, w.Root, lsArgs...)
	if err != nil {
		return nil, err
	}
	// A tracked file deleted in the working tree is not copied (the guest's
	// git status then shows it deleted, as the host's does). So is one below
	// a directory since replaced by a symlink: it is not in the working
	// tree either (git sees it deleted too), and nothing is read through
	// the link.
	root, err := openBeneath(w.Root)
	if err != nil {
		return nil, fmt.Errorf("workspace %s: %w", w.Root, err)
	}
	defer root.Close()
	for _, f := range splitZ(tracked) {
		if _, err := root.lstat(f); err == nil {
			w.Files = append(w.Files, f)
		}
	}
	untracked, err := git(ctx, w.Root, "ls-files", "-z", "--others", "--exclude-standard")
	if err != nil {
		return nil, err
	}
	u := splitZ(untracked)
	if w.Opts.IncludeUntracked {
		w.Files = append(w.Files, u...)
		w.Mode = "tracked+untracked"
	} else {
		w.SkippedUntracked = len(u)
	}
	return u, nil
}

// findChanges sets Changed (the Files that differ from HEAD, or are copied
// untracked ones) and Deleted (changed paths not in the working tree).
func (w *Workspace) findChanges(ctx context.Context, untracked []string) error {
	diff, err := git(ctx, w.Root, "diff", "--name-only", "-z", "--no-renames", "HEAD")
	if err != nil {
		return err
	}
	changed := map[string]bool{}
	for _, f := range splitZ(diff) {
		changed[f] = true
	}
	if w.Opts.IncludeUntracked {
		for _, f := range untracked {
			changed[f] = true
		}
	}
	present := map[string]bool{}
	for _, f := range w.Files {
		present[f] = true
		if changed[f] {
			w.Changed = append(w.Changed, f)
		}
	}
	for f := range changed {
		if !present[f] {
			w.Deleted = append(w.Deleted, f)
		}
	}
	sort.Strings(w.Deleted)
	return nil
}

// WriteOptions tune WriteTar.
type WriteOptions struct {
	// GuestCheckout: the guest has git and checks the unchanged files out
	// of the shallow clone itself, so only Changed files travel (about half
	// the bytes of a full overlay). The guest must run GuestScript.
	GuestCheckout bool
	// Progress, if set, is called as bytes are written; total is an
	// estimate made once the clone exists.
	Progress func(written, total int64)
}

// WriteTar writes the workspace as a tar stream rooted at the repository.
// Default mode: ".git/" from a fresh shallow clone of HEAD (real history for
// git status, diff and log), then the working-tree files (all of them, or
// only the changed ones with GuestCheckout). Full copy: the repository's
// own .git and every selected file, submodules included. With From: only
// the clone, holding HEAD and that commit.
func (w *Workspace) WriteTar(ctx context.Context, out io.Writer, o WriteOptions) error {
	tmp, err := os.MkdirTemp("", "banger-ws-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	// Every path is opened below its root without following a symlink on
	// the way (beneath): the working tree's files below w.Root, .git below
	// w.Root (full copy) or below the fresh clone.
	root, err := openBeneath(w.Root)
	if err != nil {
		return fmt.Errorf("workspace %s: %w", w.Root, err)
	}
	defer root.Close()
	gitRoot := root
	gitDir := filepath.Join(w.Root, ".git")
	files := w.Files
	if !w.Opts.FullCopy {
		clone := filepath.Join(tmp, "clone")
		if err := w.shallowRepo(ctx, clone); err != nil {
			return err
		}
		if gitRoot, err = openBeneath(clone); err != nil {
			return err
		}
		defer gitRoot.Close()
		gitDir = filepath.Join(clone, ".git")
		if o.GuestCheckout {
			files = w.Changed
			var list []byte
			for _, f := range w.Deleted {
				list = append(list, f...)
				list = append(list, 0)
			}
			if err := os.WriteFile(filepath.Join(gitDir, deletedList), list, 0o644); err != nil {
				return err
			}
		}
	}
	var total int64
	_ = filepath.WalkDir(gitDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				total += fi.Size()
			}
		}
		return nil
	})
	for _, rel := range files {
		if fi, err := root.lstat(rel); err == nil && fi.Mode().IsRegular() {
			total += fi.Size()
		}
	}
	if o.Progress != nil {
		out = &countingWriter{w: out, total: total, report: o.Progress}
	}
	tw := tar.NewWriter(out)
	if err := addTree(tw, gitRoot, ".git"); err != nil {
		return err
	}
	for _, rel := range files {
		if err := addPath(tw, root, rel); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // deleted in the working tree, or below a symlink now
			}
			return err
		}
	}
	return tw.Close()
}

// shallowRepo makes dir a repository holding only HEAD (and FromCommit):
// their commits, trees and blobs in one pack, marked shallow, with the
// host's branch checked out in name. It is what `git clone --depth 1` gives,
// made directly: no upload-pack negotiation and no delta search, and
// zlib level 1, so a 200 MB tree packs in seconds rather than ~20 s.
func (w *Workspace) shallowRepo(ctx context.Context, dir string) error {
	if _, err := git(ctx, "", "init", "--quiet", "--template=", dir); err != nil {
		return err
	}
	commits := []string{w.Head}
	if w.FromCommit != "" && w.FromCommit != w.Head {
		commits = append(commits, w.FromCommit)
	}
	gitDir := filepath.Join(dir, ".git")
	objs, err := git(ctx, w.Root, append([]string{"rev-list", "--objects", "--no-walk"}, commits...)...)
	if err != nil {
		return err
	}
	_, err = sysexec.Run(ctx, sysexec.Cmd{Path: "git", Dir: w.Root, Stdin: bytes.NewReader(objs), Stdout: io.Discard,
		Args: []string{"pack-objects", "-q", "--compression=1", "--window=0", "--depth=0", filepath.Join(gitDir, "objects", "pack", "pack")}})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(gitDir, "shallow"), []byte(strings.Join(commits, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	// HEAD: the host's branch name, or detached like the host.
	if ref, err := git(ctx, w.Root, "symbolic-ref", "-q", "HEAD"); err == nil {
		name := strings.TrimSpace(string(ref))
		if _, err := git(ctx, dir, "update-ref", name, w.Head); err != nil {
			return err
		}
		_, err = git(ctx, dir, "symbolic-ref", "HEAD", name)
		return err
	}
	_, err = git(ctx, dir, "update-ref", "--no-deref", "HEAD", w.Head)
	return err
}

// GuestScript is the shell script the guest runs after extracting the
// stream, with $1 = the workspace directory and $2 = the guest-only branch:
// the checkout of unchanged files (GuestCheckout or From), deletions, and
// the branch.
func (w *Workspace) GuestScript(o WriteOptions) string {
	s := `cd "$1" || exit 1` + "\n"
	switch {
	case w.FromCommit != "":
		return s + `git checkout -q -f -b "$2" ` + w.FromCommit + ` || exit 1` + "\n"
	case w.Opts.FullCopy:
	case o.GuestCheckout:
		// -u records the stat data of what it writes, so git need not hash
		// those files again; only the copied (changed) files get refreshed.
		s += `git read-tree HEAD && git checkout-index -a -q -u 2>/dev/null` + "\n" +
			`[ -s .git/` + deletedList + ` ] && xargs -0 rm -f -- < .git/` + deletedList + "\n" +
			`rm -f .git/` + deletedList + "\n" +
			`git update-index -q --refresh >/dev/null` + "\n"
	default:
		s += `command -v git >/dev/null && { git read-tree HEAD; git update-index -q --refresh >/dev/null; }` + "\n"
	}
	if w.Opts.Branch != "" {
		s += `git checkout -q -b "$2" || exit 1` + "\n"
	}
	return s + "exit 0\n"
}

type countingWriter struct {
	w       io.Writer
	written int64
	total   int64
	report  func(written, total int64)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.written += int64(n)
	t := c.total
	if c.written > t {
		t = c.written
	}
	c.report(c.written, t)
	return n, err
}

// addTree adds the tree at rel (a directory below root, e.g. ".git") and
// everything in it, each entry opened below root (addPath). The walk only
// lists names; an entry it lists through a symlink swapped in meanwhile is
// not there for addPath and is skipped.
func addTree(tw *tar.Writer, root *beneath, rel string) error {
	return filepath.WalkDir(filepath.Join(root.root.Name(), rel), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		r, err := filepath.Rel(root.root.Name(), p)
		if err != nil {
			return err
		}
		if err := addPath(tw, root, filepath.ToSlash(r)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	})
}

// addPath adds rel, a file, directory or symlink below root, as rel. It is
// opened without following any symlink (beneath): a symlink is sent as a
// symlink, and a path reached through one is not there (fs.ErrNotExist).
func addPath(tw *tar.Writer, root *beneath, rel string) error {
	e, err := root.openEntry(rel)
	if err != nil {
		return err
	}
	defer e.close()
	fi := e.fi
	if fi.Mode()&os.ModeSymlink == 0 && !fi.Mode().IsRegular() && !fi.IsDir() {
		return nil // sockets, fifos, devices: not workspace content
	}
	hdr, err := tar.FileInfoHeader(fi, e.link)
	if err != nil {
		return err
	}
	hdr.Name = rel
	hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "root", "root"
	if fi.IsDir() {
		hdr.Name += "/"
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if e.file == nil {
		return nil
	}
	// Exactly the size the header gives, even if the file grows meanwhile.
	_, err = io.CopyN(tw, e.file, hdr.Size)
	return err
}
