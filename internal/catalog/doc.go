// Package catalog pulls image and kernel bundles from a catalog served over
// plain HTTP(S), and writes the bundles a publisher serves.
//
// A catalog is static files; any HTTP server can serve it as-is:
//
//	index.json                 schema 1: kind, generated_at, entries
//	index.json.sig             base64 of the DER ECDSA P-256 signature over index.json
//	<sha256>.tar.zst           one bundle per entry, named by its own hash
//
// Trust flows from the release public key (internal/trust) alone. The
// index signature is checked over the exact bytes of index.json before any
// of it is parsed; every entry is then validated, and an entry pins its
// bundle by SHA-256 and size. A bundle is streamed from the network through
// a hasher and a byte counter into a zstd decoder and a tar reader, and its
// entries are written into a fresh staging directory under
// <destRoot>/.staging/. What the zstd stream decompresses to is counted and
// capped while it streams, at the entry's signed unpacked_size (or, for an
// entry without one, Client.MaxUnpackedBytes), so a bomb served in place of
// a bundle is refused long before its hash could be. Only when the stream has ended with the signed hash
// and size, the bundle held exactly the entries its kind allows, and its
// manifest.json names the same kind and entry, is the staging directory
// renamed to <destRoot>/<name>-<sha256[:12]>. Any failure removes the
// staging directory, so a refused pull leaves nothing behind.
//
// The entry-set rules are shared by the client (which refuses) and
// WriteBundle (which the publisher, banger-release catalog, uses): an image
// bundle is exactly rootfs.ext4 and manifest.json; a kernel bundle is
// vmlinux and manifest.json, optionally initrd.img, vmlinuz and a modules/
// tree of directories, regular files and symlinks whose targets stay inside
// the tree (or are absolute, meant for the guest). Paths are clean and
// relative, entries are never duplicated, and every file is written 0444.
//
// The format is documented in docs/catalog.md. Errors are single lines that
// name the URL or entry at fault and say what to do.
package catalog
