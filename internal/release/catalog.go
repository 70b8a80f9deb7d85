package release

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/catalog"
	"github.com/banger-dev/banger/internal/trust"
)

// CatalogOptions describe one bundle to publish into a catalog directory.
type CatalogOptions struct {
	Kind    catalog.Kind // image or kernel; required
	Name    string       // entry name; required
	OutDir  string       // catalog directory (index.json, index.json.sig, bundles); created if missing
	KeyPath string       // ECDSA P-256 private key (PEM) for openssl
	// FromDir holds the files: rootfs.ext4 for an image; vmlinux and
	// optionally initrd.img, vmlinuz and a modules/ directory for a kernel.
	FromDir       string
	Kernel        string // image: the kernel catalog name it boots with
	KernelVersion string // kernel: uname -r; default read from vmlinux's banner
	Version       string // default: CreatedAt as YYYYMMDD.HHMMSS
	Description   string
	Distro        string // default "debian"
	// VerifyPub, if set, is a public key file the new index signature must
	// also verify with (e.g. internal/trust/release-key.pub).
	VerifyPub string
	// CreatedAt stamps the manifest and generated_at. Zero:
	// SOURCE_DATE_EPOCH if set, else now.
	CreatedAt time.Time
	OpenSSL   string // default "openssl"
	Log       io.Writer
}

// CatalogResult is what PublishCatalog wrote.
type CatalogResult struct {
	Entry         catalog.Entry
	BundlePath    string
	IndexPath     string
	SignaturePath string
	Replaced      bool // an entry of the same name was replaced
}

// PublishCatalog packs one bundle from o.FromDir into
// o.OutDir/<sha256>.tar.zst, merges its entry into o.OutDir/index.json
// (replacing an entry of the same name; creating the index if missing) and
// signs the index into index.json.sig, self-checking the signature with the
// key's public half (and VerifyPub). An existing index must be of the same
// kind and, if it has a signature, verify with the signing key. Older
// bundles are left in place: clients holding the previous index may still
// be fetching them.
func PublishCatalog(ctx context.Context, o CatalogOptions) (*CatalogResult, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	pubPEM, err := signingPublicKey(ctx, o.OpenSSL, o.KeyPath)
	if err != nil {
		return nil, err
	}
	var verifyPEM []byte
	if o.VerifyPub != "" {
		if verifyPEM, err = os.ReadFile(o.VerifyPub); err != nil {
			return nil, fmt.Errorf("--verify-pub: %w", err)
		}
		// Fail before writing anything; the signature is checked with it
		// again below.
		want, err := trust.KeyFingerprint(verifyPEM)
		if err != nil {
			return nil, fmt.Errorf("--verify-pub %s: %w", o.VerifyPub, err)
		}
		if have, _ := trust.KeyFingerprint(pubPEM); have != want {
			return nil, fmt.Errorf("--key %s (%s) does not verify with --verify-pub %s (%s): signing key and published key differ", o.KeyPath, have, o.VerifyPub, want)
		}
	}
	files, modulesDir, err := o.inputs()
	if err != nil {
		return nil, err
	}
	if o.Kind == catalog.KindKernel && o.KernelVersion == "" {
		if v, err := kernelVersionOf(files[catalog.VmlinuxFile]); err == nil && v != "" {
			o.KernelVersion = v
			o.logf("kernel version %s (from the vmlinux banner)", v)
		} else {
			o.logf("note: no --kernel-version and none found in vmlinux; kernel_version left empty")
		}
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, err
	}
	indexPath := filepath.Join(o.OutDir, catalog.IndexFile)
	sigPath := indexPath + catalog.SignatureSuffix
	ix, err := o.loadIndex(indexPath, sigPath, pubPEM)
	if err != nil {
		return nil, err
	}

	man := catalog.Manifest{
		Schema:        catalog.SchemaVersion,
		Kind:          o.Kind,
		Name:          o.Name,
		Version:       o.Version,
		Kernel:        o.Kernel,
		KernelVersion: o.KernelVersion,
		CreatedAt:     o.CreatedAt.Format(time.RFC3339),
	}
	bundlePath, sum, size, unpacked, fresh, err := o.writeBundle(man, files, modulesDir)
	if err != nil {
		return nil, err
	}
	published := false
	defer func() {
		if !published && fresh {
			os.Remove(bundlePath) // no index lists it
		}
	}()
	e := catalog.Entry{
		Name:          o.Name,
		Description:   o.Description,
		Version:       o.Version,
		Distro:        o.Distro,
		Arch:          catalog.ArchAMD64,
		Kernel:        o.Kernel,
		KernelVersion: o.KernelVersion,
		Bundle:        catalog.BundleFileName(sum),
		SHA256:        sum,
		Size:          size,
		UnpackedSize:  unpacked,
	}
	if err := catalog.ValidateEntry(o.Kind, e); err != nil {
		return nil, err
	}
	replaced := false
	ix.Entries = slices.DeleteFunc(ix.Entries, func(old catalog.Entry) bool {
		if old.Name == e.Name {
			replaced = true
			return true
		}
		return false
	})
	ix.Entries = append(ix.Entries, e)
	slices.SortFunc(ix.Entries, func(a, b catalog.Entry) int { return strings.Compare(a.Name, b.Name) })
	ix.GeneratedAt = o.CreatedAt.Format(time.RFC3339)
	data, err := json.MarshalIndent(ix, "", "  ")
	if err != nil {
		return nil, err
	}
	data = append(data, '\n')
	if _, err := catalog.ParseIndex(data); err != nil {
		return nil, fmt.Errorf("the merged index would not parse: %w", err)
	}
	if err := o.signIndex(ctx, data, indexPath, sigPath, pubPEM, verifyPEM); err != nil {
		return nil, err
	}
	published = true
	verb := "added"
	if replaced {
		verb = "replaced"
	}
	o.logf("%s %s %q: %s (%d bytes)", verb, o.Kind, o.Name, bundlePath, size)
	o.logf("index: %s (%d entries), signed: %s", indexPath, len(ix.Entries), sigPath)
	return &CatalogResult{Entry: e, BundlePath: bundlePath, IndexPath: indexPath, SignaturePath: sigPath, Replaced: replaced}, nil
}

