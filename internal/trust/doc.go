// Package trust holds what banger trusts and how untrusted bytes reach it:
// the release public key (release-key.pub, embedded), the verification of a
// signature over a blob with it, the capped HTTP fetch everything signed is
// downloaded through, and the error classes those refusals carry.
//
// One thing is trusted: the ECDSA P-256 release public key embedded here.
// The self-updater (internal/updater), the catalog client
// (internal/catalog) and the release builder's self-checks
// (internal/release) verify with it, or with a key a test or a publisher
// names, through Verify only.
//
// # Signatures
//
// The format is the one `cosign sign-blob` writes and `openssl dgst -sha256
// -sign` produces: standard base64 (surrounding whitespace ignored) of an
// ASN.1 DER ECDSA signature over SHA-256 of the blob; the key is one PEM
// "PUBLIC KEY" block (PKIX). Verification is the standard library only
// (crypto/ecdsa). The key is checked first, so the placeholder that ships in
// the repository (its first line is PlaceholderMarker) or a key on another
// curve is refused whatever the signature; the signature must be canonical
// DER with positive r and s and nothing after it.
//
// # Fetching
//
// Get and ReadCapped are the one HTTP path: a non-200 answer is a
// *StatusError, a body over its cap is a *TooLargeError (ErrTooLarge) and
// is refused without reading past cap+1 bytes, or at all when its
// Content-Length already says too much. Callers phrase the refusal for
// their users.
//
// # Errors
//
// Every refusal is a class error: errors.Is matches its class (one of the
// Err* sentinels here, or a caller's own, through Refuse), and its message
// is its own single line.
package trust
