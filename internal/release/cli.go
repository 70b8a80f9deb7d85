package release

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

const usage = `banger-release builds a signed banger release tree.

  banger-release --version v1.2.3 --out DIR --key key.pem --base-url URL
                 [--commit SHA] [--binaries banger,bangerd,banger-vmm] [--latest]
                 [--manifest-in manifest.json] [--prebuilt DIR] [--cover]
                 [--repo DIR] [--verify-pub release-key.pub] [--expires-in 30d]
  banger-release manifest --out DIR --key key.pem [--expires-in 30d] ...
                 (re-sign manifest.json before it expires; banger-release manifest --help)
  banger-release --keygen key.pem [--pub key.pub]
  banger-release catalog --kind image|kernel --name NAME --out DIR --key key.pem --from DIR ...
                 (see banger-release catalog --help and docs/catalog.md)

Writes DIR/manifest.json, DIR/manifest.json.sig (signed, expiring after
--expires-in) and DIR/<version>/{banger-<version>-linux-amd64.tar.gz,
SHA256SUMS, SHA256SUMS.sig}. See docs/release-process.md.

Flags:
`

// Main is banger-release: it parses args and runs Keygen or Build. It
// returns the process exit code: 0 done, 1 failed, 2 bad usage.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "catalog" {
		return CatalogMain(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "manifest" {
		return ManifestMain(ctx, args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("banger-release", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	var o Options
	var binaries, keygen, pub, expires string
	fs.StringVar(&o.Version, "version", "", "release `version`, vMAJOR.MINOR.PATCH[-PRE]")
	fs.StringVar(&o.OutDir, "out", "", "release tree `dir` (created if missing)")
	fs.StringVar(&o.KeyPath, "key", "", "ECDSA P-256 private key `file` (PEM) to sign with")
	fs.StringVar(&o.BaseURL, "base-url", "", "`URL` the release tree is served at")
	fs.StringVar(&o.Commit, "commit", "", "commit `sha` to stamp (default: git rev-parse HEAD)")
	fs.StringVar(&binaries, "binaries", "", "comma-separated binaries to ship (default banger,bangerd,banger-vmm)")
	fs.BoolVar(&o.Latest, "latest", false, "set latest_stable to this version")
	fs.StringVar(&o.ManifestIn, "manifest-in", "", "existing manifest `file` to merge into (default: DIR/manifest.json if present)")
	fs.StringVar(&o.Prebuilt, "prebuilt", "", "package already built binaries from `dir` instead of building")
	fs.BoolVar(&o.Cover, "cover", false, "build with -cover")
	fs.StringVar(&o.RepoDir, "repo", ".", "module root to build in")
	fs.StringVar(&o.VerifyPub, "verify-pub", "", "public key `file` the signature must also verify with")
	fs.StringVar(&expires, "expires-in", "30d", "how long the signed manifest stays valid (`30d`, 720h; at most 366d)")
	fs.StringVar(&keygen, "keygen", "", "generate a new signing key at `file` (and its .pub) and exit")
	fs.StringVar(&pub, "pub", "", "with --keygen: public key `file` (default: key path with .pub)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "banger-release: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if keygen != "" {
		var other []string
		fs.Visit(func(f *flag.Flag) {
			if f.Name != "keygen" && f.Name != "pub" {
				other = append(other, "--"+f.Name)
			}
		})
		if len(other) > 0 {
			fmt.Fprintf(stderr, "banger-release: --keygen takes no other flags than --pub (got %s)\n", strings.Join(other, ", "))
			return 2
		}
		p, err := Keygen(ctx, "", keygen, pub)
		if err != nil {
			fmt.Fprintf(stderr, "banger-release: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "private key: %s (keep it secret)\npublic key:  %s\n", keygen, p)
		return 0
	}
	if pub != "" {
		fmt.Fprintln(stderr, "banger-release: --pub only applies to --keygen")
		return 2
	}
	var err error
	if o.ManifestExpiresIn, err = ParseExpiry(expires); err != nil {
		fmt.Fprintf(stderr, "banger-release: %v\n", err)
		return 2
	}
	if binaries != "" {
		for _, b := range strings.Split(binaries, ",") {
			o.Binaries = append(o.Binaries, strings.TrimSpace(b))
		}
	}
	o.Log = stderr
	res, err := Build(ctx, o)
	if err != nil {
		fmt.Fprintf(stderr, "banger-release: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s\n%s\n%s\n%s\n%s\n", res.TarballPath, res.SumsPath, res.SignaturePath, res.ManifestPath, res.ManifestSigPath)
	return 0
}
