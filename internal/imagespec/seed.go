package imagespec

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/banger-dev/banger/internal/ext4"
)

// keyVersion changes whenever what a spec builds changes for the same
// spec: build.sh's steps, the seed's layout.
const keyVersion = "banger-imagespec-1"

// Key is a 12-hex-digit hash of everything that changes the built image:
// baseIdentity (the caller's name for the base image plus its rootfs
// identity), the packages in their order, the run steps, and each copy's
// dst, mode and source: its content, modes and names, as read by
// Load/Parse. Comments, whitespace and the spelling of the TOML do not
// change it; src's path does not either (only what it holds). The apt
// sources given to Seed are not part of it.
func (s *Spec) Key(baseIdentity string) string {
	h := sha256.New()
	var n [binary.MaxVarintLen64]byte
	put := func(b []byte) {
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(b)))])
		h.Write(b)
	}
	str := func(ss ...string) {
		for _, s := range ss {
			put([]byte(s))
		}
	}
	num := func(v int) { str(strconv.Itoa(v)) }
	str(keyVersion, "base", baseIdentity)
	str("packages")
	num(len(s.Packages))
	str(s.Packages...)
	str("run")
	num(len(s.Run))
	str(s.Run...)
	str("copy")
	num(len(s.Copy))
	for i, c := range s.Copy {
		str(c.Dst, strconv.FormatUint(uint64(ext4.UnixMode(c.Mode)), 8))
		var src []entry
		if i < len(s.sources) {
			src = s.sources[i]
		}
		num(len(src))
		for _, e := range src {
			kind := "f"
			if e.dir {
				kind = "d"
			}
			str(e.rel, kind, strconv.FormatUint(uint64(e.mode), 8))
			put(e.data)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// The seed's layout, relative to the build VM's /root.
const (
	seedDir   = ".banger-build"
	seedFiles = seedDir + "/files"
)

// Seed writes the tar that fills the build VM's /root: no absolute names,
// no "..", only regular files and directories, each with its mode:
//
//	.banger-build/build.sh   the build script: sh /root/.banger-build/build.sh
//	.banger-build/files/N    the source of copy N (counting from 1): the
//	                         file, or the directory and its tree
//
// build.sh sets the mode of everything it copies itself, so a tar
// extractor that masks modes (the root helper's drops group and other write
// bits) changes nothing in the image.
//
// aptSources: nil (or empty) keeps the image's apt sources; otherwise these
// one-line sources ("deb URL SUITE COMPONENT…") are the only ones during
// the build, and the image's /etc/apt/sources.list and sources.list.d are
// put back afterwards, also when the build fails.
func (s *Spec) Seed(w io.Writer, aptSources []string) error {
	if len(s.sources) != len(s.Copy) {
		return errors.New("imagespec: Seed of a Spec not made by Load or Parse (its copies were not read)")
	}
	script, err := s.script(aptSources)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	epoch := time.Unix(0, 0)
	dir := func(name string, mode uint32) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: int64(mode), ModTime: epoch})
	}
	file := func(name string, mode uint32, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: int64(mode), Size: int64(len(data)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := dir(seedDir, 0o700); err != nil {
		return err
	}
	if err := file(seedDir+"/build.sh", 0o755, []byte(script)); err != nil {
		return err
	}
	if err := dir(seedFiles, 0o700); err != nil {
		return err
	}
	for i, src := range s.sources {
		base := fmt.Sprintf("%s/%d", seedFiles, i+1)
		for _, e := range src {
			name := base
			if e.rel != "" {
				name += "/" + e.rel
			}
			if e.dir {
				err = dir(name, e.mode)
			} else {
				err = file(name, e.mode, e.data)
			}
			if err != nil {
				return err
			}
		}
	}
	return tw.Close()
}

// script is the build.sh that Seed puts in the tar (see Seed for
// aptSources). It is POSIX sh, runs as root in the build VM and prints a
// "banger-build: …" line per stage. BANGER_BUILD_ROOT, when set, is put
// before every path it writes: for tests, which run it as an ordinary user
// against a temporary tree (apt-get then being whatever PATH finds).
func (s *Spec) script(aptSources []string) (string, error) {
	for _, l := range aptSources {
		if !strings.HasPrefix(l, "deb ") || hasControl(l) || !utf8.ValidString(l) {
			return "", fmt.Errorf("imagespec: apt source %q is not one line \"deb URL SUITE COMPONENT...\"", l)
		}
	}
	var b strings.Builder
	line := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	say := func(msg string) { line("say %s", shQuote(msg)) }
	b.WriteString(scriptHead)

	if len(aptSources) > 0 {
		say("apt sources: " + strconv.Itoa(len(aptSources)) + " given for the build")
		b.WriteString(aptSwap)
		quoted := make([]string, len(aptSources))
		for i, l := range aptSources {
			quoted[i] = shQuote(l)
		}
		line(`printf '%%s\n' %s >"$R/etc/apt/sources.list"`, strings.Join(quoted, " "))
	}

	if len(s.Packages) > 0 {
		say("apt-get update")
		line(`apt-get update </dev/null || fail 'apt-get update' $?`)
		say("apt-get install " + strings.Join(s.Packages, " "))
		quoted := make([]string, len(s.Packages))
		for i, p := range s.Packages {
			quoted[i] = shQuote(p)
		}
		line(`apt-get install -y --no-install-recommends %s </dev/null || fail 'apt-get install' $?`, strings.Join(quoted, " "))
		line(`apt-get clean`)
		line(`rm -rf "$R"/var/lib/apt/lists/*`)
	}

	for i, c := range s.Copy {
		var src []entry
		if i < len(s.sources) {
			src = s.sources[i]
		}
		if len(src) == 0 {
			return "", errors.New("imagespec: Seed of a Spec not made by Load or Parse (its copies were not read)")
		}
		staged := fmt.Sprintf(`"$B/files/%d"`, i+1)
		dst := `"$R"` + shQuote(c.Dst)
		say(fmt.Sprintf("copy %d/%d: %s -> %s", i+1, len(s.Copy), label(c.Src), label(c.Dst)))
		// The staged copy is made root's with its modes (chown clears
		// setuid bits, so it goes first), then copied as it is.
		line("own %s", staged)
		if !src[0].dir {
			mode := src[0].mode
			if c.Mode != 0 {
				mode = ext4.UnixMode(c.Mode)
			}
			line("chmod %04o %s", mode, staged)
			line(`mkdir -p "$R"%s`, shQuote(path.Dir(c.Dst)))
			line("rm -f %s", dst)
			line("cp -a %s %s", staged, dst)
			continue
		}
		// Directories: chmod each mode's entries, a few dozen per command.
		var modes []uint32
		byMode := map[uint32][]string{}
		for j, e := range src {
			m := e.mode
			if j == 0 && c.Mode != 0 {
				m = ext4.UnixMode(c.Mode)
			}
			p := staged
			if e.rel != "" {
				p += shQuote("/" + e.rel)
			}
			if _, ok := byMode[m]; !ok {
				modes = append(modes, m)
			}
			byMode[m] = append(byMode[m], p)
		}
		for _, m := range modes {
			ps := byMode[m]
			for len(ps) > 0 {
				n := min(len(ps), 32)
				line("chmod %04o %s", m, strings.Join(ps[:n], " "))
				ps = ps[n:]
			}
		}
		line("mkdir -p %s", dst)
		line(`cp -a "$B/files/%d/." "$R"%s`, i+1, shQuote(c.Dst+"/"))
	}

	if len(s.Run) > 0 {
		line(`cd "$R/"`)
	}
	for i, st := range s.Run {
		what := fmt.Sprintf("step %d/%d", i+1, len(s.Run))
		say(what + ": " + label(firstLine(st)))
		line("sh -e -c %s </dev/null || fail %s $?", shQuote(st), shQuote(what))
	}

	say("clean up")
	if len(aptSources) > 0 {
		line("apt_restore")
		line("trap - EXIT")
	}
	b.WriteString(scriptTail)
	return b.String(), nil
}

const scriptHead = `#!/bin/sh
# Generated by banger from .banger/image.toml (internal/imagespec): builds a
# derived image in a throwaway VM of its base image. Runs as root; its
# output is the build's log. BANGER_BUILD_ROOT (tests only) is put before
# every path it writes.
set -eu
umask 022
export DEBIAN_FRONTEND=noninteractive
R=${BANGER_BUILD_ROOT:-}
B=$(cd "$(dirname "$0")" && pwd)
say() { printf 'banger-build: %s\n' "$1"; }
fail() { say "$1 failed (exit status $2)"; exit "$2"; }
own() { if [ "$(id -u)" = 0 ]; then chown -R 0:0 "$1"; fi; }
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
`

// aptSwap copies the image's apt sources aside (to the work disk, which
// the image never sees), and only once both copies are whole replaces
// them and arms the trap that puts them back on any exit.
const aptSwap = `mkdir "$B/apt-orig"
exists() { [ -e "$1" ] || [ -L "$1" ]; }
if exists "$R/etc/apt/sources.list"; then cp -a "$R/etc/apt/sources.list" "$B/apt-orig/sources.list"; fi
if exists "$R/etc/apt/sources.list.d"; then cp -a "$R/etc/apt/sources.list.d" "$B/apt-orig/sources.list.d"; fi
apt_restore() {
	rm -rf "$R/etc/apt/sources.list" "$R/etc/apt/sources.list.d"
	if exists "$B/apt-orig/sources.list"; then mv "$B/apt-orig/sources.list" "$R/etc/apt/sources.list"; fi
	if exists "$B/apt-orig/sources.list.d"; then mv "$B/apt-orig/sources.list.d" "$R/etc/apt/sources.list.d"; fi
}
trap apt_restore EXIT
rm -rf "$R/etc/apt/sources.list" "$R/etc/apt/sources.list.d"
mkdir -p "$R/etc/apt/sources.list.d"
`

const scriptTail = `rm -f "$R"/etc/ssh/ssh_host_*
if [ -e "$R/etc/machine-id" ]; then : >"$R/etc/machine-id"; fi
sync
say done
`

// shQuote quotes s for sh as one word: in single quotes, each ' written
// as '\”. s must not hold a NUL (no shell word can); the checks in Parse
// keep NULs out.
func shQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// label is s shortened for a progress line, with control characters (a
// terminal's escape sequences among them) made visible.
func label(s string) string {
	const max = 72
	var b strings.Builder
	n := 0
	for _, r := range s {
		if n == max {
			b.WriteString("…")
			break
		}
		if r < 0x20 || r == 0x7f || r == utf8.RuneError || (r >= 0x80 && r < 0xa0) {
			b.WriteString(strings.Trim(strconv.QuoteRune(r), "'"))
		} else {
			b.WriteRune(r)
		}
		n++
	}
	return b.String()
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return strings.TrimSpace(s[:i]) + " …"
	}
	return s
}
