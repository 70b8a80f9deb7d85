// Package release builds signed banger releases: the work behind the
// banger-release command and behind tests that need a real release to
// update to.
//
// A release is a directory tree that can be served as-is by any static HTTP
// server:
//
//	manifest.json                          schema_version 1, every release, latest_stable
//	<version>/banger-<version>-linux-amd64.tar.gz   the binaries, flat, 0755
//	<version>/SHA256SUMS                   "<hex>  <tarball name>" (sha256sum format)
//	<version>/SHA256SUMS.sig               base64 of the DER ECDSA P-256 signature
//
// Signing uses openssl, run by argv (`openssl dgst -sha256 -sign key.pem
// SHA256SUMS`), and the DER output is base64-encoded: byte for byte the
// format `cosign sign-blob` writes, so either tool can sign and either
// `cosign verify-blob` or `openssl dgst -verify` can check. Before a release
// is moved into place its signature is verified with the updater's own
// verifier (internal/trust) against the public half of the signing key (and,
// with VerifyPub, against a given public key), so a release this package
// writes is one the updater accepts. Binaries are built with `go build -trimpath` and the
// build tuple stamped into internal/buildinfo, or taken prebuilt.
//
// Everything is written under a temporary directory and renamed into place;
// manifest.json is replaced atomically last. A version already in the
// manifest or already on disk is refused: versions are never reused.
package release
