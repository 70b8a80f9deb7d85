// Package digest hashes files: the SHA-256 the release builder lists in
// SHA256SUMS and the one guestbuild checks a Debian package against.
//
// Anything may import it; it imports nothing of banger's.
package digest

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
)

// FileSHA256 returns the SHA-256 of the file at path as 64 lowercase hex
// digits.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
