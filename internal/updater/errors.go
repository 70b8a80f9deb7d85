package updater

import "errors"

// Error classes. Every error this package returns that refuses something is
// one of these, or one of internal/trust's (ErrTooLarge, ErrKeyNotConfigured,
// ErrBadKey, ErrMalformedSignature, ErrBadSignature), under errors.Is; its
// message is its own one-line text.
var (
	// ErrUnknownSchema: the manifest's schema_version is not one this binary reads.
	ErrUnknownSchema = errors.New("unknown manifest schema_version")
	// ErrBadManifest: the manifest is not valid JSON or breaks a rule.
	ErrBadManifest = errors.New("malformed manifest")
	// ErrUnknownVersion: the requested version is not in the manifest.
	ErrUnknownVersion = errors.New("version not in manifest")
	// ErrSignatureRequired: a release without a signature.
	ErrSignatureRequired = errors.New("release is not signed")
	// ErrBadSums: SHA256SUMS (after its signature verified) has a malformed line.
	ErrBadSums = errors.New("malformed SHA256SUMS")
	// ErrHashMismatch: downloaded bytes do not hash to the signed value.
	ErrHashMismatch = errors.New("sha256 mismatch")
	// ErrUnsafeArchive: the tarball's entries are not exactly the expected regular files.
	ErrUnsafeArchive = errors.New("unsafe or unexpected release archive")
)
