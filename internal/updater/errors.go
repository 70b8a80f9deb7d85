package updater

import (
	"errors"
	"fmt"
)

// Error classes. Every error this package returns that refuses something is
// one of these under errors.Is; its message is its own one-line text.
var (
	// ErrUnknownSchema: the manifest's schema_version is not one this binary reads.
	ErrUnknownSchema = errors.New("unknown manifest schema_version")
	// ErrBadManifest: the manifest is not valid JSON or breaks a rule.
	ErrBadManifest = errors.New("malformed manifest")
	// ErrTooLarge: a download exceeded its size cap.
	ErrTooLarge = errors.New("download exceeds its size cap")
	// ErrUnknownVersion: the requested version is not in the manifest.
	ErrUnknownVersion = errors.New("version not in manifest")
	// ErrKeyNotConfigured: the release key is the placeholder (or absent).
	ErrKeyNotConfigured = errors.New("release key not configured")
	// ErrBadKey: a public key that is not a PEM PKIX ECDSA P-256 key.
	ErrBadKey = errors.New("bad release public key")
	// ErrSignatureRequired: a release without a signature.
	ErrSignatureRequired = errors.New("release is not signed")
	// ErrMalformedSignature: the signature is not base64 of an ASN.1 DER ECDSA signature.
	ErrMalformedSignature = errors.New("malformed signature")
	// ErrBadSignature: a well-formed signature that does not verify.
	ErrBadSignature = errors.New("signature does not verify")
	// ErrBadSums: SHA256SUMS (after its signature verified) has a malformed line.
	ErrBadSums = errors.New("malformed SHA256SUMS")
	// ErrHashMismatch: downloaded bytes do not hash to the signed value.
	ErrHashMismatch = errors.New("sha256 mismatch")
	// ErrUnsafeArchive: the tarball's entries are not exactly the expected regular files.
	ErrUnsafeArchive = errors.New("unsafe or unexpected release archive")
)

// classErr carries a class for errors.Is and its own one-line message, so
// the text does not have to repeat the class.
type classErr struct {
	class error
	msg   string
}

func (e *classErr) Error() string { return e.msg }

func (e *classErr) Is(target error) bool { return target == e.class }

func refuse(class error, format string, args ...any) error {
	return &classErr{class: class, msg: fmt.Sprintf(format, args...)}
}
