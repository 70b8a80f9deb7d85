// Package imagespec reads a repository's .banger/image.toml: a derived
// image, described as a base banger image plus extra Debian packages, files
// copied in from the repository and shell steps.
//
// banger builds such an image inside a throwaway VM of the base image: the
// steps run as root in that guest, never on the host. This package only
// reads and checks the file (Find, Load, Parse), names a build by what goes
// into it (Spec.Key) and writes the tar that carries the build into the
// build VM (Spec.Seed). The build VM's /root, its work disk, is filled from
// that tar, so everything in it lives under .banger-build/, and the VM runs
// `sh /root/.banger-build/build.sh`.
//
// # The file
//
//	# .banger/image.toml
//	base = "debian-bookworm"                        # optional
//	packages = ["sqlite3", "cowsay=3.03+dfsg2-8"]   # optional
//	run = ["echo built > /etc/banger-derived", "useradd -m dev"]   # optional
//
//	[[copy]]              # optional, repeatable
//	src = "ci/motd"       # in the repository: a file or a directory
//	dst = "/etc/motd"     # in the image: an absolute path
//	mode = "0644"         # optional
//
// base names the banger image to start from: lower-case letters, digits,
// ".", "_" and "-", at most 63 characters. Absent or "" means the caller's
// default image.
//
// packages are extra Debian packages, each NAME or NAME=VERSION, at most
// 200, none twice. They are installed with
// `apt-get install -y --no-install-recommends` after an `apt-get update`;
// apt's lists and cache are removed afterwards.
//
// Each [[copy]] table (at most 64) copies src, a path relative to the
// repository's root, to dst in the image. No symlink is followed, neither in
// src's path nor inside a copied directory (one there is refused, named);
// only regular files and directories are copied, at most 32 MiB and 2000
// files and directories in all. A file replaces dst (whose parent
// directories are made as needed) with mode, or src's own mode when mode is
// absent. A directory is merged into dst (made if missing): every entry
// keeps its own mode, and dst takes the directory's mode, or mode. All of
// it is root's. mode is a string of up to four octal digits ("0644",
// "755", "4755"). dst must not be "/" and must not lie under /root (each
// VM's own work disk, the build VM's too, so nothing put there reaches the
// image) or under /proc, /sys, /dev, /run or /tmp (not kept in the image).
//
// run are shell steps, at most 64, each at most 8 KiB with no NUL byte. They
// run in order after the packages and copies, as root, each with
// `sh -e -c STEP` in "/" with stdin from /dev/null; a step that fails fails
// the build. What a step writes under /root is lost with the build VM's
// work disk.
//
// Keys are lower case; an unknown key, a key spelt in another case, a value
// of the wrong type and the file larger than 64 KiB are refused. Every
// error names the file, the line (when it can be found) and the key, and
// says what to do: "FILE:LINE: KEY: MESSAGE". Elements of arrays are named
// with their place counted from 1: packages[2], run[1], copy[3].src.
//
// # The build
//
// build.sh (see Spec.Seed) prints a "banger-build: …" line per stage and,
// in order: puts the given apt sources in place (restoring the image's own
// at the end, also on failure), installs the packages, makes the copies,
// runs the steps, and finally removes the SSH host keys and empties
// /etc/machine-id (each VM makes its own).
package imagespec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode"

	"github.com/banger-dev/banger/internal/ext4"
	"github.com/banger-dev/banger/internal/safepath"
	"github.com/banger-dev/banger/internal/securefs"
	"github.com/pelletier/go-toml/v2"
	"golang.org/x/sys/unix"
)

// File is where a repository describes its derived image, relative to the
// repository's root.
const File = ".banger/image.toml"

// Limits.
const (
	maxFileBytes   = 64 << 10 // the TOML file
	maxPackages    = 200
	maxSteps       = 64
	maxStepBytes   = 8 << 10
	maxCopies      = 64
	maxCopyBytes   = 32 << 20 // all copied files' bytes together
	maxCopyEntries = 2000     // all copied files and directories together
)

// Copy is one [[copy]] table.
type Copy struct {
	Src string // path in the repository, relative to its root, clean
	Dst string // absolute path in the image, clean
	// Mode is the copied file's mode, or a copied directory's own (its
	// entries keep theirs); 0 keeps the source's.
	Mode fs.FileMode
}

