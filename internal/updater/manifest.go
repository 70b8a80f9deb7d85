package updater

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/trust"
)

// ManifestSchemaVersion is the only manifest schema this binary reads.
const ManifestSchemaVersion = 1

// DefaultManifestURL is the canonical manifest. It is a constant on purpose:
// no config file or environment variable can redirect updates. Tests and
// smoke runs use FetchManifestFrom with their own URL.
const DefaultManifestURL = "https://github.com/banger-dev/banger/releases/latest/download/manifest.json"

// Platform is the os-arch part of release tarball names.
const Platform = "linux-amd64"

// ReleaseBinaries is the exact set of files a release tarball holds, in the
// order the release builder writes them.
var ReleaseBinaries = []string{"banger", "bangerd", "banger-vmm", "banger-agent"}

// Size caps on everything fetched. Variables only so tests can read them.
var (
	MaxManifestBytes  int64 = 1 << 20   // 1 MiB
	MaxSumsBytes      int64 = 64 << 10  // 64 KiB
	MaxSignatureBytes int64 = 4 << 10   // 4 KiB
	MaxTarballBytes   int64 = 512 << 20 // 512 MiB
	// MaxStagedBytes caps the total uncompressed size Stage writes.
	MaxStagedBytes int64 = 1 << 30 // 1 GiB
)

// Manifest is manifest.json: a directory of releases, signed with the
// release key (manifest.json.sig beside it, the SHA256SUMS.sig format). It
// carries URLs only; hashes come from each release's signed SHA256SUMS.
// Issued and Expires (RFC 3339) date the signature: an expired manifest, or
// one older than a manifest this host already accepted, is refused
// (VerifyManifest), so a mirror cannot freeze a host on an old release.
type Manifest struct {
	SchemaVersion int       `json:"schema_version"`
	Issued        string    `json:"issued,omitempty"`
	Expires       string    `json:"expires,omitempty"`
	LatestStable  string    `json:"latest_stable"`
	Releases      []Release `json:"releases"`
}

// Release is one manifest entry.
type Release struct {
	Version       string `json:"version"`
	TarballURL    string `json:"tarball_url"`
	SHA256SumsURL string `json:"sha256sums_url"`
	SignatureURL  string `json:"signature_url"`
	PublishedAt   string `json:"published_at,omitempty"`
}

// TarballName is the file name of a release's tarball, which is also the
// name its hash is listed under in SHA256SUMS.
func TarballName(version string) string {
	return "banger-" + version + "-" + Platform + ".tar.gz"
}

// TarballName is TarballName(r.Version).
func (r Release) TarballName() string { return TarballName(r.Version) }

// TarballSHA256 returns the hash the signed sums give for r's tarball. Looking
// it up under the versioned name ties the signature to r.Version: a manifest
// that points r's URLs at another release's files finds no entry.
func (r Release) TarballSHA256(sums map[string]string) (string, error) {
	h, ok := sums[r.TarballName()]
	if !ok {
		return "", trust.Refuse(ErrBadSums, "signed SHA256SUMS for %s has no entry for %s", r.Version, r.TarballName())
	}
	return h, nil
}

// ManifestSignatureSuffix is appended to a manifest URL's path to get its
// signature's URL: …/manifest.json → …/manifest.json.sig.
const ManifestSignatureSuffix = ".sig"

// FetchManifest is FetchManifestFrom at DefaultManifestURL.
func FetchManifest(ctx context.Context, hc *http.Client, c ManifestCheck) (*Manifest, error) {
	return FetchManifestFrom(ctx, hc, DefaultManifestURL, c)
}

