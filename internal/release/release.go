package release

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/digest"
	"github.com/banger-dev/banger/internal/sysexec"
	"github.com/banger-dev/banger/internal/trust"
	"github.com/banger-dev/banger/internal/updater"
)

const buildinfoPkg = "github.com/banger-dev/banger/internal/buildinfo"

// File names inside a release's version directory.
const (
	SumsFile      = "SHA256SUMS"
	SignatureFile = "SHA256SUMS.sig"
	ManifestFile  = "manifest.json"
)

// Options describe one release to build.
type Options struct {
	Version  string   // vMAJOR.MINOR.PATCH[-PRE]; required
	OutDir   string   // release tree root; created if missing
	KeyPath  string   // ECDSA P-256 private key (PEM) for openssl
	BaseURL  string   // URL OutDir is served at; release URLs are BaseURL/<version>/<file>
	Commit   string   // stamped commit; default `git rev-parse HEAD` in RepoDir, else "unknown"
	Binaries []string // default updater.ReleaseBinaries
	Latest   bool     // set latest_stable to Version

	// ManifestIn is an existing manifest to merge into. Empty: OutDir's
	// manifest.json if there is one, else a new manifest.
	ManifestIn string
	// Prebuilt packages <Prebuilt>/<name> for each binary instead of building.
	Prebuilt string
	// Cover builds with -cover (coverage-instrumented binaries for smoke runs).
	Cover bool
	// RepoDir is the module root to build in; default ".".
	RepoDir string
	// VerifyPub, if set, is a public key file the new signature must also
	// verify with (e.g. internal/trust/release-key.pub), so a release signed
	// with the wrong key is never published.
	VerifyPub string
	// BuiltAt stamps buildinfo.BuiltAt, published_at and the tar mtimes.
	// Zero: SOURCE_DATE_EPOCH if set, else now.
	BuiltAt time.Time
	// ManifestExpiresIn is how long the signed manifest stays valid; 0 means
	// DefaultManifestExpiry. ManifestIssued stamps it; zero means now (not
	// SOURCE_DATE_EPOCH: expiry is about when it is published).
	ManifestExpiresIn time.Duration
	ManifestIssued    time.Time
	// GoCmd and OpenSSL are the tools run; defaults "go" and "openssl".
	GoCmd   string
	OpenSSL string
	// Log receives progress lines; nil discards them.
	Log io.Writer
}

// Result is what Build wrote.
type Result struct {
	Release       updater.Release
	Dir           string // OutDir/<version>
	TarballPath   string
	TarballSHA256 string
	SumsPath      string
	SignaturePath string
	ManifestPath  string
	// ManifestSigPath is manifest.json.sig, the manifest's signature.
	ManifestSigPath string
}

