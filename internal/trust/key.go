package trust

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	_ "embed"
	"encoding/pem"
	"fmt"
	"os"
)

// PlaceholderMarker is the line that marks a key file as the placeholder.
// Any key containing it is refused with ErrKeyNotConfigured, even if a real
// PEM block follows: a half-edited key file is not a configured key.
const PlaceholderMarker = "BANGER-RELEASE-KEY-PLACEHOLDER"

// releaseKeyPEM is the release public key: PEM PKIX, ECDSA P-256. The copy in
// the repository is a placeholder until a real key is committed.
//
//go:embed release-key.pub
var releaseKeyPEM []byte

// ReleasePublicKey returns the embedded release public key file as committed.
func ReleasePublicKey() []byte { return bytes.Clone(releaseKeyPEM) }

// IsPlaceholderKey reports whether pubKeyPEM is (or contains) the placeholder.
func IsPlaceholderKey(pubKeyPEM []byte) bool {
	return bytes.Contains(pubKeyPEM, []byte(PlaceholderMarker))
}

// CheckKey reports whether pubKeyPEM is a usable key: nil for one PEM PKIX
// ECDSA P-256 key, ErrKeyNotConfigured for the placeholder or an empty key,
// ErrBadKey for anything else.
func CheckKey(pubKeyPEM []byte) error {
	_, err := parsePublicKey(pubKeyPEM)
	return err
}

// PublicKey returns the release public key `banger update` uses: the PEM in
// file, or, for "", the embedded key. Either is refused unless it is a
// P-256 PKIX key (the placeholder is ErrKeyNotConfigured).
func PublicKey(file string) ([]byte, error) {
	if file == "" {
		if err := CheckKey(releaseKeyPEM); err != nil {
			return nil, err
		}
		return ReleasePublicKey(), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("public key file: %w", err)
	}
	if err := CheckKey(b); err != nil {
		return nil, err
	}
	return b, nil
}

// KeyFingerprint is a short identifier of a PEM public key, for status
// output and docs: "sha256:" and the first 16 hex digits of the SHA-256 of
// its DER encoding. It refuses what Verify refuses as a key.
func KeyFingerprint(pubKeyPEM []byte) (string, error) {
	pub, err := parsePublicKey(pubKeyPEM)
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", Refuse(ErrBadKey, "release key cannot be encoded: %v", err)
	}
	sum := sha256.Sum256(der)
	return fmt.Sprintf("sha256:%x", sum[:8]), nil
}

func parsePublicKey(pemBytes []byte) (*ecdsa.PublicKey, error) {
	trimmed := bytes.TrimSpace(pemBytes)
	if len(trimmed) == 0 {
		return nil, Refuse(ErrKeyNotConfigured, "release key not configured: the key is empty")
	}
	if IsPlaceholderKey(trimmed) {
		return nil, Refuse(ErrKeyNotConfigured, "release key not configured: the key is the placeholder (see docs/release-process.md)")
	}
	if !bytes.HasPrefix(trimmed, []byte("-----BEGIN ")) {
		return nil, Refuse(ErrBadKey, "release key is not a PEM block")
	}
	block, rest := pem.Decode(trimmed)
	if block == nil {
		return nil, Refuse(ErrBadKey, "release key is not a valid PEM block")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, Refuse(ErrBadKey, "release key file has data after its PEM block")
	}
	if block.Type != "PUBLIC KEY" {
		return nil, Refuse(ErrBadKey, "release key PEM block is %q, want \"PUBLIC KEY\" (PKIX)", block.Type)
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, Refuse(ErrBadKey, "release key is not a PKIX public key: %v", err)
	}
	ec, ok := k.(*ecdsa.PublicKey)
	if !ok {
		return nil, Refuse(ErrBadKey, "release key is a %T, want an ECDSA P-256 key", k)
	}
	if ec.Curve != elliptic.P256() {
		return nil, Refuse(ErrBadKey, "release key is on curve %s, want P-256", ec.Curve.Params().Name)
	}
	return ec, nil
}
