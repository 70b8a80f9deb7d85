package updater

// The signed manifest: its signature, its expiry, and the state that keeps
// a host from going back to an older manifest (TUF's freeze and rollback
// attacks: a hostile mirror replaying an old, genuinely signed manifest so
// that a host never hears of a newer release).

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/atomicfile"
	"github.com/banger-dev/banger/internal/trust"
)

// Error classes of the signed-manifest checks (see also errors.go).
var (
	// ErrManifestExpired: the manifest's signed expires time has passed.
	ErrManifestExpired = errors.New("release manifest expired")
	// ErrManifestReplay: the manifest is older than one this host already
	// accepted (an older issued time, or a lower highest version).
	ErrManifestReplay = errors.New("release manifest older than one already accepted")
	// ErrState: the update state file or its directory cannot be trusted or read.
	ErrState = errors.New("update state unusable")
)

// StateFileName is the update state file, kept beside the install metadata
// (/etc/banger/update-state.json): root-owned, 0644, in a root-owned
// directory nobody else can write.
const StateFileName = "update-state.json"

// maxStateBytes caps the state file.
const maxStateBytes = 64 << 10

// StatePathFor is the update state file for an install whose metadata is
// at installMetaPath (paths.InstallMetaPath()).
func StatePathFor(installMetaPath string) string {
	return filepath.Join(filepath.Dir(installMetaPath), StateFileName)
}

// ManifestCheck says how VerifyManifest judges a manifest.
type ManifestCheck struct {
	// PublicKeyPEM verifies manifest.json.sig; nil means the embedded
	// release key.
	PublicKeyPEM []byte
	// StatePath is the update state file (StatePathFor): the newest
	// manifest this host accepted, per release key. A manifest older than
	// it is refused. "" skips that check (tests and tools only; `banger
	// update` always sets it).
	StatePath string
	// Record writes an accepted manifest to StatePath. Only root does
	// (`banger update`); `banger update --check` reads the state but does
	// not write it.
	Record bool
	// Now is the time expiry is judged at; zero means time.Now().
	Now time.Time
}

func (c ManifestCheck) key() []byte {
	if c.PublicKeyPEM != nil {
		return c.PublicKeyPEM
	}
	return trust.ReleasePublicKey()
}