// Spec is a checked .banger/image.toml.
type Spec struct {
	File     string // path it was read from, for messages
	Root     string // repository root
	Base     string // "" means the caller's default image
	Packages []string
	Run      []string
	Copy     []Copy

	// sources holds each copy's source as read at Load/Parse: Key and Seed
	// use these bytes, not the repository's files of the moment.
	sources [][]entry
}

// Error is a problem in the file, pinned to its line and key.
type Error struct {
	File string
	Line int    // 0: not known
	Key  string // "": the file as a whole
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		b.WriteString(": ")
		b.WriteString(printableKey(e.Key))
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// printableKey is a key as written, or quoted with escapes when it holds
// anything unprintable (a quoted TOML key may hold a newline): an error
// stays one line.
func printableKey(k string) string {
	for _, r := range k {
		if !unicode.IsPrint(r) {
			return strconv.Quote(k)
		}
	}
	return k
}

// Find returns the path of root's .banger/image.toml and whether it exists.
// A .banger or image.toml that is a symlink, or is not a directory and a
// regular file respectively, is an error.
func Find(root string) (string, bool, error) {
	p := filepath.Join(root, File)
	dir := filepath.Dir(p)
	for _, q := range []string{dir, p} {
		fi, err := os.Lstat(q)
		if errors.Is(err, fs.ErrNotExist) {
			return p, false, nil
		}
		if err != nil {
			return p, false, &Error{File: p, Msg: fmt.Sprintf("cannot look at %q: %v", q, errText(err))}
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			return p, false, &Error{File: p, Msg: fmt.Sprintf("%q is a symlink; banger reads the image file only from the repository itself: replace the link with the real %s", q, kindName(q == dir))}
		case q == dir && !fi.IsDir():
			return p, false, &Error{File: p, Msg: fmt.Sprintf("%q is not a directory: make .banger a directory holding image.toml", q)}
		case q == p && !fi.Mode().IsRegular():
			return p, false, &Error{File: p, Msg: fmt.Sprintf("%q is not a regular file (%s): make it a plain TOML file", q, safepath.Kind(fi.Mode()))}
		}
	}
	return p, true, nil
}

func kindName(dir bool) string {
	if dir {
		return "directory"
	}
	return "file"
}

// Load reads and checks root/.banger/image.toml and reads every copy's
// source (once, capped; symlinks refused). Every error is an *Error.
func Load(root string) (*Spec, error) {
	file := filepath.Join(root, File)
	d, err := openRoot(root)
	if err != nil {
		return nil, &Error{File: file, Msg: err.Error()}
	}
	defer d.Close()
	f, err := securefs.OpenBeneath(d, File, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, &Error{File: file, Msg: openMsg(d, File, err)}
	}
	defer f.Close()
	st, err := securefs.Stat(f)
	if err != nil {
		return nil, &Error{File: file, Msg: fmt.Sprintf("cannot read it: %v", errText(err))}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, &Error{File: file, Msg: "is not a regular file: make it a plain TOML file"}
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, &Error{File: file, Msg: fmt.Sprintf("cannot read it: %v", errText(err))}
	}
	return parse(file, root, data, d)
}

// Parse checks data as if read from file; copy sources are read from root
// (only if there are copies). Every error is an *Error.
func Parse(file, root string, data []byte) (*Spec, error) {
	return parse(file, root, data, nil)
}

func openRoot(root string) (*os.File, error) {
	if root == "" {
		return nil, errors.New("no repository root to copy from: give the repository's directory")
	}
	d, err := os.OpenFile(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("cannot open the repository %q: %v", root, errText(err))
	}
	return d, nil
}

// fileSpec is the file as decoded.
type fileSpec struct {
	Base     string     `toml:"base"`
	Packages []string   `toml:"packages"`
	Run      []string   `toml:"run"`
	Copy     []fileCopy `toml:"copy"`
}

type fileCopy struct {
	Src  string  `toml:"src"`
	Dst  string  `toml:"dst"`
	Mode *string `toml:"mode"`
}

var (
	topKeys  = []string{"base", "packages", "run", "copy"}
	copyKeys = []string{"src", "dst", "mode"}
)

type parser struct {
	file string
	data []byte
	lay  *layout
}

func (p *parser) err(line int, key, format string, a ...any) *Error {
	return &Error{File: p.file, Line: line, Key: key, Msg: oneLine(fmt.Sprintf(format, a...))}
}

func parse(file, root string, data []byte, rootDir *os.File) (*Spec, error) {
	p := &parser{file: file, data: data}
	if len(data) > maxFileBytes {
		return nil, p.err(0, "", "is larger than %d KiB: describe less here and put longer scripts in the repository (copy them in with [[copy]], run them with run)", maxFileBytes>>10)
	}
	p.lay = scanLayout(data)
	var raw map[string]any
	if err := toml.Unmarshal(data, &raw); err != nil {
		return nil, p.decodeError(err)
	}
	if err := p.checkKeys(raw); err != nil {
		return nil, err
	}
	var fsp fileSpec
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fsp); err != nil {
		return nil, p.decodeError(err)
	}
	s := &Spec{File: file, Root: root, Base: fsp.Base, Packages: fsp.Packages, Run: fsp.Run}
	if err := p.checkBase(s.Base); err != nil {
		return nil, err
	}
	if err := p.checkPackages(s.Packages); err != nil {
		return nil, err
	}
	if err := p.checkRun(s.Run); err != nil {
		return nil, err
	}
	if err := p.checkCopies(s, fsp.Copy, rootDir); err != nil {
		return nil, err
	}
	return s, nil
}