// Build builds, packages, signs and publishes (into OutDir) one release.
func Build(ctx context.Context, o Options) (*Result, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, err
	}
	signer, err := newManifestSigner(ctx, o.OpenSSL, o.KeyPath, o.VerifyPub, o.ManifestIssued, o.ManifestExpiresIn)
	if err != nil {
		return nil, err
	}
	pubPEM := signer.pubPEM
	man, err := o.loadManifest(pubPEM)
	if err != nil {
		return nil, err
	}
	if slices.Contains(man.Versions(), o.Version) {
		return nil, fmt.Errorf("manifest already lists %s; versions are never reused", o.Version)
	}
	verDir := filepath.Join(o.OutDir, o.Version)
	if _, err := os.Lstat(verDir); err == nil {
		return nil, fmt.Errorf("%s already exists; versions are never reused", verDir)
	}

	work, err := os.MkdirTemp(o.OutDir, "."+o.Version+".tmp-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	stage := filepath.Join(work, o.Version)
	if err := os.Mkdir(stage, 0o755); err != nil {
		return nil, err
	}

	bins, err := o.binaries(ctx, work)
	if err != nil {
		return nil, err
	}
	tarName := updater.TarballName(o.Version)
	tarPath := filepath.Join(stage, tarName)
	if err := writeTarball(tarPath, o.Binaries, bins, o.BuiltAt); err != nil {
		return nil, fmt.Errorf("write %s: %w", tarName, err)
	}
	sum, err := digest.FileSHA256(tarPath)
	if err != nil {
		return nil, err
	}
	sums := []byte(sum + "  " + tarName + "\n")
	sumsPath := filepath.Join(stage, SumsFile)
	if err := os.WriteFile(sumsPath, sums, 0o644); err != nil {
		return nil, err
	}
	sig, err := signFile(ctx, o.OpenSSL, o.KeyPath, SumsFile, sumsPath, sums, pubPEM, signer.verifyPEM, o.VerifyPub)
	if err != nil {
		return nil, err
	}
	sigPath := filepath.Join(stage, SignatureFile)
	if err := os.WriteFile(sigPath, sig, 0o644); err != nil {
		return nil, err
	}

	rel := updater.Release{
		Version:       o.Version,
		TarballURL:    joinURL(o.BaseURL, o.Version, tarName),
		SHA256SumsURL: joinURL(o.BaseURL, o.Version, SumsFile),
		SignatureURL:  joinURL(o.BaseURL, o.Version, SignatureFile),
		PublishedAt:   o.BuiltAt.UTC().Format(time.RFC3339),
	}
	man.Releases = append(man.Releases, rel)
	if o.Latest {
		man.LatestStable = o.Version
	}
	manBytes, manSig, err := signer.sign(ctx, work, man)
	if err != nil {
		return nil, fmt.Errorf("the merged manifest: %w", err)
	}

	if err := os.Rename(stage, verDir); err != nil {
		return nil, err
	}
	manPath, manSigPath, err := placeManifest(o.OutDir, manBytes, manSig)
	if err != nil {
		return nil, err
	}
	o.logf("release %s: %s (sha256 %s)", o.Version, filepath.Join(verDir, tarName), sum)
	o.logf("manifest: %s (latest_stable %q, %d releases, expires %s)", manPath, man.LatestStable, len(man.Releases), man.Expires)
	return &Result{
		Release:         rel,
		Dir:             verDir,
		TarballPath:     filepath.Join(verDir, tarName),
		TarballSHA256:   sum,
		SumsPath:        filepath.Join(verDir, SumsFile),
		SignaturePath:   filepath.Join(verDir, SignatureFile),
		ManifestPath:    manPath,
		ManifestSigPath: manSigPath,
	}, nil
}

// Keygen writes a new ECDSA P-256 private key to keyPath (0600, SEC1 PEM,
// `openssl ecparam -name prime256v1 -genkey -noout`) and its public key to
// pubPath (PEM PKIX, `openssl ec -pubout`). pubPath "" means keyPath with its
// extension replaced by ".pub". Existing files are never overwritten.
func Keygen(ctx context.Context, openssl, keyPath, pubPath string) (string, error) {
	if openssl == "" {
		openssl = "openssl"
	}
	if keyPath == "" {
		return "", errors.New("keygen: no key path")
	}
	if pubPath == "" {
		pubPath = PubPathFor(keyPath)
	}
	if pubPath == keyPath {
		return "", fmt.Errorf("keygen: public key path %s is the private key path", pubPath)
	}
	if _, err := os.Lstat(pubPath); err == nil {
		return "", fmt.Errorf("keygen: %s already exists; refusing to overwrite", pubPath)
	}
	key, err := run(ctx, "", nil, openssl, "ecparam", "-name", "prime256v1", "-genkey", "-noout")
	if err != nil {
		return "", fmt.Errorf("keygen: %w", err)
	}
	if err := writeNew(keyPath, key, 0o600); err != nil {
		return "", fmt.Errorf("keygen: %w", err)
	}
	pub, err := run(ctx, "", nil, openssl, "ec", "-in", keyPath, "-pubout")
	if err == nil {
		_, err = trust.KeyFingerprint(pub)
	}
	if err == nil {
		err = writeNew(pubPath, pub, 0o644)
	}
	if err != nil {
		os.Remove(keyPath)
		return "", fmt.Errorf("keygen: %w", err)
	}
	return pubPath, nil
}

// PubPathFor is the default public key path for a private key path:
// key.pem → key.pub.
func PubPathFor(keyPath string) string {
	return strings.TrimSuffix(keyPath, filepath.Ext(keyPath)) + ".pub"
}

var testVersionRE = regexp.MustCompile(`^v[0-9]+\.[A-Za-z0-9][A-Za-z0-9.-]{0,40}$`)

