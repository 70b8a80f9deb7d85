// Package updater is banger's self-update, everything `banger update` does
// once its flags are parsed: it fetches the release manifest, verifies the
// signed SHA256SUMS, downloads the release tarball while hashing it and
// stages the binaries it holds (Prepare, which changes nothing installed),
// then swaps them in, refreshes the unit files, restarts the root helper and
// the daemon and runs the new version's health gate, rolling all of it back
// on any failure (Transaction). What it does to the machine outside the
// files it swaps (systemctl, the daemon's sockets, the programs it runs) goes
// through Host, so the transaction is tested with a fake; SystemHost is the
// real one. Only the CLI imports it (and the release builder, for the
// manifest format).
//
// # Security design
//
// One thing is trusted: the ECDSA P-256 release public key embedded in
// internal/trust (release-key.pub), which also verifies every signature
// (trust.Verify). Everything fetched over the network is untrusted until it
// has been tied back to that key, and is handled in this order:
//
//  1. The manifest (DefaultManifestURL, a constant so a config file cannot
//     redirect updates) is a directory: which versions exist, which one is
//     latest_stable, and where each release's files are. It carries no
//     hashes. It is read through a 1 MiB cap together with manifest.json.sig
//     (4 KiB cap, the SHA256SUMS.sig format), and the signature is verified
//     with the release key before a byte of it is parsed (VerifyManifest); a
//     missing signature is refused. The signed manifest carries issued and
//     expires times: an expired one is refused, and so is one older than
//     the newest this host accepted (an earlier issued time or a lower
//     highest version), recorded per key by root in a root-owned state file
//     beside the install metadata (StatePathFor), so a mirror can neither
//     freeze a host on an old release nor roll its view back. An unknown
//     schema_version is refused, and every URL in it must be absolute
//     http(s) (https only when the manifest itself came over https). The
//     versions it names are still checked against the signed SHA256SUMS
//     (TarballName) and the staged `banger --version`.
//  2. SHA256SUMS and its signature are downloaded (64 KiB and 4 KiB caps) and
//     the signature is verified against the release key before a single line
//     of SHA256SUMS is parsed. A release without a signature URL, or a binary
//     whose embedded key is still the placeholder, is refused: there is no
//     unsigned path. The format is the one `cosign sign-blob` writes and
//     `openssl dgst -sha256 -sign` produces: base64 of an ASN.1 DER ECDSA
//     signature over SHA-256 of the file; the key is PEM PKIX. Verification is
//     the standard library only (crypto/ecdsa, in internal/trust).
//  3. The tarball is streamed to <dest>.partial while being hashed, under a
//     512 MiB cap. It becomes <dest> only when its SHA-256 equals the one the
//     signed SHA256SUMS gives; on any failure the partial file is deleted and
//     nothing is left at <dest>.
//  4. Only then is the tarball opened. Staging accepts exactly the expected
//     set of regular files at the archive root — no extra or missing entry, no
//     duplicate, no directory, link, device or path with "/" or "..", and a
//     bounded uncompressed size — and writes each one 0755 into a fresh stage
//     directory with O_EXCL|O_NOFOLLOW. A refusal removes the stage directory.
//
// Integrity therefore rests on the signatures alone; TLS only adds
// confidentiality.
// Size caps come first everywhere so a hostile server cannot exhaust memory
// or disk before verification has a chance to refuse.
//
// Every fetch takes an *http.Client (nil means http.DefaultClient, which has
// no timeout: bound the time with ctx) and goes through trust.Get. Errors are
// one line and say what was wrong; their class can be tested with errors.Is
// against the Err* sentinels here and in internal/trust.
//
// # The transaction
//
// Transaction.Apply swaps each binary atomically, keeping the old one as
// <path>.previous (internal/atomicfile), the CLI last; rewrites the units the
// new banger renders differently; restarts the helper then the daemon; waits
// for the daemon to answer with the new version; and runs the new `banger
// system status --json`. A failure before the restarts restores the files;
// one after them also resets and restarts both units on the restored files
// and waits for the old version. Either error ends "(rolled back to vA)". A
// rollback that does not complete is a *RollbackError, whose
// WriteRepairSteps says what to do by hand. Running VMs are never touched:
// the units' KillMode=process keeps a restart from reaching them.
package updater