// VerifyManifest authenticates and parses manifest.json. In order:
//
//  1. sig (base64 DER ECDSA over SHA-256 of data, the SHA256SUMS.sig
//     format) must verify with the key before anything in data is parsed;
//  2. data must parse (ParseManifest) and carry issued and expires;
//  3. expires must be after c.Now (ErrManifestExpired);
//  4. with c.StatePath, the manifest must not be older than the newest one
//     this host accepted with the same key: its issued time not earlier,
//     its highest version not lower (ErrManifestReplay);
//  5. with c.Record, it becomes the newest accepted manifest.
func VerifyManifest(data, sig []byte, c ManifestCheck) (*Manifest, error) {
	key := c.key()
	if err := trust.Verify(data, sig, key, "the release manifest"); err != nil {
		return nil, err
	}
	m, err := ParseManifest(data)
	if err != nil {
		return nil, err
	}
	if m.Issued == "" || m.Expires == "" {
		return nil, trust.Refuse(ErrBadManifest, "signed release manifest has no issued or expires time; refusing (publish it with a current banger-release)")
	}
	issued, _ := time.Parse(time.RFC3339, m.Issued) // ParseManifest checked both
	expires, _ := time.Parse(time.RFC3339, m.Expires)
	now := c.Now
	if now.IsZero() {
		now = time.Now()
	}
	if !now.Before(expires) {
		return nil, trust.Refuse(ErrManifestExpired, "release manifest expired at %s (issued %s; now %s): the server is serving a stale copy; refusing",
			m.Expires, m.Issued, now.UTC().Format(time.RFC3339))
	}
	if c.StatePath == "" {
		return m, nil
	}
	fp, err := trust.KeyFingerprint(key)
	if err != nil {
		return nil, err
	}
	st, err := loadState(c.StatePath)
	if err != nil {
		return nil, err
	}
	next, err := st.Keys[fp].admit(m, issued)
	if err != nil {
		return nil, err
	}
	if c.Record && next != st.Keys[fp] {
		st.Keys[fp] = next
		if err := saveState(c.StatePath, st); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// updateState is the update state file.
type updateState struct {
	Schema int `json:"schema"`
	// Keys maps a release key's fingerprint (trust.KeyFingerprint) to the newest
	// manifest accepted with it.
	Keys map[string]seenManifest `json:"keys"`
}

// seenManifest is the newest manifest accepted with one key.
type seenManifest struct {
	Issued         string `json:"issued"`
	HighestVersion string `json:"highest_version,omitempty"`
}

// admit refuses m if it is older than s, and returns what s becomes once m
// is accepted.
func (s seenManifest) admit(m *Manifest, issued time.Time) (seenManifest, error) {
	next := seenManifest{Issued: m.Issued, HighestVersion: m.HighestVersion()}
	if s.Issued != "" {
		prev, _ := time.Parse(time.RFC3339, s.Issued) // loadState checked it
		if issued.Before(prev) {
			return s, trust.Refuse(ErrManifestReplay, "release manifest issued %s is older than one this host already accepted (issued %s): a mirror may be replaying an old manifest; refusing",
				m.Issued, s.Issued)
		}
		if !issued.After(prev) {
			next.Issued = s.Issued
		}
	}
	if s.HighestVersion != "" {
		if c, err := CompareVersions(next.HighestVersion, s.HighestVersion); next.HighestVersion == "" || err != nil || c < 0 {
			shown := next.HighestVersion
			if shown == "" {
				shown = "none"
			}
			return s, trust.Refuse(ErrManifestReplay, "release manifest's newest release (%s) is older than %s, which this host has already seen: a mirror may be hiding newer releases; refusing",
				shown, s.HighestVersion)
		} else if c == 0 {
			next.HighestVersion = s.HighestVersion
		}
	}
	return next, nil
}

// trustedOwner reports whether a file or directory with this owner and
// mode may hold update state: owned by root (or the caller, for tests) and
// writable by no one else.
func trustedOwner(uid uint32, mode uint32) bool {
	return (uid == 0 || int(uid) == os.Geteuid()) && mode&0o022 == 0
}

// loadState reads the state file; a missing one is an empty state. A file
// that is a symlink, not a regular file, writable by another user or
// malformed is refused: the state is what stops a replay, so it must be
// what root wrote.
func loadState(path string) (*updateState, error) {
	st := &updateState{Schema: 1, Keys: map[string]seenManifest{}}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, trust.Refuse(ErrState, "update state %s: %v", path, err)
	}
	defer f.Close()
	var fst unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &fst); err != nil {
		return nil, trust.Refuse(ErrState, "update state %s: %v", path, err)
	}
	if fst.Mode&unix.S_IFMT != unix.S_IFREG || !trustedOwner(fst.Uid, fst.Mode) {
		return nil, trust.Refuse(ErrState, "update state %s is not a regular file owned by root and writable only by it; refusing to trust it (remove it to start over)", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxStateBytes+1))
	if err != nil {
		return nil, trust.Refuse(ErrState, "update state %s: %v", path, err)
	}
	bad := func(why string) error {
		return trust.Refuse(ErrState, "update state %s is corrupt (%s); remove it to start over", path, why)
	}
	if len(data) > maxStateBytes {
		return nil, bad("too large")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(st); err != nil {
		return nil, bad(err.Error())
	}
	if st.Schema != 1 {
		return nil, bad(fmt.Sprintf("schema %d", st.Schema))
	}
	if st.Keys == nil {
		st.Keys = map[string]seenManifest{}
	}
	for fp, s := range st.Keys {
		if _, err := time.Parse(time.RFC3339, s.Issued); err != nil {
			return nil, bad(fmt.Sprintf("key %.40q: issued %.40q", fp, s.Issued))
		}
		if s.HighestVersion != "" && !IsSemver(s.HighestVersion) {
			return nil, bad(fmt.Sprintf("key %.40q: highest_version %.40q", fp, s.HighestVersion))
		}
	}
	return st, nil
}

// saveState replaces the state file atomically. Its directory must already
// exist, be a real directory (not a symlink) owned by root and writable by
// no one else; the file is written through that directory's descriptor
// (atomicfile.WriteFileAt: O_EXCL|O_NOFOLLOW temporary, fsync, renameat,
// fsync of the directory), so no other user can redirect the write.
func saveState(path string, st *updateState) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return trust.Refuse(ErrState, "update state directory %s: %v", dir, err)
	}
	d := os.NewFile(uintptr(dfd), dir)
	defer d.Close()
	var dst unix.Stat_t
	if err := unix.Fstat(dfd, &dst); err != nil {
		return trust.Refuse(ErrState, "update state directory %s: %v", dir, err)
	}
	if !trustedOwner(dst.Uid, dst.Mode) {
		return trust.Refuse(ErrState, "update state directory %s is not owned by root or is writable by others; refusing to keep update state there", dir)
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	if err := atomicfile.WriteFileAt(d, base, data, 0o644); err != nil {
		return trust.Refuse(ErrState, "update state %s: %v", path, err)
	}
	return nil
}
