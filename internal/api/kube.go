package api

// The Pod contract between 'banger --context' (internal/kubeclient) and
// banger-vk (internal/vk): a VM on a cluster of banger hosts is a Pod of
// one container, whose image is a banger image name (or an OCI reference),
// whose resources are the VM's size, and whose annotations carry what a
// Pod has no field for (docs/scale-out.md).
const (
	// KubeAnnotationNAT "true" gives the guest outbound network (--nat).
	KubeAnnotationNAT = "banger.dev/nat"
	// KubeAnnotationStart "cold" boots even when a warm-start template
	// matches; "warm" (or nothing) uses the host's setting.
	KubeAnnotationStart = "banger.dev/start"
	// KubeAnnotationDiskSize sizes the work disk ("8G").
	KubeAnnotationDiskSize = "banger.dev/disk-size"
	// KubeAnnotationWorkspace is the guest path a client copies its
	// workspace to; the container's command (if any) runs there.
	KubeAnnotationWorkspace = "banger.dev/workspace"
	// KubeTaintKey is the taint (value "true", NoSchedule) every banger
	// node carries, so only Pods meant as VMs land there.
	KubeTaintKey = "banger.dev/vm"
	// KubeNodeLabel ("true") marks banger nodes for node selectors.
	KubeNodeLabel = "banger.dev/host"
)
