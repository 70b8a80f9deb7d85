package updater

// Fuzz targets for everything the updater parses from the network: the
// release manifest, SHA256SUMS, its signature, and the release tarball that
// Stage unpacks. scripts/fuzz.sh lists them; `make fuzz-short` runs each for
// a few seconds, `make fuzz` for longer. Names here carry a "fz" prefix so
// they cannot collide with the package's other test helpers.

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"io/fs"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/internal/trust"
)

const (
	fzHexA = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	fzHexB = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
)

// fzOneLine fails unless err's message is a single line: every refusal in
// this package is documented as "its own one-line text", and a hostile
// server must not be able to forge extra lines in what the user sees.
func fzOneLine(t *testing.T, err error) {
	t.Helper()
	if strings.ContainsAny(err.Error(), "\n\r") {
		t.Fatalf("error is not one line: %q", err.Error())
	}
}

func fzIsLowerHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// FuzzParseSHA256Sums: ParseSHA256Sums never panics; what it accepts is a
// non-empty map of names (no NUL, no newline) to 64 lower-case hex digits,
// every name taken from the input, at most one entry per line; and the
// accepted map, written back in canonical form (GNU, or BSD for a name
// ending in CR), parses to the same map (round trip).
func FuzzParseSHA256Sums(f *testing.F) {
	f.Add([]byte(fzHexA + "  " + TarballName("v1.2.3") + "\n"))
	f.Add([]byte("# comment\n\n" + fzHexA + "  banger-v1-linux-amd64.tar.gz\n" +
		strings.ToUpper(fzHexB) + " *binary-mode.bin\r\n" + "SHA256 (bsd style.txt) = " + fzHexA + "\n"))
	f.Add([]byte("SHA256 (a) = b) = " + fzHexB))
	f.Add([]byte(fzHexA + "  f\n" + fzHexB + "  f\n"))
	f.Add([]byte(fzHexA[:63] + "  f\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		sums, err := ParseSHA256Sums(data)
		if err != nil {
			if !errors.Is(err, ErrBadSums) {
				t.Fatalf("refusal is not ErrBadSums: %v", err)
			}
			if sums != nil {
				t.Fatalf("refused but returned %d entries", len(sums))
			}
			fzOneLine(t, err)
			return
		}
		if len(sums) == 0 {
			t.Fatal("accepted an empty SHA256SUMS")
		}
		if lines := bytes.Count(data, []byte("\n")) + 1; len(sums) > lines {
			t.Fatalf("%d entries from %d lines", len(sums), lines)
		}
		for name, digest := range sums {
			if !fzIsLowerHex64(digest) {
				t.Fatalf("%q: digest %q is not 64 lower-case hex digits", name, digest)
			}
			if name == "" || strings.ContainsAny(name, "\x00\n") {
				t.Fatalf("accepted name %q", name)
			}
			if !bytes.Contains(data, []byte(name)) {
				t.Fatalf("name %q is not in the input", name)
			}
		}
		var canon strings.Builder
		for _, name := range slices.Sorted(maps.Keys(sums)) {
			if strings.HasSuffix(name, "\r") {
				// Only the BSD form can carry a name ending in CR: a line's
				// trailing CR is taken as a CRLF line end.
				canon.WriteString("SHA256 (" + name + ") = " + sums[name] + "\n")
				continue
			}
			canon.WriteString(sums[name] + "  " + name + "\n")
		}
		again, err := ParseSHA256Sums([]byte(canon.String()))
		if err != nil {
			t.Fatalf("canonical form of an accepted file refused: %v\n%s", err, canon.String())
		}
		if !maps.Equal(again, sums) {
			t.Fatalf("round trip changed the entries:\n got %v\nwant %v", again, sums)
		}
	})
}

// fzManifest is a manifest.json as banger-release writes it. issued and
// expires are left out when "".
func fzManifest(issued, expires, latest string, versions ...string) []byte {
	rels := []map[string]string{}
	for _, v := range versions {
		base := "https://github.com/banger-dev/banger/releases/download/" + v + "/"
		rels = append(rels, map[string]string{"version": v, "tarball_url": base + TarballName(v),
			"sha256sums_url": base + "SHA256SUMS", "signature_url": base + "SHA256SUMS.sig", "published_at": "2026-01-01T00:00:00Z"})
	}
	m := map[string]any{"schema_version": ManifestSchemaVersion, "latest_stable": latest, "releases": rels}
	if issued != "" {
		m["issued"] = issued
	}
	if expires != "" {
		m["expires"] = expires
	}
	b, _ := json.Marshal(m)
	return b
}

