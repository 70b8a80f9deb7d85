// Package safepath validates the paths and interface names that the root
// helper receives from the (less trusted) owner daemon, before any of them
// reaches a privileged system call or an external program.
//
// The checks close the symlink attacks upstream banger hit through losetup,
// ln -f, debugfs and mknod: every existing component of a path, from / down,
// is examined with Lstat and any symlink is refused, so a path the daemon
// names can only ever mean the file it spells out. Paths must also be
// absolute and already clean (no ".", "..", "//" or trailing "/"), rather
// than being cleaned here, so that a caller never acts on a path other than
// the one that was validated.
//
// The checks are point-in-time: a directory writable by an attacker can still
// be changed between the check and the use. Callers therefore validate only
// paths below directories that root owns and the daemon cannot rewrite (the
// state and runtime roots), and still open files with O_NOFOLLOW (and O_EXCL
// when creating) where they can.
//
// Every error is one line that names the offending path, component or name
// and says what is wrong with it.
package safepath

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Under checks that p is an absolute, clean path strictly below one of
// roots, and that no existing component of p, from / down to p itself, is a
// symlink. Every component except the last must exist and be a directory.
// The last component may not exist yet (so Under can vet a file that is about
// to be created), but if it exists it must not be a symlink.
//
// Each root must itself be absolute and clean; the roots are walked as part of
// p, so a root that is (or lies below) a symlink is refused as well.
func Under(p string, roots ...string) error {
	if err := checkAbsClean("path", p); err != nil {
		return err
	}
	if len(roots) == 0 {
		return fmt.Errorf("path %q: no allowed roots given", p)
	}
	under := false
	for _, r := range roots {
		if err := checkAbsClean("root", r); err != nil {
			return fmt.Errorf("path %q: %w", p, err)
		}
		if strictlyUnder(p, r) {
			under = true
		}
	}
	if !under {
		if len(roots) == 1 {
			return fmt.Errorf("path %q is not strictly under %s", p, roots[0])
		}
		return fmt.Errorf("path %q is not strictly under any of %s", p, strings.Join(roots, ", "))
	}

	// Walk "/", "/a", "/a/b", ... p. Lstat never follows the component it
	// names, and every earlier component has already been shown to be a
	// real directory, so each Lstat sees the real object.
	parts := strings.Split(p[1:], "/")
	cur := ""
	for i, part := range parts {
		cur += "/" + part
		last := i == len(parts)-1
		fi, err := os.Lstat(cur)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if last {
				return nil // may be created; its parent was checked above
			}
			return fmt.Errorf("path %q: component %s does not exist", p, cur)
		case err != nil:
			return fmt.Errorf("path %q: component %s: %v", p, cur, errors.Unwrap(err))
		case fi.Mode()&fs.ModeSymlink != 0:
			return fmt.Errorf("path %q: component %s is a symlink", p, cur)
		case !last && !fi.IsDir():
			return fmt.Errorf("path %q: component %s is not a directory (%s)", p, cur, Kind(fi.Mode()))
		}
	}
	return nil
}

// RegularFile checks, without following symlinks, that p names an existing
// regular file.
func RegularFile(p string) error {
	if p == "" {
		return errors.New("empty path where a regular file is required")
	}
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s does not exist", p)
	}
	if err != nil {
		return fmt.Errorf("%s: %v", p, errors.Unwrap(err))
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file (%s)", p, Kind(fi.Mode()))
	}
	return nil
}

// MaxIfaceNameLen is the longest network interface name Linux accepts
// (IFNAMSIZ minus the terminating NUL).
const MaxIfaceNameLen = 15

// IfaceName checks that name is a usable Linux interface name made only of
// [a-zA-Z0-9_-], 1 to 15 characters long, that starts with one of prefixes.
// With no prefixes every name is refused: the root helper always pins the
// families of interfaces it may touch (e.g. "br-fc", "tap-fc-").
func IfaceName(name string, prefixes ...string) error {
	if name == "" {
		return errors.New("empty interface name")
	}
	if len(name) > MaxIfaceNameLen {
		return fmt.Errorf("interface name %q is %d characters long, at most %d are allowed", name, len(name), MaxIfaceNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
		if !ok {
			return fmt.Errorf("interface name %q contains %q: only letters, digits, '_' and '-' are allowed", name, string(rune(c)))
		}
	}
	if len(prefixes) == 0 {
		return fmt.Errorf("interface name %q: no allowed prefixes given", name)
	}
	for _, pre := range prefixes {
		if pre != "" && strings.HasPrefix(name, pre) {
			return nil
		}
	}
	return fmt.Errorf("interface name %q does not start with %s", name, quoteList(prefixes))
}

// checkAbsClean refuses relative and unclean paths; what names the role
// ("path" or "root") in the message.
func checkAbsClean(what, p string) error {
	switch {
	case p == "":
		return fmt.Errorf("empty %s", what)
	case strings.ContainsRune(p, 0):
		return fmt.Errorf("%s %q contains a NUL byte", what, p)
	case !filepath.IsAbs(p):
		return fmt.Errorf("%s %q is not absolute", what, p)
	}
	if c := filepath.Clean(p); c != p {
		reason := "is not clean"
		switch {
		case hasElem(p, ".."):
			reason = "contains a '..' component"
		case hasElem(p, "."):
			reason = "contains a '.' component"
		case strings.Contains(p, "//"):
			reason = "contains '//'"
		case strings.HasSuffix(p, "/"):
			reason = "ends in '/'"
		}
		return fmt.Errorf("%s %q %s (clean form: %s)", what, p, reason, c)
	}
	return nil
}

func hasElem(p, elem string) bool {
	for _, e := range strings.Split(p, "/") {
		if e == elem {
			return true
		}
	}
	return false
}

// strictlyUnder reports whether clean absolute p lies below clean absolute
// root, component-wise ("/var/lib/banger2" is not under "/var/lib/banger").
func strictlyUnder(p, root string) bool {
	if root == "/" {
		return p != "/"
	}
	return strings.HasPrefix(p, root+"/")
}

// Kind names a file type for messages: "directory", "named pipe", ...
func Kind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m.IsRegular():
		return "regular file"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	default:
		return "irregular file"
	}
}

func quoteList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	if len(q) == 1 {
		return q[0]
	}
	return "any of " + strings.Join(q, ", ")
}