func (o *CatalogOptions) defaults() error {
	if !o.Kind.Valid() {
		return fmt.Errorf("--kind %q is not %q or %q", o.Kind, catalog.KindImage, catalog.KindKernel)
	}
	if !catalog.SafeEntryName(o.Name) {
		return fmt.Errorf("--name %q is not a catalog name (lower-case letters, digits, '.', '_', '-'; at most 63)", o.Name)
	}
	if o.OutDir == "" {
		return errors.New("--out is required")
	}
	if o.FromDir == "" {
		return errors.New("--from is required")
	}
	if o.KeyPath == "" {
		return errors.New("--key is required")
	}
	if _, err := os.Stat(o.KeyPath); err != nil {
		return fmt.Errorf("--key: %w", err)
	}
	if o.Kernel != "" && o.Kind != catalog.KindImage {
		return errors.New("--kernel applies to images (the kernel an image boots with)")
	}
	if o.KernelVersion != "" && o.Kind != catalog.KindKernel {
		return errors.New("--kernel-version applies to kernels")
	}
	if o.Distro == "" {
		o.Distro = "debian"
	}
	if o.OpenSSL == "" {
		o.OpenSSL = "openssl"
	}
	var err error
	if o.CreatedAt, err = stampTime(o.CreatedAt); err != nil {
		return err
	}
	if o.Version == "" {
		o.Version = o.CreatedAt.Format("20060102.150405")
	}
	return nil
}

func (o *CatalogOptions) logf(format string, args ...any) {
	if o.Log != nil {
		fmt.Fprintf(o.Log, format+"\n", args...)
	}
}

