package oci

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

var validName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// DefaultName derives a banger image name from an image reference: the last
// repository path component plus the tag ("docker.io/library/debian:bookworm"
// gives "debian-bookworm", "ghcr.io/org/app:v1.2" gives "app-v1.2"), or plus
// the first 12 hex digits of the digest for "@sha256:…" references. A
// reference without either gets the implied tag, "latest". The result
// matches ^[a-z0-9][a-z0-9._-]{0,62}$.
func DefaultName(ref string) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", fmt.Errorf("invalid image reference %q: %w", ref, err)
	}
	repo := r.Context().RepositoryStr()
	base := repo[strings.LastIndex(repo, "/")+1:]
	var suffix string
	switch r := r.(type) {
	case name.Digest:
		d := r.DigestStr()
		d = d[strings.IndexByte(d, ':')+1:]
		suffix = d[:min(12, len(d))]
	case name.Tag:
		suffix = r.TagStr()
	}
	n := sanitizeName(base + "-" + suffix)
	if !validName.MatchString(n) {
		return "", fmt.Errorf("cannot derive an image name from %q", ref)
	}
	return n, nil
}

// sanitizeName lowercases s, maps characters outside [a-z0-9._-] to '-',
// and trims it to 63 characters starting with a letter or digit.
func sanitizeName(s string) string {
	var b strings.Builder
	for _, c := range strings.ToLower(s) {
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
			b.WriteRune(c)
		default:
			b.WriteByte('-')
		}
	}
	n := strings.TrimLeft(b.String(), "._-")
	if len(n) > 63 {
		n = n[:63]
	}
	return strings.TrimRight(n, "._-")
}
