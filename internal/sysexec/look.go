package sysexec

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// SystemDirs hold the system's programs. A non-root PATH often lacks the
// sbin directories, where mkfs.ext4, debugfs and the like live.
var SystemDirs = []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"}

// LookPath finds a program in PATH, then in SystemDirs. A name with a
// slash is checked as it is.
func LookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if p, ok := lookIn(name, SystemDirs); ok {
		return p, nil
	}
	return "", notFound(name, "PATH", SystemDirs)
}

// LookSystemPath finds a program in SystemDirs, then in PATH: what a
// privileged caller uses, so the system's program wins over one a user's
// PATH puts first.
func LookSystemPath(name string) (string, error) {
	if p, ok := lookIn(name, SystemDirs); ok {
		return p, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", notFound(name, "PATH", SystemDirs)
}

// LookIn finds a program in dirs only (not PATH).
func LookIn(name string, dirs []string) (string, error) {
	if p, ok := lookIn(name, dirs); ok {
		return p, nil
	}
	return "", notFound(name, "", dirs)
}

func lookIn(name string, dirs []string) (string, bool) {
	if strings.Contains(name, "/") {
		return name, executable(name)
	}
	for _, d := range dirs {
		if p := filepath.Join(d, name); executable(p) {
			return p, true
		}
	}
	return "", false
}

// executable reports whether p is a regular file with an execute bit.
func executable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

func notFound(name, first string, dirs []string) error {
	where := strings.Join(dirs, ":")
	if first != "" {
		where = first + " or " + where
	}
	return &notFoundError{name + " not found in " + where}
}

// notFoundError is a failed look-up; it is ErrNotFound.
type notFoundError struct{ msg string }

func (e *notFoundError) Error() string        { return e.msg }
func (e *notFoundError) Is(target error) bool { return target == ErrNotFound }
