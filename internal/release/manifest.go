package release

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/atomicfile"
	"github.com/banger-dev/banger/internal/trust"
	"github.com/banger-dev/banger/internal/updater"
)

// ManifestSigFile is the manifest's signature, beside it (the
// SHA256SUMS.sig format: base64 of a DER ECDSA signature over its bytes).
const ManifestSigFile = ManifestFile + updater.ManifestSignatureSuffix

// Manifest expiry: how long a signed manifest stays valid. Clients refuse
// an expired manifest, so the publisher re-signs it (`banger-release
// manifest`) well before that, with or without a new release.
const (
	DefaultManifestExpiry = 30 * 24 * time.Hour
	MaxManifestExpiry     = 366 * 24 * time.Hour
)

// ParseExpiry parses an --expires-in value: a number of days ("30d") or a
// Go duration ("720h"), more than zero and at most MaxManifestExpiry.
func ParseExpiry(s string) (time.Duration, error) {
	var d time.Duration
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil {
			return 0, fmt.Errorf("--expires-in %q is not a number of days like 30d or a duration like 720h", s)
		}
		d = time.Duration(days) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("--expires-in %q is not a number of days like 30d or a duration like 720h", s)
		}
	}
	if d <= 0 || d > MaxManifestExpiry {
		return 0, fmt.Errorf("--expires-in %q is out of range (more than 0, at most %d days)", s, int(MaxManifestExpiry/(24*time.Hour)))
	}
	return d, nil
}

// loadManifestAt reads the manifest at path for a merge or a re-sign. If
// its signature file exists it must verify with pubPEM (the signing key's
// public half): a manifest changed by hand, or signed by another key, is
// not silently re-signed; remove the .sig to adopt it deliberately. A
// manifest without a .sig (what an older banger-release wrote) is adopted.
func loadManifestAt(path, sigPath string, pubPEM []byte) (*updater.Manifest, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	sig, err := os.ReadFile(sigPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("manifest signature: %w", err)
	default:
		if err := trust.Verify(data, sig, pubPEM, "blob"); err != nil {
			return nil, fmt.Errorf("%s does not verify with the signing key (%v): it was changed by hand or signed with another key; remove %s to adopt it deliberately", path, err, sigPath)
		}
	}
	m, err := updater.ParseManifest(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if m.Releases == nil {
		m.Releases = []updater.Release{}
	}
	return m, nil
}

// manifestSigner dates, signs and checks a manifest.
type manifestSigner struct {
	openssl, keyPath string
	pubPEM           []byte
	verifyPEM        []byte
	verifyName       string
	issued           time.Time
	expiresIn        time.Duration
}

// sign sets man's issued and expires, writes it into work (for openssl to
// read) and returns its bytes and signature, after checking them with the
// client's own verifier (updater.VerifyManifest).
func (s *manifestSigner) sign(ctx context.Context, work string, man *updater.Manifest) (data, sig []byte, err error) {
	if man.Issued != "" {
		if prev, err := time.Parse(time.RFC3339, man.Issued); err == nil && s.issued.Before(prev) {
			return nil, nil, fmt.Errorf("the manifest was last issued at %s, later than now (%s): clients would refuse the new one as a replay; check this machine's clock",
				man.Issued, s.issued.Format(time.RFC3339))
		}
	}
	man.Issued = s.issued.Format(time.RFC3339)
	man.Expires = s.issued.Add(s.expiresIn).Format(time.RFC3339)
	if data, err = marshalManifest(man); err != nil {
		return nil, nil, err
	}
	if _, err := updater.ParseManifest(data); err != nil {
		return nil, nil, fmt.Errorf("the manifest would not parse: %w", err)
	}
	p := filepath.Join(work, ManifestFile)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		return nil, nil, err
	}
	if sig, err = signFile(ctx, s.openssl, s.keyPath, ManifestFile, p, data, s.pubPEM, s.verifyPEM, s.verifyName); err != nil {
		return nil, nil, err
	}
	if _, err := updater.VerifyManifest(data, sig, updater.ManifestCheck{PublicKeyPEM: s.pubPEM, Now: s.issued}); err != nil {
		return nil, nil, fmt.Errorf("self-check of the signed manifest: %w", err)
	}
	return data, sig, nil
}

// placeManifest replaces outDir's manifest.json, then manifest.json.sig,
// each atomically. Between the two renames a client sees a manifest and a
// signature that do not match and refuses; it never sees an unsigned change.
func placeManifest(outDir string, data, sig []byte) (manPath, sigPath string, err error) {
	manPath, sigPath = filepath.Join(outDir, ManifestFile), filepath.Join(outDir, ManifestSigFile)
	if err := atomicfile.WriteFile(manPath, data, 0o644); err != nil {
		return "", "", err
	}
	if err := atomicfile.WriteFile(sigPath, sig, 0o644); err != nil {
		return "", "", err
	}
	return manPath, sigPath, nil
}

