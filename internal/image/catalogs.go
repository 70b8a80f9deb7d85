package image

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/catalog"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/errdefs"
)

// catalogClient is shared so concurrent pulls of one bundle coalesce.
func (s *Service) catalogClient() *catalog.Client {
	s.catOnce.Do(func() {
		s.cat = &catalog.Client{HTTP: s.HTTP, PublicKeyPEM: s.catalogKey, MaxUnpackedBytes: s.Catalog.MaxUnpackedBytes()}
		if s.Catalog.PublicKeyFile != "" {
			s.cat.KeyName = "the key in " + s.Catalog.PublicKeyFile
		}
	})
	return s.cat
}

// catalogIndex fetches and verifies the catalog index of kind.
func (s *Service) catalogIndex(ctx context.Context, kind catalog.Kind) (*catalog.Index, string, error) {
	url, key := s.Catalog.ImageURL, "catalog.image_url"
	if kind == catalog.KindKernel {
		url, key = s.Catalog.KernelURL, "catalog.kernel_url"
	}
	if url == "" {
		return nil, "", errdefs.NotFoundf("no %s catalog is configured: set %s in the config file", kind, key)
	}
	if err := s.loadCatalogKey(); err != nil {
		return nil, url, err
	}
	ix, err := s.catalogClient().FetchIndex(ctx, url, kind)
	if err != nil {
		return nil, url, err
	}
	return ix, url, nil
}

// loadCatalogKey reads catalog.public_key_file once; without it the
// release key built into banger verifies the indexes.
func (s *Service) loadCatalogKey() error {
	s.keyOnce.Do(func() {
		if s.Catalog.PublicKeyFile == "" {
			return
		}
		b, err := os.ReadFile(s.Catalog.PublicKeyFile)
		if err != nil {
			s.keyErr = fmt.Errorf("catalog.public_key_file: %w", err)
			return
		}
		s.catalogKey = b
	})
	return s.keyErr
}

func (s *Service) catalogListing(ctx context.Context, kind catalog.Kind, pulled func(name string) bool) (api.Catalog, error) {
	ix, url, err := s.catalogIndex(ctx, kind)
	if err != nil {
		return api.Catalog{}, err
	}
	out := api.Catalog{URL: url, Entries: []api.CatalogEntry{}}
	for _, e := range ix.Entries {
		st := "available"
		if pulled(e.Name) {
			st = "pulled"
		}
		out.Entries = append(out.Entries, api.CatalogEntry{Name: e.Name, Version: e.Version, Description: e.Description,
			Kernel: e.Kernel, SizeBytes: e.Size, SHA256: e.SHA256, State: st})
	}
	return out, nil
}

// pullProgress reports a download at most every 2 s (and at the end).
func pullProgress(w io.Writer, what string) func(done, total int64) {
	if w == nil {
		return nil
	}
	var mu sync.Mutex
	var last time.Time
	return func(done, total int64) {
		mu.Lock()
		defer mu.Unlock()
		if done < total && time.Since(last) < 2*time.Second {
			return
		}
		last = time.Now()
		pct := 100
		if total > 0 {
			pct = int(done * 100 / total)
		}
		fmt.Fprintf(w, "downloading %s: %s of %s (%d%%)\n", what, config.FormatSize(done), config.FormatSize(total), pct)
	}
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}
