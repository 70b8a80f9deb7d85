package daemon

import (
	"context"
	"encoding/json"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpcserver"
)

// registerImages wires the image and kernel methods to the image service.
func (d *Daemon) registerImages() {
	s := d.images
	h := func(method string, f func(ctx context.Context, raw json.RawMessage) (any, error)) {
		d.srv.Handle(method, f)
	}
	withRef := func(f func(ctx context.Context, name string) (any, error)) rpcserver.Handler {
		return func(ctx context.Context, raw json.RawMessage) (any, error) {
			p, err := decode[api.ImageRef](raw)
			if err != nil {
				return nil, err
			}
			return f(ctx, p.Name)
		}
	}
	h(api.MethodImageList, func(ctx context.Context, _ json.RawMessage) (any, error) { return s.List(ctx) })
	h(api.MethodImageShow, withRef(func(ctx context.Context, n string) (any, error) { return s.Show(ctx, n) }))
	h(api.MethodImageDelete, withRef(func(ctx context.Context, n string) (any, error) {
		// Its warm-start templates are VMs of it: they go first.
		if err := d.vms.DeleteTemplatesOf(ctx, n); err != nil {
			return nil, err
		}
		return struct{}{}, s.Delete(ctx, n)
	}))
	h(api.MethodImageWarm, func(ctx context.Context, raw json.RawMessage) (any, error) {
		p, err := decode[api.ImageWarmParams](raw)
		if err != nil {
			return nil, err
		}
		return d.vms.Warm(ctx, p, logWriter{ctx})
	})
	h(api.MethodImagePromote, withRef(func(ctx context.Context, n string) (any, error) { return s.Promote(ctx, n) }))
	h(api.MethodImageBuild, func(ctx context.Context, raw json.RawMessage) (any, error) {
		p, err := decode[api.ImageBuildParams](raw)
		if err != nil {
			return nil, err
		}
		return s.BuildImage(ctx, p.Name, logWriter{ctx})
	})
	h(api.MethodImageDerive, func(ctx context.Context, raw json.RawMessage) (any, error) {
		p, err := decode[api.ImageDeriveParams](raw)
		if err != nil {
			return nil, err
		}
		return d.derive.Ensure(ctx, p, logWriter{ctx})
	})
	h(api.MethodImagePull, func(ctx context.Context, raw json.RawMessage) (any, error) {
		p, err := decode[api.ImagePullParams](raw)
		if err != nil {
			return nil, err
		}
		return s.PullImage(ctx, p, logWriter{ctx})
	})
	h(api.MethodImageRegister, func(ctx context.Context, raw json.RawMessage) (any, error) {
		p, err := decode[api.ImageRegisterParams](raw)
		if err != nil {
			return nil, err
		}
		return s.Register(ctx, p)
	})
	h(api.MethodImageCachePrune, func(ctx context.Context, raw json.RawMessage) (any, error) {
		p, err := decode[api.CachePruneParams](raw)
		if err != nil {
			return nil, err
		}
		r, err := s.CachePrune(ctx, p.DryRun)
		if err != nil {
			return nil, err
		}
		r.Templates, err = d.vms.PruneTemplates(ctx, p.DryRun)
		return r, err
	})
	h(api.MethodImageCatalog, func(ctx context.Context, _ json.RawMessage) (any, error) { return s.ImageCatalog(ctx) })

	h(api.MethodKernelList, func(ctx context.Context, _ json.RawMessage) (any, error) { return s.ListKernels(ctx) })
	h(api.MethodKernelCatalog, func(ctx context.Context, _ json.RawMessage) (any, error) { return s.KernelCatalog(ctx) })
	kref := func(f func(ctx context.Context, p api.KernelRef) (any, error)) rpcserver.Handler {
		return func(ctx context.Context, raw json.RawMessage) (any, error) {
			p, err := decode[api.KernelRef](raw)
			if err != nil {
				return nil, err
			}
			return f(ctx, p)
		}
	}
	h(api.MethodKernelShow, kref(func(ctx context.Context, p api.KernelRef) (any, error) { return s.ShowKernel(ctx, p.Name) }))
	h(api.MethodKernelDelete, kref(func(ctx context.Context, p api.KernelRef) (any, error) {
		return struct{}{}, s.DeleteKernel(ctx, p.Name)
	}))
	h(api.MethodKernelPull, kref(func(ctx context.Context, p api.KernelRef) (any, error) {
		return s.PullKernel(ctx, p.Name, p.Force, logWriter{ctx})
	}))
	h(api.MethodKernelImport, func(ctx context.Context, raw json.RawMessage) (any, error) {
		p, err := decode[api.KernelImportParams](raw)
		if err != nil {
			return nil, err
		}
		return s.ImportKernel(ctx, p, logWriter{ctx})
	})
}