// FetchManifestFrom fetches the manifest at rawURL (MaxManifestBytes cap)
// and its signature at the same URL with ".sig" added to its path
// (MaxSignatureBytes cap), and hands both
// to VerifyManifest, which checks the signature before a byte of the
// manifest is parsed, then its expiry and that it is not older than one
// already accepted. A manifest fetched over https must name only https URLs.
// There is no unsigned path: a missing signature is refused.
func FetchManifestFrom(ctx context.Context, hc *http.Client, rawURL string, c ManifestCheck) (*Manifest, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil {
		return nil, trust.Refuse(ErrBadManifest, "manifest URL %q is not an absolute http(s) URL", rawURL)
	}
	if err := trust.CheckKey(c.key()); err != nil {
		return nil, err
	}
	body, err := fetchCapped(ctx, hc, rawURL, MaxManifestBytes, "manifest")
	if err != nil {
		return nil, err
	}
	su := *u
	su.Path, su.RawPath, su.Fragment = su.Path+ManifestSignatureSuffix, "", ""
	sigURL := su.String()
	sig, err := fetchCapped(ctx, hc, sigURL, MaxSignatureBytes, "manifest signature")
	if err != nil {
		if errors.Is(err, trust.ErrTooLarge) {
			return nil, err
		}
		return nil, trust.Refuse(ErrSignatureRequired, "release manifest %s: no signature at %s (%v); refusing an unsigned manifest", rawURL, sigURL, err)
	}
	m, err := VerifyManifest(body, sig, c)
	if err != nil {
		return nil, err
	}
	if u.Scheme == "https" {
		for _, r := range m.Releases {
			for _, s := range []string{r.TarballURL, r.SHA256SumsURL, r.SignatureURL} {
				if s != "" && !strings.HasPrefix(s, "https://") {
					return nil, trust.Refuse(ErrBadManifest, "manifest fetched over https names a non-https URL for %s: %s", r.Version, s)
				}
			}
		}
	}
	return m, nil
}