// inputs finds the bundle's files in FromDir.
func (o *CatalogOptions) inputs() (map[string]string, string, error) {
	required, optional := []string{catalog.RootfsFile}, []string(nil)
	if o.Kind == catalog.KindKernel {
		required, optional = []string{catalog.VmlinuxFile}, []string{catalog.InitrdFile, catalog.VmlinuzFile}
	}
	files := map[string]string{}
	for _, n := range append(slices.Clone(required), optional...) {
		p := filepath.Join(o.FromDir, n)
		fi, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) && !slices.Contains(required, n) {
			continue
		}
		if err != nil {
			return nil, "", fmt.Errorf("--from: %s bundle needs %s: %w", aKind(o.Kind), n, err)
		}
		if !fi.Mode().IsRegular() {
			return nil, "", fmt.Errorf("--from: %s is not a regular file", p)
		}
		files[n] = p
	}
	modulesDir := ""
	if o.Kind == catalog.KindKernel {
		p := filepath.Join(o.FromDir, catalog.ModulesDir)
		fi, err := os.Stat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, "", fmt.Errorf("--from: %w", err)
		case !fi.IsDir():
			return nil, "", fmt.Errorf("--from: %s is not a directory", p)
		default:
			if modulesDir, err = filepath.EvalSymlinks(p); err != nil {
				return nil, "", fmt.Errorf("--from: %w", err)
			}
		}
	}
	return files, modulesDir, nil
}

// loadIndex reads the existing index (a new empty one if there is none),
// refusing one of another kind or one whose signature does not verify with
// the signing key.
func (o *CatalogOptions) loadIndex(indexPath, sigPath string, pubPEM []byte) (*catalog.Index, error) {
	data, err := os.ReadFile(indexPath)
	if errors.Is(err, fs.ErrNotExist) {
		return &catalog.Index{Schema: catalog.SchemaVersion, Kind: o.Kind, Entries: []catalog.Entry{}}, nil
	}
	if err != nil {
		return nil, err
	}
	sig, err := os.ReadFile(sigPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		o.logf("note: %s has no signature; adopting it as it is", indexPath)
	case err != nil:
		return nil, err
	default:
		if err := trust.Verify(data, sig, pubPEM, "blob"); err != nil {
			return nil, fmt.Errorf("%s does not verify with --key (edited by hand, or signed with another key): %v; remove %s to adopt it as it is", indexPath, err, sigPath)
		}
	}
	ix, err := catalog.ParseIndex(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", indexPath, err)
	}
	if ix.Kind != o.Kind {
		return nil, fmt.Errorf("%s is %s catalog; refusing to add %s to it (use another --out)", indexPath, aKind(ix.Kind), aKind(o.Kind))
	}
	return ix, nil
}

// writeBundle packs the bundle into OutDir/<sha256>.tar.zst and returns
// its size and its unpacked size (the tar stream's bytes, which the index
// signs); fresh is whether no file of that name was there before.
func (o *CatalogOptions) writeBundle(man catalog.Manifest, files map[string]string, modulesDir string) (path, sum string, size, unpacked int64, fresh bool, err error) {
	tmp, err := os.CreateTemp(o.OutDir, ".bundle-*.tmp")
	if err != nil {
		return "", "", 0, 0, false, err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	cw := &countWriter{}
	bw := bufio.NewWriterSize(io.MultiWriter(tmp, h, cw), 1<<20)
	unpacked, err = catalog.WriteBundle(bw, o.Kind, man, files, modulesDir)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", "", 0, 0, false, fmt.Errorf("write bundle: %w", err)
	}
	sum = hex.EncodeToString(h.Sum(nil))
	path = filepath.Join(o.OutDir, catalog.BundleFileName(sum))
	_, serr := os.Lstat(path)
	fresh = errors.Is(serr, fs.ErrNotExist)
	// Content addressed: a file already there has the same bytes (or is
	// damaged), so replacing it is always right.
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", "", 0, 0, false, err
	}
	return path, sum, cw.n, unpacked, fresh, nil
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

// signIndex signs data with openssl, checks the signature, and replaces
// index.json then index.json.sig. (Between the two renames a client sees a
// mismatch and refuses; it never sees an unsigned change.)
func (o *CatalogOptions) signIndex(ctx context.Context, data []byte, indexPath, sigPath string, pubPEM, verifyPEM []byte) error {
	tmpIdx, err := writeTemp(o.OutDir, "."+catalog.IndexFile+".tmp-*", data)
	if err != nil {
		return err
	}
	defer os.Remove(tmpIdx)
	sig, err := signFile(ctx, o.OpenSSL, o.KeyPath, catalog.IndexFile, tmpIdx, data, pubPEM, verifyPEM, o.VerifyPub)
	if err != nil {
		return err
	}
	tmpSig, err := writeTemp(o.OutDir, "."+catalog.IndexFile+catalog.SignatureSuffix+".tmp-*", sig)
	if err != nil {
		return err
	}
	defer os.Remove(tmpSig)
	if err := os.Rename(tmpIdx, indexPath); err != nil {
		return err
	}
	if err := os.Rename(tmpSig, sigPath); err != nil {
		return err
	}
	return syncPath(o.OutDir)
}

