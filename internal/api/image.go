package api

// Image and kernel methods beyond list/show/delete (see vm.go).
const (
	MethodImageBuild      = "image.build"
	MethodImagePull       = "image.pull"
	MethodImageRegister   = "image.register"
	MethodImagePromote    = "image.promote"
	MethodImageCachePrune = "image.cache.prune"
	MethodImageWarm       = "image.warm"
	MethodKernelList      = "kernel.list"
	MethodKernelShow      = "kernel.show"
	MethodKernelDelete    = "kernel.delete"
	MethodKernelPull      = "kernel.pull"
	MethodKernelImport    = "kernel.import"
	MethodKernelCatalog   = "kernel.catalog"
	MethodImageCatalog    = "image.catalog"
	MethodImageDerive     = "image.derive"
)

// ImageDeriveParams builds (or finds, by content key) a repository's
// derived image from its .banger/image.toml.
type ImageDeriveParams struct {
	Path string `json:"path"` // the repository's root or its .banger/image.toml
}

// ImageDeriveResult is the derived image and how it was had.
type ImageDeriveResult struct {
	Image   Image   `json:"image"`
	Key     string  `json:"key"`
	File    string  `json:"file"`
	Built   bool    `json:"built"` // false: an image of this key existed
	Seconds float64 `json:"seconds,omitempty"`
	Log     string  `json:"log,omitempty"` // the build's log on the host
}

// ImageBuildParams builds a built-in image (debian-bookworm,
// debian-bookworm-minimal, tiny) locally.
type ImageBuildParams struct {
	Name string `json:"name"`
}

// ImagePullParams pulls an image from the image catalog (a catalog name) or
// from an OCI registry (any other reference).
type ImagePullParams struct {
	Ref    string `json:"ref"`
	Name   string `json:"name,omitempty"`   // default: the catalog name, or derived from the reference
	Kernel string `json:"kernel,omitempty"` // kernel to boot an OCI image with (default: the built-in kernel)
	Force  bool   `json:"force,omitempty"`  // replace a registered image of that name
}

// ImageRegisterParams registers an existing ext4 root filesystem. Kernel
// names a registered kernel; Vmlinux (+Initrd) registers the files as a new
// kernel named after the image. The two are mutually exclusive.
type ImageRegisterParams struct {
	Name    string `json:"name"`
	Rootfs  string `json:"rootfs"`
	Kernel  string `json:"kernel,omitempty"`
	Vmlinux string `json:"vmlinux,omitempty"`
	Initrd  string `json:"initrd,omitempty"`
	Init    string `json:"init,omitempty"` // init= for the kernel command line (default: the image's /sbin/init)
}

// CachePruneParams prunes the OCI layer cache and unused derived images.
type CachePruneParams struct {
	DryRun bool `json:"dry_run"`
}

// CachePruneResult says what was (or would be) freed.
type CachePruneResult struct {
	Dir        string `json:"dir"`
	FreedBytes int64  `json:"freed_bytes"`
	Blobs      int    `json:"blobs"`
	// Images are the derived images removed (or that would be).
	Images []string `json:"images,omitempty"`
	// Templates are the stale warm-start templates removed (or that
	// would be).
	Templates []string `json:"templates,omitempty"`
	DryRun    bool     `json:"dry_run"`
}

// Kernel is a registered kernel.
type Kernel struct {
	ID        string   `json:"id"`
	Name      string   `json:"name"`
	Version   string   `json:"version"`
	Vmlinux   string   `json:"vmlinux"`
	Vmlinuz   string   `json:"vmlinuz,omitempty"`
	Initrd    string   `json:"initrd,omitempty"`
	Modules   string   `json:"modules,omitempty"`
	Source    string   `json:"source"`
	Managed   bool     `json:"managed"`
	SizeBytes int64    `json:"size_bytes"`
	CreatedAt string   `json:"created_at"`
	UsedBy    []string `json:"used_by"`
}

// KernelRef names a kernel.
type KernelRef struct {
	Name  string `json:"name"`
	Force bool   `json:"force,omitempty"`
}

// KernelImportParams imports Debian's cloud kernel package: from the apt
// archive (Deb empty) or a local .deb file.
type KernelImportParams struct {
	Name string `json:"name,omitempty"` // default: the kernel version
	Deb  string `json:"deb,omitempty"`
}

// CatalogEntry is one catalog entry with its local state.
type CatalogEntry struct {
	Name        string `json:"name"`
	Version     string `json:"version"`
	Description string `json:"description,omitempty"`
	Kernel      string `json:"kernel,omitempty"`
	SizeBytes   int64  `json:"size_bytes"`
	SHA256      string `json:"sha256"`
	State       string `json:"state"` // "pulled" or "available"
}

// Catalog is a verified catalog index.
type Catalog struct {
	URL     string         `json:"url"`
	Entries []CatalogEntry `json:"entries"`
}

// ImageWarmParams makes the warm-start template of an image for a shape
// (unset: vm_defaults).
type ImageWarmParams struct {
	Name      string  `json:"name"`
	VCPU      *int    `json:"vcpu,omitempty"`
	MemoryMiB *int    `json:"memory_mib,omitempty"`
	DiskSize  *string `json:"disk_size,omitempty"`
}

// ImageWarmResult names the template.
type ImageWarmResult struct {
	Template string `json:"template"`
	Image    string `json:"image"`
	Key      string `json:"key"`
	Existed  bool   `json:"existed"`
}
