package vm

import (
	"crypto/rand"
	"encoding/hex"
	"math/big"
	"regexp"

	"github.com/banger-dev/banger/internal/errdefs"
)

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidateName requires a DNS label: lowercase letters, digits and '-',
// 1-63 characters, not starting or ending with '-'.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return errdefs.BadRequestf("invalid VM name %q: use a DNS label (a-z, 0-9 and '-', 1-63 characters, no leading or trailing '-')", name)
	}
	return nil
}

var (
	adjectives = []string{"brisk", "calm", "clever", "dusty", "eager", "fuzzy", "gentle", "happy", "icy", "jolly", "keen", "lucky", "mellow", "nimble", "proud", "quiet", "rapid", "shiny", "tidy", "vivid", "witty", "zesty"}
	nouns      = []string{"otter", "badger", "falcon", "gecko", "heron", "ibis", "koala", "lemur", "marmot", "newt", "ocelot", "panda", "quokka", "raven", "stoat", "tapir", "urchin", "vole", "walrus", "yak", "zebra"}
)

func pick(list []string) string {
	n, _ := rand.Int(rand.Reader, big.NewInt(int64(len(list))))
	return list[n.Int64()]
}

// GenerateName returns a random "adjective-noun" name.
func GenerateName() string { return pick(adjectives) + "-" + pick(nouns) }

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
