package updater

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"net/http"
	"strings"

	"github.com/banger-dev/banger/internal/trust"
)

// FetchAndVerifySignature is FetchAndVerifySignatureWithKey with the
// embedded release key.
func FetchAndVerifySignature(ctx context.Context, hc *http.Client, rel Release) (map[string]string, error) {
	return FetchAndVerifySignatureWithKey(ctx, hc, rel, trust.ReleasePublicKey())
}

// FetchAndVerifySignatureWithKey downloads rel's SHA256SUMS and its signature
// (each under its cap), verifies the signature with pubKeyPEM, and only then
// parses SHA256SUMS into file name → lowercase hex digest. A release without
// a signature URL and a placeholder key are refused before any download.
func FetchAndVerifySignatureWithKey(ctx context.Context, hc *http.Client, rel Release, pubKeyPEM []byte) (map[string]string, error) {
	if strings.TrimSpace(rel.SignatureURL) == "" {
		return nil, trust.Refuse(ErrSignatureRequired, "release %s has no signature URL; refusing an unsigned release", rel.Version)
	}
	if err := trust.CheckKey(pubKeyPEM); err != nil {
		return nil, err
	}
	if err := checkHTTPURL(rel.SHA256SumsURL); err != nil {
		return nil, trust.Refuse(ErrBadManifest, "release %s: sha256sums_url: %v", rel.Version, err)
	}
	if err := checkHTTPURL(rel.SignatureURL); err != nil {
		return nil, trust.Refuse(ErrBadManifest, "release %s: signature_url: %v", rel.Version, err)
	}
	sums, err := fetchCapped(ctx, hc, rel.SHA256SumsURL, MaxSumsBytes, "SHA256SUMS")
	if err != nil {
		return nil, err
	}
	sig, err := fetchCapped(ctx, hc, rel.SignatureURL, MaxSignatureBytes, "SHA256SUMS signature")
	if err != nil {
		return nil, err
	}
	if err := trust.Verify(sums, sig, pubKeyPEM, "SHA256SUMS of "+rel.Version); err != nil {
		return nil, err
	}
	return ParseSHA256Sums(sums)
}

// ParseSHA256Sums parses checksum lines in GNU form ("<hex>  <name>" or
// "<hex> *<name>") or BSD form ("SHA256 (<name>) = <hex>"). Blank lines and
// "#" comments are skipped; any other malformed line, a duplicate name or an
// empty result is an error. Digests are returned lowercase. Only call it on
// bytes whose signature has verified.
func ParseSHA256Sums(data []byte) (map[string]string, error) {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), int(MaxSumsBytes)+1)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		name, digest, ok := parseSumLine(line)
		if !ok {
			return nil, trust.Refuse(ErrBadSums, "SHA256SUMS line %d is malformed: %.80q", n, line)
		}
		if _, dup := out[name]; dup {
			return nil, trust.Refuse(ErrBadSums, "SHA256SUMS lists %s twice", name)
		}
		out[name] = digest
	}
	if err := sc.Err(); err != nil {
		return nil, trust.Refuse(ErrBadSums, "SHA256SUMS unreadable: %v", err)
	}
	if len(out) == 0 {
		return nil, trust.Refuse(ErrBadSums, "SHA256SUMS has no entries")
	}
	return out, nil
}

func parseSumLine(line string) (name, digest string, ok bool) {
	if rest, found := strings.CutPrefix(line, "SHA256 ("); found {
		i := strings.LastIndex(rest, ") = ")
		if i <= 0 {
			return "", "", false
		}
		name, digest = rest[:i], rest[i+len(") = "):]
	} else {
		if len(line) < 66 || (line[64:66] != "  " && line[64:66] != " *") {
			return "", "", false
		}
		digest, name = line[:64], line[66:]
	}
	if !isHexSHA256(digest) || name == "" || strings.ContainsAny(name, "\x00\n") {
		return "", "", false
	}
	return name, strings.ToLower(digest), true
}

func isHexSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}
