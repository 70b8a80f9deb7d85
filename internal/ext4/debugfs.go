package ext4

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/banger-dev/banger/internal/sysexec"
)

// Owner is what one inode carries in the image, as opposed to what its
// host copy carries.
type Owner struct {
	UID, GID int
	// Mode carries the type bits and the permission bits, setuid, setgid
	// and sticky included; SetOwners applies the permission part.
	Mode fs.FileMode
}

// SetOwners is the pass after Make populated img from dir: one batched
// debugfs run gives every inode listed in owners (keyed by its clean path
// in the tree with a leading "/", "/" being the root) the uid, gid and
// permission bits of its Owner, where its host copy in dir differs (all of
// them when the tree was made by a non-root user). The root is always set:
// mkfs does not take its mode from the directory. debugfs reports failed
// requests on stderr and still exits 0; those fail SetOwners.
func SetOwners(ctx context.Context, img, dir string, owners map[string]Owner) error {
	script, err := ownerScript(dir, owners)
	if err != nil || len(script) == 0 {
		return err
	}
	debugfs, err := tool("debugfs")
	if err != nil {
		return err
	}
	sf, err := os.CreateTemp("", "banger-debugfs-*.script")
	if err != nil {
		return err
	}
	defer os.Remove(sf.Name())
	if _, err := sf.Write(script); err != nil {
		sf.Close()
		return err
	}
	if err := sf.Close(); err != nil {
		return err
	}
	// stdout is dropped: debugfs echoes every command.
	res, err := sysexec.Run(ctx, sysexec.Cmd{Path: debugfs, Args: []string{"-w", "-f", sf.Name(), img}, Env: toolEnv})
	if err != nil {
		return err
	}
	if msg := debugfsErrors(string(res.Stderr)); msg != "" {
		return fmt.Errorf("debugfs setting owners and modes: %s", msg)
	}
	return nil
}

// ownerScript returns the debugfs commands that turn the owners and modes
// mkfs copied from the host files in dir into those of owners.
func ownerScript(dir string, owners map[string]Owner) ([]byte, error) {
	keys := make([]string, 0, len(owners))
	for k := range owners {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	for _, k := range keys {
		o := owners[k]
		if err := CheckName(k); err != nil {
			return nil, err
		}
		if o.UID < 0 || o.GID < 0 || int64(o.UID) > 1<<32-2 || int64(o.GID) > 1<<32-2 {
			return nil, fmt.Errorf("%s: uid/gid %d:%d out of range", k, o.UID, o.GID)
		}
		fi, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(k)))
		if err != nil {
			return nil, err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil, fmt.Errorf("%s: no stat data", k)
		}
		mode := st.Mode&syscall.S_IFMT | UnixMode(o.Mode)
		root := k == "/"
		q := quote(k)
		if root || st.Uid != uint32(o.UID) {
			fmt.Fprintf(&b, "sif %s uid %d\n", q, o.UID)
		}
		if root || st.Gid != uint32(o.GID) {
			fmt.Fprintf(&b, "sif %s gid %d\n", q, o.GID)
		}
		if root || st.Mode != mode {
			fmt.Fprintf(&b, "sif %s mode 0%o\n", q, mode)
		}
	}
	return b.Bytes(), nil
}

// debugfsErrors drops debugfs's banner and returns whatever else it said on
// stderr, on one line (at most ten messages).
func debugfsErrors(stderr string) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(stderr))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "debugfs ") {
			continue
		}
		lines = append(lines, l)
		if len(lines) == 10 {
			lines = append(lines, "…")
			break
		}
	}
	return strings.Join(lines, "; ")
}

