package oci

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// PruneCache empties the blob cache below cacheDir and reports what it
// freed: the bytes of every regular file and the number of blobs. It renames
// cacheDir/oci aside to cacheDir/oci.prune-<random>, recreates cacheDir/oci
// empty, then counts and deletes the old tree, so a Fetch starting meanwhile
// sees an empty cache rather than a half-deleted one. Leftovers of an
// interrupted prune are deleted (and counted) too. With dryRun it only
// counts and changes nothing. A missing cache frees nothing.
func PruneCache(cacheDir string, dryRun bool) (freedBytes int64, blobs int, err error) {
	live := filepath.Join(cacheDir, "oci")
	olds, err := filepath.Glob(filepath.Join(cacheDir, "oci.prune-*"))
	if err != nil {
		return 0, 0, err
	}
	fi, err := os.Lstat(live)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return 0, 0, err
	case !fi.IsDir():
		return 0, 0, errors.New(live + " is not a directory")
	case dryRun:
		olds = append(olds, live)
	default:
		var rnd [6]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return 0, 0, err
		}
		aside := live + ".prune-" + hex.EncodeToString(rnd[:])
		if err := os.Rename(live, aside); err != nil {
			return 0, 0, err
		}
		if err := os.Mkdir(live, fi.Mode().Perm()); err != nil && !errors.Is(err, fs.ErrExist) {
			return 0, 0, err
		}
		olds = append(olds, aside)
	}
	for _, dir := range olds {
		b, n, err := countCache(dir)
		if err != nil {
			return freedBytes, blobs, err
		}
		if !dryRun {
			if err := os.RemoveAll(dir); err != nil {
				return freedBytes, blobs, err
			}
		}
		freedBytes += b
		blobs += n
	}
	return freedBytes, blobs, nil
}

// countCache sums the sizes of the regular files below dir and counts the
// blobs (files named by a sha256 hex digest) among them.
func countCache(dir string) (bytes int64, blobs int, err error) {
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		bytes += fi.Size()
		if n := d.Name(); len(n) == 64 && isHex(n) && strings.HasSuffix(filepath.Dir(p), filepath.Join("blobs", "sha256")) {
			blobs++
		}
		return nil
	})
	return bytes, blobs, err
}