func (o *Options) defaults() error {
	// Real releases are semver; test releases (v0.smoke.0) only need a safe
	// name, and 'banger update' orders non-semver versions only with --to.
	if !updater.IsSemver(o.Version) && !testVersionRE.MatchString(o.Version) {
		return fmt.Errorf("--version %q is not vMAJOR.MINOR.PATCH[-PRE] (or a test name like v0.smoke.0)", o.Version)
	}
	if strings.Contains(o.Version, "+") {
		return fmt.Errorf("--version %q: build metadata (+...) is not allowed in a release version", o.Version)
	}
	if o.OutDir == "" {
		return errors.New("--out is required")
	}
	if o.KeyPath == "" {
		return errors.New("--key is required")
	}
	if _, err := os.Stat(o.KeyPath); err != nil {
		return fmt.Errorf("--key: %w", err)
	}
	u, err := url.Parse(o.BaseURL)
	if o.BaseURL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return fmt.Errorf("--base-url %q is not an absolute http(s) URL", o.BaseURL)
	}
	if len(o.Binaries) == 0 {
		o.Binaries = append([]string(nil), updater.ReleaseBinaries...)
	}
	seen := map[string]bool{}
	for _, b := range o.Binaries {
		if b == "" || b == "." || b == ".." || strings.ContainsAny(b, "/\\ \t\n\x00") {
			return fmt.Errorf("--binaries: %q is not a plain file name", b)
		}
		if seen[b] {
			return fmt.Errorf("--binaries: %q listed twice", b)
		}
		seen[b] = true
	}
	if o.Cover && o.Prebuilt != "" {
		return errors.New("--cover applies to a build; it cannot be combined with --prebuilt")
	}
	if o.RepoDir == "" {
		o.RepoDir = "."
	}
	if o.GoCmd == "" {
		o.GoCmd = "go"
	}
	if o.OpenSSL == "" {
		o.OpenSSL = "openssl"
	}
	o.BuiltAt, err = stampTime(o.BuiltAt)
	return err
}

// stampTime is t, or (when zero) $SOURCE_DATE_EPOCH or now, in UTC whole
// seconds: the time a release or catalog entry is stamped with.
func stampTime(t time.Time) (time.Time, error) {
	if t.IsZero() {
		t = time.Now()
		if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return t, fmt.Errorf("SOURCE_DATE_EPOCH %q is not a number", s)
			}
			t = time.Unix(n, 0)
		}
	}
	return t.UTC().Truncate(time.Second), nil
}

// signFile signs the file at path (whose content is blob) with openssl, the
// way cosign does (base64 of an ECDSA signature over its SHA-256), and checks
// the result with the signing key's public half and, if given, verifyPEM
// (the key clients will use, from verifyName).
func signFile(ctx context.Context, openssl, keyPath, what, path string, blob, pubPEM, verifyPEM []byte, verifyName string) ([]byte, error) {
	der, err := run(ctx, "", nil, openssl, "dgst", "-sha256", "-sign", keyPath, path)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", what, err)
	}
	sig := []byte(base64.StdEncoding.EncodeToString(der))
	if err := trust.Verify(blob, sig, pubPEM, "blob"); err != nil {
		return nil, fmt.Errorf("self-check of the new signature: %w", err)
	}
	if verifyPEM != nil {
		if err := trust.Verify(blob, sig, verifyPEM, "blob"); err != nil {
			return nil, fmt.Errorf("signature does not verify with %s (signing key and published key differ?): %w", verifyName, err)
		}
	}
	return sig, nil
}

func (o *Options) logf(format string, args ...any) {
	if o.Log != nil {
		fmt.Fprintf(o.Log, format+"\n", args...)
	}
}

// loadManifest reads the manifest to merge into (ManifestIn, else OutDir's,
// else a new one); a signature beside it must verify with pubPEM.
func (o *Options) loadManifest(pubPEM []byte) (*updater.Manifest, error) {
	path := o.ManifestIn
	if path == "" {
		path = filepath.Join(o.OutDir, ManifestFile)
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return &updater.Manifest{SchemaVersion: updater.ManifestSchemaVersion, Releases: []updater.Release{}}, nil
		}
	}
	return loadManifestAt(path, path+updater.ManifestSignatureSuffix, pubPEM)
}

// signingPublicKey derives the signing key's public half and checks it is
// a P-256 key the updater accepts.
func signingPublicKey(ctx context.Context, openssl, keyPath string) ([]byte, error) {
	pub, err := run(ctx, "", nil, openssl, "ec", "-in", keyPath, "-pubout")
	if err != nil {
		return nil, fmt.Errorf("--key %s: %w", keyPath, err)
	}
	if _, err := trust.KeyFingerprint(pub); err != nil {
		return nil, fmt.Errorf("--key %s: %w", keyPath, err)
	}
	return pub, nil
}