// request runs one debugfs request (-R) on img, read-only, and returns
// its stdout. debugfs exits 0 whatever happened: a path that is not in the
// image is an error wrapping fs.ErrNotExist, an image it cannot open an
// error; with strict, any other complaint on stderr is an error too.
func request(ctx context.Context, img, path string, strict bool, req ...string) ([]byte, error) {
	for _, p := range append([]string{path}, req[1:]...) {
		if err := CheckName(p); err != nil {
			return nil, fmt.Errorf("debugfs %s %s: %w", req[0], p, err)
		}
	}
	debugfs, err := tool("debugfs")
	if err != nil {
		return nil, err
	}
	line := req[0] + " " + quote(path)
	for _, a := range req[1:] {
		line += " " + quote(a)
	}
	res, err := sysexec.Run(ctx, sysexec.Cmd{Path: debugfs, Args: []string{"-R", line, img}, Env: toolEnv})
	if err != nil {
		return nil, err
	}
	msg := debugfsErrors(string(res.Stderr))
	switch {
	case msg == "":
		return res.Stdout, nil
	case strings.Contains(msg, "File not found by ext2_lookup"):
		return nil, fmt.Errorf("%s in %s: %w", path, img, fs.ErrNotExist)
	case strings.Contains(msg, "while trying to open") || strings.Contains(msg, "Filesystem not open"):
		return nil, fmt.Errorf("debugfs %s: %s", img, msg)
	case strict:
		return nil, fmt.Errorf("debugfs %s %s in %s: %s", req[0], path, img, msg)
	}
	return res.Stdout, nil
}

// Dump copies the regular file at path in img to the host file dst
// (debugfs dump). debugfs's complaints about giving dst the image's owner
// (a non-root caller cannot) are ignored: check what was written.
func Dump(ctx context.Context, img, path, dst string) error {
	_, err := request(ctx, img, path, false, "dump", dst)
	return err
}

// Rdump copies the directory at path in img, and everything below it,
// into the host directory dir, as dir/<last element of path> (debugfs
// rdump). Complaints about owners are ignored, as with Dump.
func Rdump(ctx context.Context, img, path, dir string) error {
	_, err := request(ctx, img, path, false, "rdump", dir)
	return err
}

// ReadFile returns the content of the file at path in img (debugfs cat).
func ReadFile(ctx context.Context, img, path string) ([]byte, error) {
	return request(ctx, img, path, true, "cat")
}

// Inode is what Stat reads of one inode.
type Inode struct {
	Type     string      // debugfs's word: "regular", "directory", "symlink", ...
	Mode     fs.FileMode // the type and permission bits
	UID, GID int
	Links    int
	Size     int64
	Target   string // a symlink's target
}

var (
	reStatType  = regexp.MustCompile(`Type: (\w+)\s+Mode:\s+([0-7]+)`)
	reStatOwner = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)`)
	reStatSize  = regexp.MustCompile(`\bSize: (\d+)`)
	reStatLinks = regexp.MustCompile(`Links: (\d+)`)
	reStatFast  = regexp.MustCompile(`Fast link dest: "(.*)"`)
)

// Stat reads the inode at path in img (debugfs stat; a long symlink's
// target with cat).
func Stat(ctx context.Context, img, path string) (Inode, error) {
	out, err := request(ctx, img, path, true, "stat")
	if err != nil {
		return Inode{}, err
	}
	s := string(out)
	t, o, z, l := reStatType.FindStringSubmatch(s), reStatOwner.FindStringSubmatch(s), reStatSize.FindStringSubmatch(s), reStatLinks.FindStringSubmatch(s)
	if t == nil || o == nil || z == nil || l == nil {
		return Inode{}, fmt.Errorf("debugfs stat %s in %s: unexpected output %q", path, img, sysexec.OneLine(sysexec.LastLines(s, 3)))
	}
	var in Inode
	in.Type = t[1]
	perm, _ := strconv.ParseUint(t[2], 8, 32)
	in.Mode = FileMode(uint32(perm)) | typeBits[in.Type]
	in.UID, _ = strconv.Atoi(o[1])
	in.GID, _ = strconv.Atoi(o[2])
	in.Size, _ = strconv.ParseInt(z[1], 10, 64)
	in.Links, _ = strconv.Atoi(l[1])
	if in.Type == "symlink" {
		if f := reStatFast.FindStringSubmatch(s); f != nil {
			in.Target = f[1]
		} else {
			b, err := ReadFile(ctx, img, path)
			if err != nil {
				return Inode{}, err
			}
			in.Target = string(b)
		}
	}
	return in, nil
}

// typeBits maps debugfs's type words to fs.FileMode type bits.
var typeBits = map[string]fs.FileMode{
	"regular": 0, "directory": fs.ModeDir, "symlink": fs.ModeSymlink, "FIFO": fs.ModeNamedPipe,
	"socket": fs.ModeSocket, "character": fs.ModeDevice | fs.ModeCharDevice, "block": fs.ModeDevice,
}
