package hostcheck

import (
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ReflinkWorks reports whether dir's filesystem makes reflink copies: it
// tries FICLONE between two fresh files in dir (created if missing) and
// removes them. An error means the probe itself could not run.
func ReflinkWorks(dir string) (bool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, err
	}
	a, err := os.CreateTemp(dir, ".doctor-")
	if err != nil {
		return false, err
	}
	defer os.Remove(a.Name())
	defer a.Close()
	if _, err := a.Write(make([]byte, 4096)); err != nil {
		return false, err
	}
	b, err := os.Create(filepath.Join(dir, filepath.Base(a.Name())+".clone"))
	if err != nil {
		return false, err
	}
	defer os.Remove(b.Name())
	defer b.Close()
	return unix.IoctlFileClone(int(b.Fd()), int(a.Fd())) == nil, nil
}
