// Package oci imports OCI and Docker images into ext4 root filesystem images
// without mounting anything.
//
// The import is three steps, each usable on its own:
//
//   - [Puller.Fetch] resolves a reference against its registry (linux/amd64
//     only), and caches the image's config and layer blobs, compressed as
//     served and verified against their digests, under
//     <CacheDir>/oci/blobs/sha256/<hex>.
//   - [Flatten] replays the cached layers, oldest first, into a plain
//     directory as an unprivileged-looking copy: whiteouts and opaque
//     directories are applied, paths are resolved without ever leaving the
//     tree, and the owner and mode each tar header asked for are recorded in
//     [Tree.Owners] instead of being applied to the host. What each layer,
//     and the image, unpack to is capped while the layers stream
//     ([Limits], [FlattenWithLimits]; [Puller.Limits] refuses layers declared
//     over the caps before downloading them).
//   - [BuildExt4] runs mkfs.ext4 -d on that directory and then a single
//     batched debugfs pass that writes the recorded owners and modes
//     (setuid/setgid/sticky included) into the new filesystem's inodes.
//
// See docs/oci-import.md for the cache layout and the exact layer rules.
package oci