// decodeError turns the TOML decoder's error into an *Error with the line
// and key.
func (p *parser) decodeError(err error) *Error {
	var sm *toml.StrictMissingError
	if errors.As(err, &sm) && len(sm.Errors) > 0 {
		d := sm.Errors[0]
		row, _ := d.Position()
		key := p.lay.nameAt(row)
		if key == "" {
			key = strings.Join(d.Key(), ".")
		}
		return p.err(row, key, "unknown key; %s", knownKeys(d.Key()))
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, _ := de.Position()
		key := p.lay.nameAt(row)
		if key == "" {
			key = strings.Join(de.Key(), ".")
		}
		msg := strings.TrimPrefix(de.Error(), "toml: ")
		if strings.Contains(msg, "cannot decode") || strings.Contains(msg, "cannot store") {
			return p.err(row, key, "%s", typeMsg(key, de.Key()))
		}
		return p.err(row, key, "%s (the TOML syntax is at https://toml.io)", msg)
	}
	return p.err(0, "", "%s (the TOML syntax is at https://toml.io)", strings.TrimPrefix(err.Error(), "toml: "))
}

func knownKeys(path []string) string {
	if len(path) > 1 && path[0] == "copy" {
		return "a [[copy]] table has src, dst and mode"
	}
	return "the keys are base, packages, run and [[copy]] tables (src, dst, mode)"
}

// typeMsg says what type the key's value must have.
func typeMsg(name string, path []string) string {
	last := name
	if i := strings.LastIndexByte(last, '.'); i >= 0 {
		last = last[i+1:]
	}
	if i := strings.IndexByte(last, '['); i >= 0 {
		last = last[:i]
	}
	if len(path) > 0 && !isKnown(last) {
		last = path[len(path)-1]
	}
	switch last {
	case "base":
		return `must be a string, like base = "debian-bookworm"`
	case "packages":
		return `must be an array of strings, like packages = ["sqlite3", "cowsay=3.03+dfsg2-8"]`
	case "run":
		return `must be an array of strings, like run = ["useradd -m dev"]`
	case "copy":
		return "must be [[copy]] tables, each with src and dst (and optionally mode)"
	case "src":
		return `must be a string: a path in the repository, like src = "ci/motd"`
	case "dst":
		return `must be a string: an absolute path in the image, like dst = "/etc/motd"`
	case "mode":
		return `must be a string of octal digits, like mode = "0644"`
	}
	return "has the wrong type"
}

func isKnown(k string) bool {
	for _, s := range append(append([]string(nil), topKeys...), copyKeys...) {
		if s == k {
			return true
		}
	}
	return false
}