// ParseManifest decodes and validates manifest.json: schema_version must be
// ManifestSchemaVersion; issued and expires, when present, RFC 3339 with
// expires after issued; versions must be non-empty, unique and path-safe;
// latest_stable, if set, must name a release; tarball and SHA256SUMS URLs must
// be absolute http(s) URLs, and so must the signature URL when present (an
// absent one is refused later, by FetchAndVerifySignature). Unknown fields are
// ignored so a later, additive schema-1 manifest still reads. It checks no
// signature: only call it on bytes VerifyManifest authenticated (or, in the
// release builder, on the publisher's own manifest).
func ParseManifest(data []byte) (*Manifest, error) {
	var probe struct {
		SchemaVersion *int `json:"schema_version"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, trust.Refuse(ErrBadManifest, "manifest is not valid JSON: %v", err)
	}
	if probe.SchemaVersion == nil {
		return nil, trust.Refuse(ErrBadManifest, "manifest has no schema_version")
	}
	if *probe.SchemaVersion != ManifestSchemaVersion {
		return nil, trust.Refuse(ErrUnknownSchema, "manifest schema_version %d is not supported (this banger reads %d); update banger by hand",
			*probe.SchemaVersion, ManifestSchemaVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, trust.Refuse(ErrBadManifest, "manifest is not valid JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, trust.Refuse(ErrBadManifest, "manifest has trailing data after the JSON object")
	}
	var issued, expires time.Time
	for _, f := range []struct {
		name, val string
		t         *time.Time
	}{{"issued", m.Issued, &issued}, {"expires", m.Expires, &expires}} {
		if f.val == "" {
			continue
		}
		t, err := time.Parse(time.RFC3339, f.val)
		if err != nil {
			return nil, trust.Refuse(ErrBadManifest, "manifest %s %.40q is not an RFC 3339 time", f.name, f.val)
		}
		*f.t = t
	}
	if m.Issued != "" && m.Expires != "" && !expires.After(issued) {
		return nil, trust.Refuse(ErrBadManifest, "manifest expires (%s) is not after issued (%s)", m.Expires, m.Issued)
	}
	seen := map[string]bool{}
	for i, r := range m.Releases {
		if err := checkVersionName(r.Version); err != nil {
			return nil, trust.Refuse(ErrBadManifest, "manifest release #%d: %v", i+1, err)
		}
		if seen[r.Version] {
			return nil, trust.Refuse(ErrBadManifest, "manifest lists %s twice", r.Version)
		}
		seen[r.Version] = true
		for _, f := range []struct{ name, val string }{
			{"tarball_url", r.TarballURL}, {"sha256sums_url", r.SHA256SumsURL}, {"signature_url", r.SignatureURL},
		} {
			if f.val == "" && f.name == "signature_url" {
				continue
			}
			if err := checkHTTPURL(f.val); err != nil {
				return nil, trust.Refuse(ErrBadManifest, "manifest release %s: %s: %v", r.Version, f.name, err)
			}
		}
	}
	if m.LatestStable != "" && !seen[m.LatestStable] {
		return nil, trust.Refuse(ErrBadManifest, "manifest latest_stable %.40q is not among its releases", m.LatestStable)
	}
	return &m, nil
}

// Versions lists the manifest's versions in manifest order.
func (m *Manifest) Versions() []string {
	out := make([]string, 0, len(m.Releases))
	for _, r := range m.Releases {
		out = append(out, r.Version)
	}
	return out
}

// HighestVersion is the highest semver version the manifest lists (pre-
// releases included), or "" when it lists none: test versions such as
// v0.smoke.0 are not ordered.
func (m *Manifest) HighestVersion() string {
	best := ""
	for _, r := range m.Releases {
		if !IsSemver(r.Version) {
			continue
		}
		if c, err := CompareVersions(r.Version, best); best == "" || (err == nil && c > 0) {
			best = r.Version
		}
	}
	return best
}

// Resolve picks the release to install: latest_stable for "", else the
// release named to. An unknown version is an error naming it and listing the
// available ones.
func (m *Manifest) Resolve(to string) (Release, error) {
	want := to
	if want == "" {
		if m.LatestStable == "" {
			return Release{}, trust.Refuse(ErrUnknownVersion, "manifest names no latest_stable release (available: %s)", m.available())
		}
		want = m.LatestStable
	}
	for _, r := range m.Releases {
		if r.Version == want {
			return r, nil
		}
	}
	return Release{}, trust.Refuse(ErrUnknownVersion, "version %s is not in the manifest (available: %s)", want, m.available())
}

func (m *Manifest) available() string {
	if len(m.Releases) == 0 {
		return "none"
	}
	return strings.Join(m.Versions(), ", ")
}

func checkVersionName(v string) error {
	if v == "" {
		return fmt.Errorf("empty version")
	}
	if len(v) > 64 || v == "." || v == ".." {
		return fmt.Errorf("version %q is not a valid name", v)
	}
	for _, c := range v {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '+' || c == '_'
		if !ok {
			return fmt.Errorf("version %q has a character outside [A-Za-z0-9.+_-]", v)
		}
	}
	return nil
}

func checkHTTPURL(s string) error {
	if s == "" {
		return fmt.Errorf("missing")
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL", s)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an absolute http(s) URL", s)
	}
	if u.User != nil {
		return fmt.Errorf("%q carries credentials", s)
	}
	return nil
}

// fetchCapped GETs rawURL and returns its body, refusing a non-200 answer and
// a body over limit without reading past limit+1 bytes (and without reading
// at all when Content-Length already says too much).
func fetchCapped(ctx context.Context, hc *http.Client, rawURL string, limit int64, what string) ([]byte, error) {
	resp, err := get(ctx, hc, rawURL, what)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := trust.ReadCapped(resp, limit)
	var big *trust.TooLargeError
	switch {
	case errors.As(err, &big) && big.Size >= 0:
		return nil, trust.Refuse(trust.ErrTooLarge, "%s at %s is %d bytes, over the %d-byte cap", what, rawURL, big.Size, limit)
	case errors.As(err, &big):
		return nil, trust.Refuse(trust.ErrTooLarge, "%s at %s is over the %d-byte cap", what, rawURL, limit)
	case err != nil:
		return nil, fmt.Errorf("read %s from %s: %w", what, rawURL, err)
	}
	return body, nil
}

// get GETs rawURL (trust.Get, as banger-updater) and returns the response if
// it is a 200; its errors name what was fetched.
func get(ctx context.Context, hc *http.Client, rawURL, what string) (*http.Response, error) {
	resp, err := trust.Get(ctx, hc, rawURL, "banger-updater")
	var status *trust.StatusError
	switch {
	case errors.As(err, &status):
		return nil, fmt.Errorf("fetch %s: GET %s: %s", what, rawURL, status.Status)
	case err != nil:
		return nil, fmt.Errorf("fetch %s: %w", what, err)
	}
	return resp, nil
}