func writeTemp(dir, pattern string, data []byte) (string, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

func syncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

var kernelBannerRE = regexp.MustCompile(`Linux version ([0-9][A-Za-z0-9._+~-]{0,63}) \(`)

// kernelVersionOf reads the release (uname -r) from an uncompressed
// kernel's "Linux version X (" banner.
func kernelVersionOf(vmlinux string) (string, error) {
	f, err := os.Open(vmlinux)
	if err != nil {
		return "", err
	}
	defer f.Close()
	const chunk, overlap = 1 << 20, 128
	buf := make([]byte, chunk+overlap)
	keep := 0
	for {
		n, err := io.ReadFull(f, buf[keep:])
		window := buf[:keep+n]
		if m := kernelBannerRE.FindSubmatch(window); m != nil {
			return string(m[1]), nil
		}
		if err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return "", nil
			}
			return "", err
		}
		keep = copy(buf, window[len(window)-overlap:])
	}
}

const catalogUsage = `banger-release catalog publishes an image or kernel bundle into a signed catalog.

  banger-release catalog --kind image|kernel --name NAME --out DIR --key key.pem --from DIR
                         [--kernel KNAME] [--kernel-version KVER] [--version V]
                         [--description D] [--distro debian] [--verify-pub release-key.pub]

--from holds rootfs.ext4 (image), or vmlinux and optionally initrd.img,
vmlinuz and modules/ (kernel). Writes DIR/<sha256>.tar.zst, merges the entry
into DIR/index.json (replacing one of the same name) and signs it into
DIR/index.json.sig. See docs/catalog.md.

Flags:
`

// CatalogMain is `banger-release catalog`: it parses args and runs
// PublishCatalog. It returns the process exit code: 0 done, 1 failed, 2 bad
// usage.
func CatalogMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("banger-release catalog", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, catalogUsage)
		fs.PrintDefaults()
	}
	var o CatalogOptions
	var kind string
	fs.StringVar(&kind, "kind", "", "bundle `kind`: image or kernel")
	fs.StringVar(&o.Name, "name", "", "catalog entry `name`")
	fs.StringVar(&o.OutDir, "out", "", "catalog `dir` (created if missing)")
	fs.StringVar(&o.KeyPath, "key", "", "ECDSA P-256 private key `file` (PEM) to sign with")
	fs.StringVar(&o.FromDir, "from", "", "`dir` holding the bundle's files")
	fs.StringVar(&o.Kernel, "kernel", "", "image: kernel catalog `name` it boots with")
	fs.StringVar(&o.KernelVersion, "kernel-version", "", "kernel: `release` (uname -r; default: read from vmlinux)")
	fs.StringVar(&o.Version, "version", "", "entry `version` (default: the build time, YYYYMMDD.HHMMSS)")
	fs.StringVar(&o.Description, "description", "", "one-line `text` describing the entry")
	fs.StringVar(&o.Distro, "distro", "debian", "`distro` the entry is built from")
	fs.StringVar(&o.VerifyPub, "verify-pub", "", "public key `file` the signature must also verify with")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "banger-release catalog: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	o.Kind = catalog.Kind(kind)
	o.Log = stderr
	res, err := PublishCatalog(ctx, o)
	if err != nil {
		fmt.Fprintf(stderr, "banger-release catalog: %s\n", oneLine(err.Error()))
		return 1
	}
	fmt.Fprintf(stdout, "%s\n%s\n%s\n", res.BundlePath, res.IndexPath, res.SignaturePath)
	return 0
}

// aKind is "an image" or "a kernel".
func aKind(k catalog.Kind) string {
	if k == catalog.KindImage {
		return "an image"
	}
	return "a " + string(k)
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