func marshalManifest(m *updater.Manifest) ([]byte, error) {
	b, err := jsonIndent(m)
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// ManifestOptions describe a re-sign of an existing manifest.
type ManifestOptions struct {
	OutDir  string // release tree holding manifest.json; required
	KeyPath string // ECDSA P-256 private key (PEM)
	// ManifestIn is the manifest to re-sign; empty means OutDir/manifest.json.
	ManifestIn string
	// ExpiresIn is how long the new signature is valid; 0 means DefaultManifestExpiry.
	ExpiresIn time.Duration
	// Issued stamps the manifest; zero means now (never SOURCE_DATE_EPOCH:
	// expiry is about when it is published).
	Issued    time.Time
	VerifyPub string
	OpenSSL   string
	Log       io.Writer
}

// ManifestResult is what ResignManifest wrote.
type ManifestResult struct {
	ManifestPath, SignaturePath string
	Issued, Expires             string
}

// ResignManifest re-dates and re-signs a release tree's manifest without
// adding a release: run it well before the manifest expires (say weekly,
// with the default 30 days), or every host refuses to update.
func ResignManifest(ctx context.Context, o ManifestOptions) (*ManifestResult, error) {
	if o.OutDir == "" {
		return nil, errors.New("--out is required")
	}
	if o.KeyPath == "" {
		return nil, errors.New("--key is required")
	}
	if o.OpenSSL == "" {
		o.OpenSSL = "openssl"
	}
	s, err := newManifestSigner(ctx, o.OpenSSL, o.KeyPath, o.VerifyPub, o.Issued, o.ExpiresIn)
	if err != nil {
		return nil, err
	}
	in, inSig := o.ManifestIn, o.ManifestIn+updater.ManifestSignatureSuffix
	if in == "" {
		in, inSig = filepath.Join(o.OutDir, ManifestFile), filepath.Join(o.OutDir, ManifestSigFile)
	}
	man, err := loadManifestAt(in, inSig, s.pubPEM)
	if err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp(o.OutDir, ".manifest.tmp-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	data, sig, err := s.sign(ctx, work, man)
	if err != nil {
		return nil, err
	}
	mp, sp, err := placeManifest(o.OutDir, data, sig)
	if err != nil {
		return nil, err
	}
	if o.Log != nil {
		fmt.Fprintf(o.Log, "manifest: %s re-signed (issued %s, expires %s, %d releases)\n", mp, man.Issued, man.Expires, len(man.Releases))
	}
	return &ManifestResult{ManifestPath: mp, SignaturePath: sp, Issued: man.Issued, Expires: man.Expires}, nil
}

// newManifestSigner checks the key (and --verify-pub) and the expiry.
func newManifestSigner(ctx context.Context, openssl, keyPath, verifyPub string, issued time.Time, expiresIn time.Duration) (*manifestSigner, error) {
	if expiresIn == 0 {
		expiresIn = DefaultManifestExpiry
	}
	if expiresIn < 0 || expiresIn > MaxManifestExpiry {
		return nil, fmt.Errorf("manifest expiry %v is out of range (more than 0, at most %v)", expiresIn, MaxManifestExpiry)
	}
	if issued.IsZero() {
		issued = time.Now()
	}
	pub, err := signingPublicKey(ctx, openssl, keyPath)
	if err != nil {
		return nil, err
	}
	s := &manifestSigner{openssl: openssl, keyPath: keyPath, pubPEM: pub, verifyName: verifyPub,
		issued: issued.UTC().Truncate(time.Second), expiresIn: expiresIn}
	if verifyPub != "" {
		if s.verifyPEM, err = os.ReadFile(verifyPub); err != nil {
			return nil, err
		}
	}
	return s, nil
}

const manifestUsage = `banger-release manifest re-signs a release tree's manifest.json with a new
issued time and expiry, without adding a release. Clients refuse an expired
manifest: run this well before it expires (weekly with the default 30 days).

  banger-release manifest --out DIR --key key.pem [--expires-in 30d]
                 [--manifest-in manifest.json] [--verify-pub release-key.pub]

Writes DIR/manifest.json and DIR/manifest.json.sig. See docs/release-process.md.

Flags:
`

// ManifestMain is `banger-release manifest`; it returns the exit code: 0
// done, 1 failed, 2 bad usage.
func ManifestMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("banger-release manifest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, manifestUsage)
		fs.PrintDefaults()
	}
	var o ManifestOptions
	var expires string
	fs.StringVar(&o.OutDir, "out", "", "release tree `dir` holding manifest.json")
	fs.StringVar(&o.KeyPath, "key", "", "ECDSA P-256 private key `file` (PEM) to sign with")
	fs.StringVar(&o.ManifestIn, "manifest-in", "", "manifest `file` to re-sign (default: DIR/manifest.json)")
	fs.StringVar(&expires, "expires-in", "30d", "how long the signature stays valid (`30d`, 720h; at most 366d)")
	fs.StringVar(&o.VerifyPub, "verify-pub", "", "public key `file` the signature must also verify with")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "banger-release manifest: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	var err error
	if o.ExpiresIn, err = ParseExpiry(expires); err != nil {
		fmt.Fprintf(stderr, "banger-release manifest: %v\n", err)
		return 2
	}
	o.Log = stderr
	res, err := ResignManifest(ctx, o)
	if err != nil {
		fmt.Fprintf(stderr, "banger-release manifest: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s\n%s\n", res.ManifestPath, res.SignaturePath)
	return 0
}