// checkKeys refuses keys the decoder would match ignoring case, and
// [copy] tables where [[copy]] is meant, with the key's line.
func (p *parser) checkKeys(raw map[string]any) error {
	var bad []*Error
	check := func(m map[string]any, table string, idx int, known []string, what string) {
		for k := range m {
			if contains(known, k) {
				continue
			}
			line := p.lay.keyLine(table, idx, k)
			switch {
			case line > 0:
			case table != "":
				line = p.lay.copyLine(idx)
			default: // a [table] or [[table]]
				if line = p.lay.headerLine(k, -1); line == 0 {
					line = p.lay.headerLine(k, 0)
				}
			}
			msg := "unknown key; " + what
			if lower := strings.ToLower(k); contains(known, lower) {
				msg = fmt.Sprintf("unknown key; keys are lower case: write %q", lower)
			}
			bad = append(bad, p.err(line, keyName(table, idx, k), "%s", msg))
		}
	}
	check(raw, "", -1, topKeys, knownKeys(nil))
	switch c := raw["copy"].(type) {
	case map[string]any:
		line := p.lay.keyLine("", -1, "copy")
		if line == 0 {
			line = p.lay.headerLine("copy", -1)
		}
		bad = append(bad, p.err(line, "copy", "is a single table; write [[copy]] (double brackets) before each file to copy"))
	case []any:
		for i, el := range c {
			if m, ok := el.(map[string]any); ok {
				check(m, "copy", i, copyKeys, knownKeys([]string{"copy", ""}))
			}
		}
	}
	if len(bad) == 0 {
		return nil
	}
	// The first in the file.
	sort.SliceStable(bad, func(i, j int) bool {
		li, lj := bad[i].Line, bad[j].Line
		if li != lj {
			return li != 0 && (lj == 0 || li < lj)
		}
		return bad[i].Key < bad[j].Key
	})
	return bad[0]
}

func contains(list []string, s string) bool {
	for _, k := range list {
		if k == s {
			return true
		}
	}
	return false
}

var baseRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)

func (p *parser) checkBase(base string) error {
	if base == "" || baseRE.MatchString(base) {
		return nil
	}
	return p.err(p.lay.keyLine("", -1, "base"), "base", `%q is not an image name: use lower-case letters, digits, ".", "_" and "-" (at most 63, starting and ending with a letter or digit), like "debian-bookworm"; or leave base out for the default image`, base)
}