func jsonIndent(v any) ([]byte, error) { return json.MarshalIndent(v, "", "  ") }

// binaries returns name → path of each binary to package, building them into
// work/bin unless Prebuilt is set.
func (o *Options) binaries(ctx context.Context, work string) (map[string]string, error) {
	out := map[string]string{}
	if o.Prebuilt != "" {
		for _, b := range o.Binaries {
			p := filepath.Join(o.Prebuilt, b)
			fi, err := os.Stat(p)
			if err != nil {
				return nil, fmt.Errorf("--prebuilt: %w", err)
			}
			if !fi.Mode().IsRegular() {
				return nil, fmt.Errorf("--prebuilt: %s is not a regular file", p)
			}
			out[b] = p
		}
		return out, nil
	}
	commit := o.Commit
	if commit == "" {
		c, err := run(ctx, o.RepoDir, nil, "git", "rev-parse", "HEAD")
		if err != nil {
			commit = "unknown"
			o.logf("warning: no --commit and git rev-parse failed (%v); stamping commit %q", err, commit)
		} else {
			commit = strings.TrimSpace(string(c))
		}
	}
	binDir := filepath.Join(work, "bin")
	if err := os.Mkdir(binDir, 0o755); err != nil {
		return nil, err
	}
	for _, b := range o.Binaries {
		dst, err := filepath.Abs(filepath.Join(binDir, b))
		if err != nil {
			return nil, err
		}
		args := BuildArgs(o.Version, commit, o.BuiltAt, o.Cover, dst, b)
		o.logf("build %s: %s %s", b, o.GoCmd, strings.Join(args, " "))
		env := []string{"GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0"}
		if _, err := run(ctx, o.RepoDir, env, o.GoCmd, args...); err != nil {
			return nil, fmt.Errorf("build %s: %w", b, err)
		}
		out[b] = dst
	}
	return out, nil
}

// agentPkg holds the guest agent's version variable.
const agentPkg = "github.com/banger-dev/banger/internal/agent"

// BuildArgs is the `go` argv that builds one release binary.
func BuildArgs(version, commit string, builtAt time.Time, cover bool, out, name string) []string {
	ldflags := fmt.Sprintf("-X %s.Version=%s -X %s.Commit=%s -X %s.BuiltAt=%s -X %s.Version=%s",
		buildinfoPkg, version, buildinfoPkg, commit, buildinfoPkg, builtAt.UTC().Format(time.RFC3339), agentPkg, version)
	args := []string{"build", "-trimpath", "-buildvcs=false"}
	if cover {
		args = append(args, "-cover")
	}
	return append(args, "-ldflags", ldflags, "-o", out, "./cmd/"+name)
}

// writeTarball writes a gzip'd tar holding exactly names, flat, as regular
// 0755 files owned by 0:0 with mtime builtAt: the same inputs give the same
// bytes.
func writeTarball(dst string, names []string, paths map[string]string, builtAt time.Time) (err error) {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	zw, err := gzip.NewWriterLevel(f, gzip.BestCompression)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(zw)
	for _, n := range names {
		if err := addFile(tw, n, paths[n], builtAt); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return f.Sync()
}

func addFile(tw *tar.Writer, name, path string, mtime time.Time) error {
	src, err := os.Open(path)
	if err != nil {
		return err
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     name,
		Mode:     0o755,
		Size:     fi.Size(),
		ModTime:  mtime,
		Format:   tar.FormatUSTAR,
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	n, err := io.Copy(tw, src)
	if err != nil {
		return err
	}
	if n != fi.Size() {
		return fmt.Errorf("%s changed size while being packaged", path)
	}
	return nil
}

func joinURL(base string, elem ...string) string {
	s, err := url.JoinPath(base, elem...)
	if err != nil { // base was validated in defaults
		panic(err)
	}
	return s
}

func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// run executes name with args (never a shell) in dir, with extra environment
// entries appended, and returns its stdout. A failure names the command and
// carries the tail of its stderr, on one line (a *sysexec.Error).
func run(ctx context.Context, dir string, env []string, name string, args ...string) ([]byte, error) {
	res, err := sysexec.Run(ctx, sysexec.Cmd{Path: name, Args: args, Dir: dir, ExtraEnv: env})
	if err != nil {
		return nil, err
	}
	return res.Stdout, nil
}
