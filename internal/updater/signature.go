package updater

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	_ "embed"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
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

// CheckReleaseKey reports whether the embedded release key is usable: nil for
// a real P-256 key, ErrKeyNotConfigured for the placeholder, ErrBadKey for
// anything else.
func CheckReleaseKey() error {
	_, err := parsePublicKey(releaseKeyPEM)
	return err
}

// IsPlaceholderKey reports whether pubKeyPEM is (or contains) the placeholder.
func IsPlaceholderKey(pubKeyPEM []byte) bool {
	return bytes.Contains(pubKeyPEM, []byte(PlaceholderMarker))
}

// VerifyBlobSignature verifies sig over blob with the embedded release key.
func VerifyBlobSignature(blob, sig []byte) error {
	return verifyBlob(blob, sig, releaseKeyPEM, "blob")
}

// VerifyBlobSignatureWithKey verifies a `cosign sign-blob` style signature:
// sigBase64 is standard base64 (surrounding whitespace ignored) of an ASN.1
// DER ECDSA signature over SHA-256(blob); pubKeyPEM is one PEM "PUBLIC KEY"
// block (PKIX) holding an ECDSA P-256 key. The key is checked first, so a
// placeholder or wrong-curve key is refused whatever the signature.
func VerifyBlobSignatureWithKey(blob, sigBase64, pubKeyPEM []byte) error {
	return verifyBlob(blob, sigBase64, pubKeyPEM, "blob")
}

func verifyBlob(blob, sigBase64, pubKeyPEM []byte, what string) error {
	pub, err := parsePublicKey(pubKeyPEM)
	if err != nil {
		return err
	}
	der, err := decodeSignature(sigBase64, what)
	if err != nil {
		return err
	}
	digest := sha256.Sum256(blob)
	if !ecdsa.VerifyASN1(pub, digest[:], der) {
		return refuse(ErrBadSignature, "signature over %s does not verify with the release key", what)
	}
	return nil
}

func parsePublicKey(pemBytes []byte) (*ecdsa.PublicKey, error) {
	trimmed := bytes.TrimSpace(pemBytes)
	if len(trimmed) == 0 {
		return nil, refuse(ErrKeyNotConfigured, "release key not configured: the key is empty")
	}
	if IsPlaceholderKey(trimmed) {
		return nil, refuse(ErrKeyNotConfigured, "release key not configured: the key is the placeholder (see docs/release-process.md)")
	}
	if !bytes.HasPrefix(trimmed, []byte("-----BEGIN ")) {
		return nil, refuse(ErrBadKey, "release key is not a PEM block")
	}
	block, rest := pem.Decode(trimmed)
	if block == nil {
		return nil, refuse(ErrBadKey, "release key is not a valid PEM block")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, refuse(ErrBadKey, "release key file has data after its PEM block")
	}
	if block.Type != "PUBLIC KEY" {
		return nil, refuse(ErrBadKey, "release key PEM block is %q, want \"PUBLIC KEY\" (PKIX)", block.Type)
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, refuse(ErrBadKey, "release key is not a PKIX public key: %v", err)
	}
	ec, ok := k.(*ecdsa.PublicKey)
	if !ok {
		return nil, refuse(ErrBadKey, "release key is a %T, want an ECDSA P-256 key", k)
	}
	if ec.Curve != elliptic.P256() {
		return nil, refuse(ErrBadKey, "release key is on curve %s, want P-256", ec.Curve.Params().Name)
	}
	return ec, nil
}

// decodeSignature turns base64 text into the DER bytes of an ECDSA
// signature, refusing anything that is not exactly SEQUENCE { r, s } with
// positive integers and nothing after it.
func decodeSignature(sigBase64 []byte, what string) ([]byte, error) {
	s := bytes.TrimSpace(sigBase64)
	if len(s) == 0 {
		return nil, refuse(ErrMalformedSignature, "signature over %s is empty", what)
	}
	der, err := base64.StdEncoding.Strict().DecodeString(string(s))
	if err != nil {
		return nil, refuse(ErrMalformedSignature, "signature over %s is not base64: %v", what, err)
	}
	var rs struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(der, &rs)
	if err != nil {
		return nil, refuse(ErrMalformedSignature, "signature over %s is not an ASN.1 DER ECDSA signature: %v", what, err)
	}
	if len(rest) != 0 {
		return nil, refuse(ErrMalformedSignature, "signature over %s has %d bytes after its DER sequence", what, len(rest))
	}
	if rs.R.Sign() <= 0 || rs.S.Sign() <= 0 {
		return nil, refuse(ErrMalformedSignature, "signature over %s has a non-positive r or s", what)
	}
	return der, nil
}

// KeyFingerprint is a short identifier of a PEM public key, for status
// output and docs: "sha256:" and the first 16 hex digits of the SHA-256 of
// its DER encoding. It refuses what VerifyBlobSignatureWithKey refuses.
func KeyFingerprint(pubKeyPEM []byte) (string, error) {
	pub, err := parsePublicKey(pubKeyPEM)
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", refuse(ErrBadKey, "release key cannot be encoded: %v", err)
	}
	sum := sha256.Sum256(der)
	return fmt.Sprintf("sha256:%x", sum[:8]), nil
}