var (
	pkgNameRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]{1,62}$`)
	pkgVersionRE = regexp.MustCompile(`^[A-Za-z0-9.+~:-]{1,64}$`)
)

func (p *parser) checkPackages(pkgs []string) error {
	if len(pkgs) > maxPackages {
		return p.err(p.lay.keyLine("", -1, "packages"), "packages", "%d packages; at most %d: install the rest from a run step, or build on a base image that has them", len(pkgs), maxPackages)
	}
	seen := map[string]int{}
	for i, pkg := range pkgs {
		key := fmt.Sprintf("packages[%d]", i+1)
		line := p.lay.elemLine("", -1, "packages", i)
		name, version, hasVersion := strings.Cut(pkg, "=")
		if !pkgNameRE.MatchString(name) {
			return p.err(line, key, `%q is not a Debian package: write NAME or NAME=VERSION, NAME being 2-63 lower-case letters, digits and "+.-" that start with a letter or digit, like "sqlite3"`, pkg)
		}
		if hasVersion && !pkgVersionRE.MatchString(version) {
			return p.err(line, key, `%q: %q is not a Debian version: use 1-64 letters, digits and ".+~:-", like "cowsay=3.03+dfsg2-8", or give the name alone`, pkg, version)
		}
		if j, ok := seen[name]; ok {
			return p.err(line, key, "%q is listed twice (packages[%d] is %q): keep one", name, j+1, pkgs[j])
		}
		seen[name] = i
	}
	return nil
}

func (p *parser) checkRun(steps []string) error {
	if len(steps) > maxSteps {
		return p.err(p.lay.keyLine("", -1, "run"), "run", "%d steps; at most %d: put them in a script in the repository, copy it in with [[copy]] and run that", len(steps), maxSteps)
	}
	for i, st := range steps {
		key := fmt.Sprintf("run[%d]", i+1)
		line := p.lay.elemLine("", -1, "run", i)
		switch {
		case strings.TrimSpace(st) == "":
			return p.err(line, key, "is empty: write a shell command, or remove it")
		case len(st) > maxStepBytes:
			return p.err(line, key, "is %d bytes; at most %d: put it in a script in the repository, copy it in with [[copy]] and run that", len(st), maxStepBytes)
		case strings.IndexByte(st, 0) >= 0:
			return p.err(line, key, "holds a NUL byte, which sh cannot run: remove it")
		}
	}
	return nil
}

var (
	modeRE = regexp.MustCompile(`^[0-7]{1,4}$`)
	// Where dst may not go, and why.
	notInImage = []struct{ dir, why string }{
		{"/root", "it is each VM's own work disk (the build VM's too), so nothing put there reaches the image"},
		{"/proc", "it is not kept in the image (the kernel's, at run time)"},
		{"/sys", "it is not kept in the image (the kernel's, at run time)"},
		{"/dev", "it is not kept in the image (made at boot)"},
		{"/run", "it is not kept in the image (a tmpfs at run time)"},
		{"/tmp", "it is not kept in the image (emptied at run time)"},
	}
)

func (p *parser) checkCopies(s *Spec, copies []fileCopy, rootDir *os.File) error {
	if len(copies) > maxCopies {
		return p.err(p.lay.copyLine(maxCopies), "copy", "%d [[copy]] tables; at most %d: copy whole directories instead of their files", len(copies), maxCopies)
	}
	for i, c := range copies {
		at := func(key string) (int, string) {
			line := p.lay.keyLine("copy", i, key)
			if line == 0 {
				line = p.lay.copyLine(i)
			}
			return line, keyName("copy", i, key)
		}
		cp := Copy{Src: c.Src, Dst: c.Dst}
		line, key := at("src")
		switch {
		case c.Src == "":
			return p.err(line, key, `is missing: name a file or directory in the repository, like src = "ci/motd"`)
		case hasControl(c.Src):
			return p.err(line, key, "%q holds a control character: rename the file", c.Src)
		case path.IsAbs(c.Src) || filepath.IsAbs(c.Src):
			return p.err(line, key, "%q is absolute: give a path inside the repository, relative to its root", c.Src)
		case path.Clean(c.Src) == ".." || strings.HasPrefix(path.Clean(c.Src), "../"):
			return p.err(line, key, "%q leaves the repository: copy only what is inside it", c.Src)
		case path.Clean(c.Src) != c.Src:
			return p.err(line, key, "%q is not a clean path: write %q", c.Src, path.Clean(c.Src))
		}
		line, key = at("dst")
		switch {
		case c.Dst == "":
			return p.err(line, key, `is missing: give the absolute path in the image, like dst = "/etc/motd"`)
		case hasControl(c.Dst):
			return p.err(line, key, "%q holds a control character: remove it", c.Dst)
		case !path.IsAbs(c.Dst):
			return p.err(line, key, "%q is not absolute: give the path in the image, like %q", c.Dst, path.Join("/", c.Dst))
		case path.Clean(c.Dst) != c.Dst:
			return p.err(line, key, "%q is not a clean path: write %q", c.Dst, path.Clean(c.Dst))
		case c.Dst == "/":
			return p.err(line, key, `is the image's root: name the file or directory to make, like "/usr/local/share/app"`)
		}
		for _, n := range notInImage {
			if c.Dst == n.dir || strings.HasPrefix(c.Dst, n.dir+"/") {
				return p.err(line, key, "%q is under %s: %s; copy it to a place the image keeps, such as /etc, /etc/skel, /usr/local or /opt", c.Dst, n.dir, n.why)
			}
		}
		if c.Mode != nil {
			line, key = at("mode")
			m := *c.Mode
			if !modeRE.MatchString(m) {
				return p.err(line, key, `%q is not a mode: write up to four octal digits, like "0644" or "755"`, m)
			}
			var v uint32
			fmt.Sscanf(m, "%o", &v)
			if v == 0 {
				return p.err(line, key, `%q gives no permission at all: write the mode you mean, like "0644", or leave mode out to keep the source's`, m)
			}
			cp.Mode = ext4.FileMode(v)
		}
		s.Copy = append(s.Copy, cp)
	}
	if len(s.Copy) == 0 {
		return nil
	}
	if rootDir == nil {
		d, err := openRoot(s.Root)
		if err != nil {
			line, key := p.lay.keyLine("copy", 0, "src"), keyName("copy", 0, "src")
			if line == 0 {
				line = p.lay.copyLine(0)
			}
			return p.err(line, key, "%v", err)
		}
		defer d.Close()
		rootDir = d
	}
	r := &reader{root: rootDir}
	for i, c := range s.Copy {
		es, err := r.read(c.Src)
		if err != nil {
			line := p.lay.keyLine("copy", i, "src")
			if line == 0 {
				line = p.lay.copyLine(i)
			}
			return p.err(line, keyName("copy", i, "src"), "%v", err)
		}
		s.sources = append(s.sources, es)
	}
	return nil
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return false
}

// oneLine keeps an error message on one line.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
}

// errText is an error's text without the path an *fs.PathError repeats.
func errText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
