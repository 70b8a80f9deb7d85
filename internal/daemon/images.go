package daemon

import (
	"context"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpcserver"
)

// registerImages wires the image and kernel methods to the image service.
func (d *Daemon) registerImages() {
	s := d.images
	h := d.srv.Handle
	h(api.MethodImageList, rpcserver.NoParams(s.List))
	h(api.MethodImageShow, byImageName(s.Show))
	h(api.MethodImageDelete, rpcserver.TypedNoResult(func(ctx context.Context, p api.ImageRef) error {
		// Its warm-start templates are VMs of it: they go first.
		if err := d.vms.DeleteTemplatesOf(ctx, p.Name); err != nil {
			return err
		}
		return s.Delete(ctx, p.Name)
	}))
	h(api.MethodImageWarm, rpcserver.Typed(func(ctx context.Context, p api.ImageWarmParams) (api.ImageWarmResult, error) {
		return d.vms.Warm(ctx, p, logWriter{ctx})
	}))
	h(api.MethodImagePromote, byImageName(s.Promote))
	h(api.MethodImageBuild, rpcserver.Typed(func(ctx context.Context, p api.ImageBuildParams) (api.Image, error) {
		return s.BuildImage(ctx, p.Name, logWriter{ctx})
	}))
	h(api.MethodImageDerive, rpcserver.Typed(func(ctx context.Context, p api.ImageDeriveParams) (api.ImageDeriveResult, error) {
		return d.derive.Ensure(ctx, p, logWriter{ctx})
	}))
	h(api.MethodImagePull, rpcserver.Typed(func(ctx context.Context, p api.ImagePullParams) (api.Image, error) {
		return s.PullImage(ctx, p, logWriter{ctx})
	}))
	h(api.MethodImageRegister, rpcserver.Typed(s.Register))
	h(api.MethodImageCachePrune, rpcserver.Typed(func(ctx context.Context, p api.CachePruneParams) (api.CachePruneResult, error) {
		r, err := s.CachePrune(ctx, p.DryRun)
		if err != nil {
			return r, err
		}
		r.Templates, err = d.vms.PruneTemplates(ctx, p.DryRun)
		return r, err
	}))
	h(api.MethodImageCatalog, rpcserver.NoParams(s.ImageCatalog))

	h(api.MethodKernelList, rpcserver.NoParams(s.ListKernels))
	h(api.MethodKernelCatalog, rpcserver.NoParams(s.KernelCatalog))
	h(api.MethodKernelShow, rpcserver.Typed(func(ctx context.Context, p api.KernelRef) (api.Kernel, error) {
		return s.ShowKernel(ctx, p.Name)
	}))
	h(api.MethodKernelDelete, rpcserver.TypedNoResult(func(ctx context.Context, p api.KernelRef) error {
		return s.DeleteKernel(ctx, p.Name)
	}))
	h(api.MethodKernelPull, rpcserver.Typed(func(ctx context.Context, p api.KernelRef) (api.Kernel, error) {
		return s.PullKernel(ctx, p.Name, p.Force, logWriter{ctx})
	}))
	h(api.MethodKernelImport, rpcserver.Typed(func(ctx context.Context, p api.KernelImportParams) (api.Kernel, error) {
		return s.ImportKernel(ctx, p, logWriter{ctx})
	}))
}

// byImageName serves f for the image that api.ImageRef params name.
func byImageName[Resp any](f func(context.Context, string) (Resp, error)) rpcserver.Handler {
	return rpcserver.Typed(func(ctx context.Context, p api.ImageRef) (Resp, error) { return f(ctx, p.Name) })
}
