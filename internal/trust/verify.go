package trust

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"math/big"
)

// Verify verifies a `cosign sign-blob` style signature: sigBase64 is
// standard base64 (surrounding whitespace ignored) of an ASN.1 DER ECDSA
// signature over SHA-256(blob); pubKeyPEM is one PEM "PUBLIC KEY" block
// (PKIX) holding an ECDSA P-256 key. The key is checked first, so a
// placeholder or wrong-curve key is refused whatever the signature. what
// names the blob in the errors ("signature over <what> …").
func Verify(blob, sigBase64, pubKeyPEM []byte, what string) error {
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
		return Refuse(ErrBadSignature, "signature over %s does not verify with the release key", what)
	}
	return nil
}

// decodeSignature turns base64 text into the DER bytes of an ECDSA
// signature, refusing anything that is not exactly SEQUENCE { r, s } with
// positive integers and nothing after it.
func decodeSignature(sigBase64 []byte, what string) ([]byte, error) {
	s := bytes.TrimSpace(sigBase64)
	if len(s) == 0 {
		return nil, Refuse(ErrMalformedSignature, "signature over %s is empty", what)
	}
	der, err := base64.StdEncoding.Strict().DecodeString(string(s))
	if err != nil {
		return nil, Refuse(ErrMalformedSignature, "signature over %s is not base64: %v", what, err)
	}
	var rs struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(der, &rs)
	if err != nil {
		return nil, Refuse(ErrMalformedSignature, "signature over %s is not an ASN.1 DER ECDSA signature: %v", what, err)
	}
	if len(rest) != 0 {
		return nil, Refuse(ErrMalformedSignature, "signature over %s has %d bytes after its DER sequence", what, len(rest))
	}
	if rs.R.Sign() <= 0 || rs.S.Sign() <= 0 {
		return nil, Refuse(ErrMalformedSignature, "signature over %s has a non-positive r or s", what)
	}
	return der, nil
}
