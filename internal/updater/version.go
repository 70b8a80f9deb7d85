package updater

import (
	"fmt"
	"strconv"
	"strings"
)

// CompareVersions orders two release versions of the form vMAJOR.MINOR.PATCH
// with an optional -prerelease and +build (semver 2.0 precedence; build
// metadata is ignored). It returns -1, 0 or +1, or an error naming a version
// that is not of that form. `banger update` uses it to refuse downgrades.
func CompareVersions(a, b string) (int, error) {
	va, err := parseSemver(a)
	if err != nil {
		return 0, err
	}
	vb, err := parseSemver(b)
	if err != nil {
		return 0, err
	}
	for i := range 3 {
		if va.num[i] != vb.num[i] {
			if va.num[i] < vb.num[i] {
				return -1, nil
			}
			return 1, nil
		}
	}
	return comparePre(va.pre, vb.pre), nil
}

// IsSemver reports whether v is a version CompareVersions accepts.
func IsSemver(v string) bool {
	_, err := parseSemver(v)
	return err == nil
}

type semver struct {
	num [3]uint64
	pre []string
}

func parseSemver(s string) (semver, error) {
	bad := func(why string) (semver, error) {
		return semver{}, fmt.Errorf("version %q is not vMAJOR.MINOR.PATCH[-PRE][+BUILD]: %s", s, why)
	}
	rest, ok := strings.CutPrefix(s, "v")
	if !ok {
		return bad("no leading v")
	}
	if i := strings.IndexByte(rest, '+'); i >= 0 {
		if !validIdents(rest[i+1:], false) {
			return bad("bad build metadata")
		}
		rest = rest[:i]
	}
	var v semver
	if i := strings.IndexByte(rest, '-'); i >= 0 {
		if !validIdents(rest[i+1:], true) {
			return bad("bad pre-release")
		}
		v.pre = strings.Split(rest[i+1:], ".")
		rest = rest[:i]
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 3 {
		return bad("want three numbers")
	}
	for i, p := range parts {
		if !isNumeric(p) || (len(p) > 1 && p[0] == '0') {
			return bad("non-numeric or zero-padded number")
		}
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil {
			return bad("number out of range")
		}
		v.num[i] = n
	}
	return v, nil
}

func validIdents(s string, noLeadingZero bool) bool {
	if s == "" {
		return false
	}
	for _, id := range strings.Split(s, ".") {
		if id == "" {
			return false
		}
		for _, c := range id {
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-') {
				return false
			}
		}
		if noLeadingZero && isNumeric(id) && len(id) > 1 && id[0] == '0' {
			return false
		}
	}
	return true
}

func isNumeric(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func comparePre(a, b []string) int {
	switch {
	case len(a) == 0 && len(b) == 0:
		return 0
	case len(a) == 0:
		return 1 // a release ranks above its pre-releases
	case len(b) == 0:
		return -1
	}
	for i := 0; i < len(a) && i < len(b); i++ {
		if c := compareIdent(a[i], b[i]); c != 0 {
			return c
		}
	}
	switch {
	case len(a) < len(b):
		return -1
	case len(a) > len(b):
		return 1
	}
	return 0
}

func compareIdent(a, b string) int {
	an, bn := isNumeric(a), isNumeric(b)
	switch {
	case an && bn:
		if len(a) != len(b) { // no leading zeros, so longer is larger
			return cmpInt(len(a), len(b))
		}
		return strings.Compare(a, b)
	case an:
		return -1
	case bn:
		return 1
	}
	return strings.Compare(a, b)
}

func cmpInt(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
