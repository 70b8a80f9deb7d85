package catalog

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"path"
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/banger-dev/banger/internal/trust"
)

// Kind is what a catalog (and each of its bundles) holds.
type Kind string

// The two kinds of catalog.
const (
	KindImage  Kind = "image"
	KindKernel Kind = "kernel"
)

// Format constants.
const (
	// SchemaVersion is the index and manifest schema this package reads and writes.
	SchemaVersion = 1
	// IndexFile is the conventional name of a catalog index.
	IndexFile = "index.json"
	// SignatureSuffix is appended to the index URL to get its signature's URL.
	SignatureSuffix = ".sig"
	// ManifestFile is the manifest inside every bundle.
	ManifestFile = "manifest.json"
	// BundleExt ends every bundle file name: <sha256>.tar.zst.
	BundleExt = ".tar.zst"
	// ArchAMD64 is the only architecture entries may name.
	ArchAMD64 = "amd64"
)

// Bundle entry names.
const (
	RootfsFile  = "rootfs.ext4"
	VmlinuxFile = "vmlinux"
	InitrdFile  = "initrd.img"
	VmlinuzFile = "vmlinuz"
	ModulesDir  = "modules"
)

// Valid reports whether k is one of the known kinds.
func (k Kind) Valid() bool { return k == KindImage || k == KindKernel }

// Index is a catalog's index.json.
type Index struct {
	Schema      int     `json:"schema"`
	Kind        Kind    `json:"kind"`
	GeneratedAt string  `json:"generated_at"`
	Entries     []Entry `json:"entries"`

	// URL is where the index was fetched from (set by FetchIndex); relative
	// bundle URLs resolve against it.
	URL string `json:"-"`
}

// Entry is one bundle in an index.
type Entry struct {
	Name          string `json:"name"`
	Description   string `json:"description"`
	Version       string `json:"version"`
	Distro        string `json:"distro"`
	Arch          string `json:"arch"`
	Kernel        string `json:"kernel"`         // images: the kernel catalog name it boots with; may be empty
	KernelVersion string `json:"kernel_version"` // kernels: uname -r of the kernel; may be empty
	Bundle        string `json:"bundle"`         // URL, relative to the index URL or absolute http(s)
	SHA256        string `json:"sha256"`         // hex of the whole .tar.zst
	Size          int64  `json:"size"`           // bytes of the .tar.zst
	// UnpackedSize is the bytes of the bundle's tar stream once zstd is
	// undone: the client refuses as soon as a bundle unpacks past it. 0
	// means the index does not say (an older publisher); the client's own
	// cap applies then.
	UnpackedSize int64 `json:"unpacked_size,omitempty"`
}

// Manifest is manifest.json inside a bundle.
type Manifest struct {
	Schema        int    `json:"schema"`
	Kind          Kind   `json:"kind"`
	Name          string `json:"name"`
	Version       string `json:"version"`
	Kernel        string `json:"kernel"`
	KernelVersion string `json:"kernel_version"`
	CreatedAt     string `json:"created_at"`
}

// Find returns the entry called name.
func (ix *Index) Find(name string) (Entry, bool) {
	for _, e := range ix.Entries {
		if e.Name == name {
			return e, true
		}
	}
	return Entry{}, false
}

// Names lists the entry names in index order.
func (ix *Index) Names() []string {
	out := make([]string, 0, len(ix.Entries))
	for _, e := range ix.Entries {
		out = append(out, e.Name)
	}
	return out
}