// fzCheckURL is the manifest's URL rule, checked independently.
func fzCheckURL(t *testing.T, what, s string) {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		t.Fatalf("%s: accepted URL %q is not an absolute http(s) URL without credentials", what, s)
	}
}

// FuzzParseManifest: ParseManifest never panics and refuses with
// ErrBadManifest or ErrUnknownSchema in one line. What it accepts has the
// schema this binary reads, unique versions that are safe as one path
// component (so TarballName is a plain file name), absolute http(s) URLs
// without credentials, a latest_stable that resolves, and survives a JSON
// round trip unchanged.
func FuzzParseManifest(f *testing.F) {
	f.Add(fzManifest("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z", "v1.1.0", "v1.0.0", "v1.1.0", "v1.2.0-rc.1"))
	f.Add(fzManifest("", "", "", "v0.1.0+build_7"))
	f.Add(fzManifest("2026-01-01T00:00:00Z", "2025-01-01T00:00:00Z", ""))
	f.Add(fzManifest("yesterday", "", ""))
	f.Add([]byte(`{"schema_version":1,"latest_stable":"v1","releases":[{"version":"v1","tarball_url":"http://h/t","sha256sums_url":"http://h/s"}]}`))
	f.Add([]byte(`{"schema_version":2,"releases":[]}`))
	f.Add([]byte(`{"schema_version":1,"releases":[{"version":"../x","tarball_url":"http://u:p@h/t","sha256sums_url":"file:///etc"}]}{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest(data)
		if err != nil {
			if !errors.Is(err, ErrBadManifest) && !errors.Is(err, ErrUnknownSchema) {
				t.Fatalf("refusal of an unexpected class: %v", err)
			}
			if m != nil {
				t.Fatal("refused but returned a manifest")
			}
			fzOneLine(t, err)
			return
		}
		fzCheckManifest(t, m)
		out, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := ParseManifest(out)
		if err != nil {
			t.Fatalf("re-encoded manifest refused: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip changed the manifest:\n got %+v\nwant %+v", m2, m)
		}
	})
}

// fzCheckManifest checks what every accepted manifest must be.
func fzCheckManifest(t *testing.T, m *Manifest) {
	t.Helper()
	if m.SchemaVersion != ManifestSchemaVersion {
		t.Fatalf("accepted schema_version %d", m.SchemaVersion)
	}
	seen := map[string]bool{}
	for _, r := range m.Releases {
		v := r.Version
		if v == "" || len(v) > 64 || v == "." || v == ".." || strings.ContainsAny(v, "/\\\x00") || seen[v] {
			t.Fatalf("accepted version %q (seen before: %v)", v, seen[v])
		}
		for _, c := range v {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune(".+_-", c)) {
				t.Fatalf("accepted version %q with %q", v, c)
			}
		}
		seen[v] = true
		if n := r.TarballName(); filepath.Base(n) != n || strings.Contains(n, "/") {
			t.Fatalf("tarball name %q of version %q is not one path component", n, v)
		}
		fzCheckURL(t, v+" tarball_url", r.TarballURL)
		fzCheckURL(t, v+" sha256sums_url", r.SHA256SumsURL)
		if r.SignatureURL != "" {
			fzCheckURL(t, v+" signature_url", r.SignatureURL)
		}
		if got, err := m.Resolve(v); err != nil || !reflect.DeepEqual(got, r) {
			t.Fatalf("Resolve(%q) = %+v, %v", v, got, err)
		}
	}
	if m.LatestStable != "" {
		if r, err := m.Resolve(""); err != nil || r.Version != m.LatestStable {
			t.Fatalf("latest_stable %q does not resolve: %+v, %v", m.LatestStable, r, err)
		}
	} else if _, err := m.Resolve(""); !errors.Is(err, ErrUnknownVersion) {
		t.Fatalf("no latest_stable, yet Resolve(\"\") gave %v", err)
	}
}

// fzSigner is a real P-256 key made by openssl (the same helper the
// signature tests use) plus its private half parsed for fast Go signing.
type fzSigner struct {
	testutil.OpenSSLKey
	priv *ecdsa.PrivateKey
}

func fzNewSigner(tb testing.TB) fzSigner {
	tb.Helper()
	k := testutil.NewOpenSSLKey(tb, "prime256v1")
	raw, err := os.ReadFile(k.Priv)
	if err != nil {
		tb.Fatal(err)
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		tb.Fatalf("no PEM block in %s", k.Priv)
	}
	priv, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		tb.Fatal(err)
	}
	return fzSigner{OpenSSLKey: k, priv: priv}
}

// fzTimes reads a manifest's issued and expires times through its JSON
// form (so the target does not depend on how they are spelt in Go).
func fzTimes(t *testing.T, m *Manifest) (issued, expires time.Time) {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var v struct{ Issued, Expires string }
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	issued, err1 := time.Parse(time.RFC3339, v.Issued)
	expires, err2 := time.Parse(time.RFC3339, v.Expires)
	if err1 != nil || err2 != nil {
		t.Fatalf("accepted a signed manifest with issued %q, expires %q", v.Issued, v.Expires)
	}
	return issued, expires
}

// FuzzVerifyManifest: two manifests, each genuinely signed (the target signs
// what the fuzzer wrote, as a careless publisher or a replaying mirror
// would hand over), verified in turn against one update state, recording.
// VerifyManifest never panics and refuses in one line with a known class.
// An accepted manifest is what ParseManifest makes of the same bytes, obeys
// every manifest rule, carries issued < expires with now before expires,
// and stops verifying when one byte of it changes. Freeze and rollback
// protection: once the first is accepted, the second is accepted only if it
// is not older (issued not earlier, highest version not lower), refused as
// a replay only if it is, and after a strictly newer second, the first is
// refused as a replay; a replay refusal never comes without a manifest
// accepted before it.
func FuzzVerifyManifest(f *testing.F) {
	k := fzNewSigner(f)
	jan := fzManifest("2026-01-01T00:00:00Z", "2026-12-01T00:00:00Z", "v1.1.0", "v1.0.0", "v1.1.0")
	feb := fzManifest("2026-02-01T00:00:00Z", "2026-12-01T00:00:00Z", "v1.2.0", "v1.0.0", "v1.1.0", "v1.2.0")
	hidden := fzManifest("2026-03-01T00:00:00Z", "2026-12-01T00:00:00Z", "v1.0.0", "v1.0.0")
	expired := fzManifest("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z", "v1.1.0", "v1.1.0")
	undated := fzManifest("", "", "v1.1.0", "v1.1.0")
	f.Add(jan, feb)
	f.Add(feb, jan)
	f.Add(feb, hidden)
	f.Add(jan, jan)
	f.Add(expired, jan)
	f.Add(undated, fzManifest("2026-02-01T00:00:00+01:00", "2026-12-01T00:00:00Z", "v0.smoke.0", "v0.smoke.0"))
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

	f.Fuzz(func(t *testing.T, first, second []byte) {
		state := filepath.Join(t.TempDir(), StateFileName)
		check := ManifestCheck{PublicKeyPEM: k.PubPEM, StatePath: state, Record: true, Now: now}
		verify := func(data []byte) (*Manifest, []byte, error) {
			digest := sha256.Sum256(data)
			der, err := ecdsa.SignASN1(rand.Reader, k.priv, digest[:])
			if err != nil {
				t.Fatal(err)
			}
			sig := []byte(base64.StdEncoding.EncodeToString(der))
			m, err := VerifyManifest(data, sig, check)
			if err != nil {
				switch {
				case errors.Is(err, ErrBadManifest), errors.Is(err, ErrUnknownSchema), errors.Is(err, ErrManifestExpired), errors.Is(err, ErrManifestReplay):
				default:
					t.Fatalf("refusal of an unexpected class: %v", err)
				}
				fzOneLine(t, err)
				return nil, sig, err
			}
			parsed, perr := ParseManifest(data)
			if perr != nil || !reflect.DeepEqual(parsed, m) {
				t.Fatalf("VerifyManifest gave %+v, ParseManifest %+v, %v", m, parsed, perr)
			}
			fzCheckManifest(t, m)
			issued, expires := fzTimes(t, m)
			if !issued.Before(expires) || !now.Before(expires) {
				t.Fatalf("accepted a manifest issued %v, expiring %v, at %v", issued, expires, now)
			}
			if len(data) > 0 {
				tampered := bytes.Clone(data)
				tampered[len(data)/2] ^= 0x20
				if _, err := VerifyManifest(tampered, sig, ManifestCheck{PublicKeyPEM: k.PubPEM, Now: now}); !errors.Is(err, trust.ErrBadSignature) {
					t.Fatalf("a changed byte still verifies: %v", err)
				}
			}
			return m, sig, nil
		}

		m1, sig1, err1 := verify(first)
		if errors.Is(err1, ErrManifestReplay) {
			t.Fatalf("a replay refusal with no manifest accepted before: %v", err1)
		}
		m2, _, err2 := verify(second)
		if m1 == nil {
			if errors.Is(err2, ErrManifestReplay) {
				t.Fatalf("a replay refusal with no manifest accepted before: %v", err2)
			}
			return
		}
		// older reports whether b is older than a: issued earlier, or its
		// highest version lower (or gone).
		older := func(a, b *Manifest) bool {
			ia, _ := fzTimes(t, a)
			ib, _ := fzTimes(t, b)
			if ib.Before(ia) {
				return true
			}
			ha, hb := a.HighestVersion(), b.HighestVersion()
			if ha == "" {
				return false
			}
			c, err := CompareVersions(hb, ha)
			return hb == "" || err != nil || c < 0
		}
		if m2 != nil && older(m1, m2) {
			t.Fatalf("accepted a manifest older than one accepted before it:\nfirst  %s\nsecond %s", first, second)
		}
		if errors.Is(err2, ErrManifestReplay) && !older(m1, fzParsed(t, second)) {
			t.Fatalf("refused as a replay (%v) a manifest that is not older:\nfirst  %s\nsecond %s", err2, first, second)
		}
		if m2 != nil {
			i1, _ := fzTimes(t, m1)
			i2, _ := fzTimes(t, m2)
			if i2.After(i1) {
				if _, err := VerifyManifest(first, sig1, check); !errors.Is(err, ErrManifestReplay) {
					t.Fatalf("after a newer manifest, the older one is still accepted: %v", err)
				}
			}
		}
	})
}

// fzParsed parses a manifest the state refused, to compare it.
func fzParsed(t *testing.T, data []byte) *Manifest {
	t.Helper()
	m, err := ParseManifest(data)
	if err != nil {
		t.Fatalf("refused as a replay, yet it does not parse: %v", err)
	}
	return m
}

// fzEntry is one tar entry of a fuzz seed.
type fzEntry struct {
	name, link string
	typ        byte
	body       string
	size       int64 // header size when >= 0 and different from len(body)
}

func fzReg(name, body string) fzEntry {
	return fzEntry{name: name, typ: tar.TypeReg, body: body, size: -1}
}

func fzTar(tb testing.TB, ents ...fzEntry) []byte {
	tb.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: 0o755, ModTime: time.Unix(1700000000, 0)}
		if e.typ == tar.TypeReg {
			hdr.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			tb.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func fzGzip(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

// fzReleaseTar is a well-formed release: every binary, in release order.
func fzReleaseTar(tb testing.TB) []byte {
	var ents []fzEntry
	for _, b := range ReleaseBinaries {
		ents = append(ents, fzReg(b, "#!/bin/sh\necho "+b+" v1.2.3\n"))
	}
	return fzTar(tb, ents...)
}

// fzTree maps every path under root (relative, slash-separated) to a short
// description: type, and for regular files their content.
func fzTree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		desc := d.Type().String()
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += ":" + string(b)
		}
		out[filepath.ToSlash(rel)] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// FuzzStage: Stage never panics and only ever writes inside its stage dir.
// tarball is either the file as is (gz false: the gzip layer is fuzzed too)
// or a tar that the target gzips (gz true: the tar layer is fuzzed). On a
// refusal (always ErrUnsafeArchive) the stage dir is gone; on success it
// holds exactly the expected binaries as regular 0755 files, each byte for
// byte the archive's entry and within MaxStagedBytes. Either way, nothing
// beside the stage dir changed.
func FuzzStage(f *testing.F) {
	old := MaxStagedBytes
	MaxStagedBytes = 1 << 20 // keep a hostile input from filling the disk
	f.Cleanup(func() { MaxStagedBytes = old })

	good := fzReleaseTar(f)
	f.Add(good, true)
	f.Add(fzGzip(good), false)
	var ents []fzEntry
	for _, b := range ReleaseBinaries {
		ents = append(ents, fzReg(b, "x"))
	}
	f.Add(fzTar(f, append(ents, fzReg("../outside/escape", "x"))...), true)
	f.Add(fzTar(f, append(ents[:3:3], fzEntry{name: ReleaseBinaries[3], typ: tar.TypeSymlink, link: "../outside/keep"})...), true)
	f.Add(fzTar(f, append(ents[:3:3], fzEntry{name: ReleaseBinaries[3], typ: tar.TypeLink, link: "../outside/keep"})...), true)
	f.Add(fzTar(f, append(ents[:3:3], fzReg("/"+ReleaseBinaries[3], "x"))...), true)
	f.Add(fzTar(f, append(ents[:3:3], fzEntry{name: "bin/", typ: tar.TypeDir}, fzReg("bin/"+ReleaseBinaries[3], "x"))...), true)
	f.Add(fzTar(f, append(ents, ents[0])...), true)
	f.Add(good[:len(good)-1024], true)
	f.Add([]byte("not gzip"), false)

	f.Fuzz(func(t *testing.T, tarball []byte, gz bool) {
		if gz {
			tarball = fzGzip(tarball)
		}
		root := t.TempDir()
		tarPath := filepath.Join(root, "release.tar.gz")
		if err := os.WriteFile(tarPath, tarball, 0o600); err != nil {
			t.Fatal(err)
		}
		outside := filepath.Join(root, "outside")
		if err := os.Mkdir(outside, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(outside, "keep"), []byte("keep"), 0o644); err != nil {
			t.Fatal(err)
		}
		before := fzTree(t, outside)
		stage := filepath.Join(root, "updates", "stage")

		staged, err := Stage(tarPath, stage, ReleaseBinaries)

		if after := fzTree(t, outside); !maps.Equal(before, after) {
			t.Fatalf("Stage changed a directory beside the stage dir:\nbefore %v\n after %v", before, after)
		}
		top, _ := os.ReadDir(root)
		for _, e := range top {
			if n := e.Name(); n != "release.tar.gz" && n != "outside" && n != "updates" {
				t.Fatalf("Stage created %s beside the stage dir", n)
			}
		}
		if ups, _ := os.ReadDir(filepath.Join(root, "updates")); len(ups) > 1 || len(ups) == 1 && ups[0].Name() != "stage" {
			t.Fatalf("Stage created %v beside the stage dir", ups)
		}
		if err != nil {
			if !errors.Is(err, ErrUnsafeArchive) {
				t.Fatalf("refusal is not ErrUnsafeArchive: %v", err)
			}
			fzOneLine(t, err)
			if staged != nil {
				t.Fatalf("refused but returned %v", staged)
			}
			if _, serr := os.Lstat(stage); !errors.Is(serr, fs.ErrNotExist) {
				t.Fatalf("refused (%v) but left the stage dir behind: %v", err, serr)
			}
			return
		}

		// Independently read what the archive holds.
		want := map[string]string{}
		zr, err := gzip.NewReader(bytes.NewReader(tarball))
		if err != nil {
			t.Fatalf("Stage accepted what gzip refuses: %v", err)
		}
		tr := tar.NewReader(zr)
		for {
			hdr, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("Stage accepted a tar archive/tar refuses: %v", err)
			}
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			want[hdr.Name] = string(b)
		}
		if len(staged) != len(ReleaseBinaries) || len(want) != len(ReleaseBinaries) {
			t.Fatalf("staged %v from an archive of %d entries, want exactly %v", staged, len(want), ReleaseBinaries)
		}
		var total int64
		for _, name := range ReleaseBinaries {
			p := staged[name]
			if p != filepath.Join(stage, name) {
				t.Fatalf("%s staged at %q, not directly in %s", name, p, stage)
			}
			fi, err := os.Lstat(p)
			if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o755 {
				t.Fatalf("%s: %v, %v; want a regular 0755 file", p, fi.Mode(), err)
			}
			b, err := os.ReadFile(p)
			if err != nil || string(b) != want[name] {
				t.Fatalf("%s holds %q, the archive %q (%v)", p, b, want[name], err)
			}
			total += fi.Size()
		}
		if total > MaxStagedBytes {
			t.Fatalf("staged %d bytes, over the %d-byte cap", total, MaxStagedBytes)
		}
		ents, err := os.ReadDir(stage)
		if err != nil || len(ents) != len(ReleaseBinaries) {
			t.Fatalf("stage dir holds %v (%v), want exactly %v", ents, err, ReleaseBinaries)
		}
	})
}
