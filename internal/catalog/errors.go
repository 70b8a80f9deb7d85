package catalog

import "errors"

// Error classes. Every refusal this package returns is one of these, or
// trust.ErrTooLarge (a download or an unpacked bundle over its cap), under
// errors.Is; its message is its own one-line text.
var (
	// ErrFetch: a request failed or the server did not answer 200.
	ErrFetch = errors.New("catalog fetch failed")
	// ErrSignature: the index signature is missing, malformed, or does not
	// verify with the release key (or the key is not configured).
	ErrSignature = errors.New("catalog index signature refused")
	// ErrBadIndex: the (verified) index is not valid JSON or breaks a rule.
	ErrBadIndex = errors.New("malformed catalog index")
	// ErrNotFound: a name is not in the index.
	ErrNotFound = errors.New("not in the catalog")
	// ErrHashMismatch: a bundle's bytes do not match the signed sha256 or size.
	ErrHashMismatch = errors.New("bundle sha256 mismatch")
	// ErrBadBundle: a bundle is corrupt, holds an unexpected or unsafe entry,
	// lacks a required one, or its manifest does not match its entry.
	ErrBadBundle = errors.New("unsafe or malformed bundle")
)
