package vm

// Fuzz target for VM names, which reach DNS (<name>.vm), directory and tap
// names and the guest's hostname. scripts/fuzz.sh lists it.

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/banger-dev/banger/internal/errdefs"
)

// fzIsDNSLabel is RFC 1123's host-name label restricted to lower case,
// written out independently of ValidateName's regexp.
func fzIsDNSLabel(s string) bool {
	if len(s) < 1 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// FuzzValidateName: ValidateName accepts exactly the lower-case DNS labels
// (1-63 of [a-z0-9-], no leading or trailing '-'), checked against an
// independent implementation in both directions. An accepted name is
// therefore also one plain path component (not "." or "..", no '/'), the
// same in any case-insensitive lookup, and <name>.vm is a valid host name;
// a refusal is a one-line BadRequest that quotes the name. GenerateName's
// names are always accepted.
func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"brisk-otter", "a", "0", "a-b-c", strings.Repeat("a", 63), strings.Repeat("a", 64),
		"-a", "a-", "A", "a_b", "a.b", "..", ".", "a/b", "", "é", "a\n", "a\x00", "xn--bcher-kva", GenerateName()} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := ValidateName(name)
		want := fzIsDNSLabel(name)
		if (err == nil) != want {
			t.Fatalf("ValidateName(%q) = %v; a DNS label: %v", name, err, want)
		}
		if err != nil {
			if !errors.Is(err, errdefs.ErrBadRequest) && errdefs.CodeOf(err) != errdefs.BadRequest {
				t.Fatalf("refusal is not a BadRequest: %v", err)
			}
			if strings.ContainsAny(err.Error(), "\n\r") || !strings.Contains(err.Error(), "invalid VM name") {
				t.Fatalf("refusal is not one line naming the problem: %q", err.Error())
			}
			return
		}
		if name == "." || name == ".." || filepath.Base(name) != name || strings.ContainsAny(name, "/\\\x00") {
			t.Fatalf("accepted %q, which is not one plain path component", name)
		}
		if strings.ToLower(name) != name || !utf8.ValidString(name) {
			t.Fatalf("accepted %q, which is not lower-case ASCII", name)
		}
		if host := name + ".vm"; len(host) > 253 || !fzIsDNSLabel(strings.TrimSuffix(host, ".vm")) {
			t.Fatalf("%s is not a valid host name", host)
		}
		if g := GenerateName(); ValidateName(g) != nil {
			t.Fatalf("GenerateName gave %q, which ValidateName refuses", g)
		}
	})
}