var (
	nameRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	versionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$`)
	sha256RE  = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// maxBundleSize caps an entry's declared size and unpacked size (a sanity
// bound, not a quota).
const maxBundleSize = 1 << 40

// maxDescription caps an entry's description, in bytes.
const maxDescription = 512

// SafeEntryName reports whether name may name a catalog entry: lower-case
// letters, digits, '.', '_' and '-', starting with a letter or digit, at most
// 63 characters. Such a name is safe as a single path component.
func SafeEntryName(name string) bool { return nameRE.MatchString(name) }

// BundleFileName is the content-addressed file name of a bundle.
func BundleFileName(sha256Hex string) string { return sha256Hex + BundleExt }

// DirName is the directory a pulled entry is published under in destRoot:
// <name>-<first 12 hex digits of its sha256>.
func DirName(e Entry) string {
	sum := e.SHA256
	if len(sum) > 12 {
		sum = sum[:12]
	}
	return e.Name + "-" + sum
}

// ParseIndex parses and validates index.json bytes (which the caller has
// already authenticated): schema 1, a known kind, an RFC 3339 generated_at,
// and every entry valid for that kind with a unique name.
func ParseIndex(data []byte) (*Index, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	var ix Index
	if err := dec.Decode(&ix); err != nil {
		return nil, trust.Refuse(ErrBadIndex, "index is not valid JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, trust.Refuse(ErrBadIndex, "index has data after its JSON object")
	}
	if ix.Schema != SchemaVersion {
		return nil, trust.Refuse(ErrBadIndex, "index schema %d is not one this banger reads (want %d; upgrade banger)", ix.Schema, SchemaVersion)
	}
	if !ix.Kind.Valid() {
		return nil, trust.Refuse(ErrBadIndex, "index kind %q is not %q or %q", ix.Kind, KindImage, KindKernel)
	}
	if _, err := time.Parse(time.RFC3339, ix.GeneratedAt); err != nil {
		return nil, trust.Refuse(ErrBadIndex, "index generated_at %q is not RFC 3339", ix.GeneratedAt)
	}
	if ix.Entries == nil {
		ix.Entries = []Entry{}
	}
	seen := map[string]bool{}
	for i, e := range ix.Entries {
		if err := ValidateEntry(ix.Kind, e); err != nil {
			return nil, trust.Refuse(ErrBadIndex, "index entry %d: %v", i, err)
		}
		if seen[e.Name] {
			return nil, trust.Refuse(ErrBadIndex, "index lists %q twice", e.Name)
		}
		seen[e.Name] = true
	}
	return &ix, nil
}

// ValidateEntry checks one entry of a kind catalog.
func ValidateEntry(kind Kind, e Entry) error {
	if !SafeEntryName(e.Name) {
		return trust.Refuse(ErrBadIndex, "name %q is not a safe entry name (^[a-z0-9][a-z0-9._-]{0,62}$)", e.Name)
	}
	bad := func(format string, args ...any) error {
		return trust.Refuse(ErrBadIndex, "%q: %s", e.Name, fmt.Sprintf(format, args...))
	}
	if !versionRE.MatchString(e.Version) {
		return bad("version %q is not a plain version string", e.Version)
	}
	if e.Distro != "" && !SafeEntryName(e.Distro) {
		return bad("distro %q is not a plain lower-case word", e.Distro)
	}
	if len(e.Description) > maxDescription || !printable(e.Description) {
		return bad("description is not one printable line of at most %d bytes", maxDescription)
	}
	if e.Arch != ArchAMD64 {
		return bad("arch %q is not %q", e.Arch, ArchAMD64)
	}
	switch kind {
	case KindImage:
		if e.Kernel != "" && !SafeEntryName(e.Kernel) {
			return bad("kernel %q is not a safe entry name", e.Kernel)
		}
		if e.KernelVersion != "" {
			return bad("an image entry has no kernel_version")
		}
	case KindKernel:
		if e.Kernel != "" {
			return bad("a kernel entry has no kernel")
		}
		if e.KernelVersion != "" && !versionRE.MatchString(e.KernelVersion) {
			return bad("kernel_version %q is not a plain version string", e.KernelVersion)
		}
	default:
		return bad("kind %q is not %q or %q", kind, KindImage, KindKernel)
	}
	if !sha256RE.MatchString(e.SHA256) {
		return bad("sha256 %q is not 64 lower-case hex digits", e.SHA256)
	}
	if e.Size <= 0 || e.Size > maxBundleSize {
		return bad("size %d is out of range", e.Size)
	}
	if e.UnpackedSize < 0 || e.UnpackedSize > maxBundleSize {
		return bad("unpacked_size %d is out of range", e.UnpackedSize)
	}
	ref, err := parseBundleRef(e.Bundle)
	if err != nil {
		return bad("%v", err)
	}
	if base := path.Base(ref.Path); base != BundleFileName(e.SHA256) {
		return bad("bundle %q is not named after its sha256 (want …/%s)", e.Bundle, BundleFileName(e.SHA256))
	}
	return nil
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

func parseBundleRef(bundle string) (*url.URL, error) {
	if bundle == "" {
		return nil, fmt.Errorf("bundle URL is empty")
	}
	ref, err := url.Parse(bundle)
	if err != nil {
		return nil, fmt.Errorf("bundle URL %q does not parse", bundle)
	}
	if ref.Scheme != "" && ref.Scheme != "http" && ref.Scheme != "https" {
		return nil, fmt.Errorf("bundle URL %q is not http(s)", bundle)
	}
	if ref.Scheme != "" && ref.Host == "" || ref.Opaque != "" || ref.User != nil {
		return nil, fmt.Errorf("bundle URL %q is not a plain http(s) URL", bundle)
	}
	if ref.RawQuery != "" || ref.Fragment != "" || ref.ForceQuery {
		return nil, fmt.Errorf("bundle URL %q has a query or fragment", bundle)
	}
	return ref, nil
}

// parseIndexURL checks that indexURL is an absolute http(s) URL without
// credentials.
func parseIndexURL(indexURL string) (*url.URL, error) {
	u, err := url.Parse(indexURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.Fragment != "" {
		return nil, trust.Refuse(ErrFetch, "catalog %q: not an absolute http(s) URL (without credentials or fragment); check the catalog URL", indexURL)
	}
	return u, nil
}

// ResolveBundleURL resolves an entry's bundle URL against the URL of the
// index it came from and returns an absolute http(s) URL.
func ResolveBundleURL(indexURL, bundle string) (string, error) {
	base, err := parseIndexURL(indexURL)
	if err != nil {
		return "", err
	}
	ref, err := parseBundleRef(bundle)
	if err != nil {
		return "", trust.Refuse(ErrBadIndex, "catalog %s: %v", indexURL, err)
	}
	u := base.ResolveReference(ref)
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return "", trust.Refuse(ErrBadIndex, "catalog %s: bundle URL %q does not resolve to an http(s) URL", indexURL, bundle)
	}
	return u.String(), nil
}

func (m *Manifest) validate(kind Kind) error {
	if m.Schema != SchemaVersion {
		return fmt.Errorf("manifest schema %d is not %d", m.Schema, SchemaVersion)
	}
	if m.Kind != kind {
		return fmt.Errorf("manifest kind %q is not %q", m.Kind, kind)
	}
	if !SafeEntryName(m.Name) {
		return fmt.Errorf("manifest name %q is not a safe entry name", m.Name)
	}
	if !versionRE.MatchString(m.Version) {
		return fmt.Errorf("manifest version %q is not a plain version string", m.Version)
	}
	if m.Kernel != "" && (kind != KindImage || !SafeEntryName(m.Kernel)) {
		return fmt.Errorf("manifest kernel %q is not allowed here", m.Kernel)
	}
	if m.KernelVersion != "" && (kind != KindKernel || !versionRE.MatchString(m.KernelVersion)) {
		return fmt.Errorf("manifest kernel_version %q is not allowed here", m.KernelVersion)
	}
	if _, err := time.Parse(time.RFC3339, m.CreatedAt); err != nil {
		return fmt.Errorf("manifest created_at %q is not RFC 3339", m.CreatedAt)
	}
	return nil
}

// matches reports how m disagrees with the index entry e, or nil.
func (m *Manifest) matches(kind Kind, e Entry) error {
	switch {
	case m.Kind != kind:
		return fmt.Errorf("its manifest says kind %q, the index %q", m.Kind, kind)
	case m.Name != e.Name:
		return fmt.Errorf("its manifest says name %q, the index %q", m.Name, e.Name)
	case m.Version != e.Version:
		return fmt.Errorf("its manifest says version %q, the index %q", m.Version, e.Version)
	}
	return nil
}

// Entry-set rules, shared by WriteBundle and the client.

// entryType is the tar entry type a bundle may hold.
type entryType int

const (
	typeFile entryType = iota
	typeDir
	typeSymlink
)

func (t entryType) String() string {
	switch t {
	case typeDir:
		return "directory"
	case typeSymlink:
		return "symlink"
	}
	return "regular file"
}

// maxPathLen caps an entry name or symlink target.
const maxPathLen = 1024

// checkPath refuses anything but a clean relative slash path: no empty,
// "." or ".." component, no leading '/', no backslash or NUL.
func checkPath(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty entry name")
	case len(name) > maxPathLen:
		return fmt.Errorf("entry name of %d bytes is too long", len(name))
	case strings.ContainsAny(name, "\\\x00"):
		return fmt.Errorf("entry %q has a backslash or NUL", name)
	case strings.HasPrefix(name, "/"):
		return fmt.Errorf("entry %q is an absolute path", name)
	case !utf8.ValidString(name):
		return fmt.Errorf("entry %q is not valid UTF-8", name)
	}
	for _, c := range strings.Split(name, "/") {
		switch c {
		case "", ".", "..":
			return fmt.Errorf("entry %q is not a clean relative path", name)
		}
	}
	return nil
}

// checkEntry decides whether a bundle of kind may hold an entry called name
// (already stripped of a directory's trailing '/') of type t; linkname is a
// symlink's target.
func checkEntry(kind Kind, name string, t entryType, linkname string) error {
	if err := checkPath(name); err != nil {
		return err
	}
	want := func(w entryType) error {
		if t != w {
			return fmt.Errorf("entry %q is a %s, want a %s", name, t, w)
		}
		return nil
	}
	if !strings.Contains(name, "/") {
		switch {
		case name == ManifestFile:
			return want(typeFile)
		case kind == KindImage && name == RootfsFile:
			return want(typeFile)
		case kind == KindKernel && (name == VmlinuxFile || name == InitrdFile || name == VmlinuzFile):
			return want(typeFile)
		case kind == KindKernel && name == ModulesDir:
			return want(typeDir)
		}
		return fmt.Errorf("entry %q does not belong in %s bundle", name, aKind(kind))
	}
	if kind != KindKernel || !strings.HasPrefix(name, ModulesDir+"/") {
		return fmt.Errorf("entry %q does not belong in %s bundle", name, aKind(kind))
	}
	if t != typeSymlink {
		return nil
	}
	switch {
	case linkname == "":
		return fmt.Errorf("symlink %q has an empty target", name)
	case len(linkname) > maxPathLen || strings.ContainsAny(linkname, "\\\x00"):
		return fmt.Errorf("symlink %q has a target that is too long or holds a backslash or NUL", name)
	case strings.HasPrefix(linkname, "/"):
		return nil // meant for the guest: never followed on the host
	}
	if r := path.Join(path.Dir(name), linkname); r != ModulesDir && !strings.HasPrefix(r, ModulesDir+"/") {
		return fmt.Errorf("symlink %q -> %q escapes %s/", name, linkname, ModulesDir)
	}
	return nil
}

// requiredEntries are the entries every bundle of a kind must hold.
func requiredEntries(kind Kind) []string {
	if kind == KindImage {
		return []string{ManifestFile, RootfsFile}
	}
	return []string{ManifestFile, VmlinuxFile}
}
