package vk

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/banger-dev/banger/internal/api"
)

// Labels banger-vk puts on the VMs it runs for Pods. They are how it finds
// a Pod's VM again after a restart of itself or of bangerd: the VM, not
// banger-vk's memory, is the record.
const (
	LabelPodUID    = "k8s.banger.dev/pod-uid"
	LabelNamespace = "k8s.banger.dev/namespace"
	LabelPod       = "k8s.banger.dev/pod"
	LabelNode      = "k8s.banger.dev/node"
	// LabelJob is the guest job (banger-agent job) running the container's
	// command, once started.
	LabelJob = "k8s.banger.dev/job"
	// LabelEvicted marks a VM whose Pod was evicted by the control plane
	// (its node went NotReady): the VM is kept, detached from the Pod
	// ("namespace/name"); the host's owner decides what becomes of it.
	LabelEvicted = "k8s.banger.dev/evicted"
)

// Pod annotations banger-vk reads, and the node taint (api.Kube*).
const (
	AnnotationNAT       = api.KubeAnnotationNAT
	AnnotationStart     = api.KubeAnnotationStart
	AnnotationDiskSize  = api.KubeAnnotationDiskSize
	AnnotationWorkspace = api.KubeAnnotationWorkspace
	TaintKey            = api.KubeTaintKey
	TaintValue          = "true"
)

// vmName is the VM a Pod runs as: the Pod's name made a DNS label, cut to
// fit, and 8 hex digits of its UID. A Pod deleted and created again under
// the same name gets a different VM; one Pod never gets two (the daemon
// refuses a second VM of a name).
func vmName(pod *corev1.Pod) string {
	var b strings.Builder
	for _, r := range strings.ToLower(pod.Name) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	base := strings.Trim(b.String(), "-")
	if len(base) > 54 {
		base = strings.TrimRight(base[:54], "-")
	}
	sum := sha256.Sum256([]byte(pod.UID))
	suffix := hex.EncodeToString(sum[:4])
	if base == "" {
		return "pod-" + suffix
	}
	return base + "-" + suffix
}

// podLabels are the labels of a Pod's VM.
func podLabels(pod *corev1.Pod, node string) map[string]string {
	return map[string]string{
		LabelPodUID:    string(pod.UID),
		LabelNamespace: pod.Namespace,
		LabelPod:       pod.Name,
		LabelNode:      node,
	}
}

// spec is what banger-vk makes of a Pod: the VM to create and the command
// to run in it (none: the VM itself is the workload, a sandbox to exec into).
type spec struct {
	params  api.VMCreateParams
	image   string
	command []string
	dir     string
	env     []string
}

// podSpec maps a Pod to a VM, refusing what a VM cannot be: more than one
// container, init containers, a CPU or memory size that is not whole.
func podSpec(pod *corev1.Pod, node string) (spec, error) {
	var s spec
	if n := len(pod.Spec.Containers); n != 1 {
		return s, fmt.Errorf("pod %s/%s has %d containers: a banger VM runs one (put the others' commands in the guest)", pod.Namespace, pod.Name, n)
	}
	if len(pod.Spec.InitContainers) > 0 {
		return s, fmt.Errorf("pod %s/%s has init containers, which banger VMs do not run", pod.Namespace, pod.Name)
	}
	c := pod.Spec.Containers[0]
	if strings.TrimSpace(c.Image) == "" {
		return s, fmt.Errorf("pod %s/%s: container %s names no image (a banger image name such as tiny, or an OCI reference)", pod.Namespace, pod.Name, c.Name)
	}
	s.image = c.Image
	s.params = api.VMCreateParams{Name: vmName(pod), Image: c.Image, Labels: podLabels(pod, node)}
	vcpu, err := vcpus(c.Resources)
	if err != nil {
		return s, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	if vcpu > 0 {
		s.params.VCPU = &vcpu
	}
	mib, err := memoryMiB(c.Resources)
	if err != nil {
		return s, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	if mib > 0 {
		s.params.MemoryMiB = &mib
	}
	if err := applyAnnotations(pod, &s); err != nil {
		return s, err
	}
	s.command = append(append([]string{}, c.Command...), c.Args...)
	s.dir = c.WorkingDir
	if s.dir == "" {
		s.dir = pod.Annotations[AnnotationWorkspace]
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			s.env = append(s.env, e.Name+"="+e.Value)
		}
	}
	return s, nil
}

func applyAnnotations(pod *corev1.Pod, s *spec) error {
	a := pod.Annotations
	if v, ok := a[AnnotationNAT]; ok {
		nat, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("pod %s/%s: annotation %s=%q: want true or false", pod.Namespace, pod.Name, AnnotationNAT, v)
		}
		s.params.NAT = nat
	}
	switch v := a[AnnotationStart]; v {
	case "", "warm":
	case "cold":
		s.params.Cold = true
	default:
		return fmt.Errorf("pod %s/%s: annotation %s=%q: want warm or cold", pod.Namespace, pod.Name, AnnotationStart, v)
	}
	if v, ok := a[AnnotationDiskSize]; ok {
		s.params.DiskSize = &v
	}
	if v, ok := a[AnnotationWorkspace]; ok && !strings.HasPrefix(v, "/") {
		return fmt.Errorf("pod %s/%s: annotation %s=%q: want an absolute guest path", pod.Namespace, pod.Name, AnnotationWorkspace, v)
	}
	return nil
}

// limitOrRequest is what a VM gets of a resource: its limit, else its
// request.
func limitOrRequest(r corev1.ResourceRequirements, name corev1.ResourceName) (resource.Quantity, bool) {
	if q, ok := r.Limits[name]; ok {
		return q, true
	}
	q, ok := r.Requests[name]
	return q, ok
}

// vcpus is the limit's CPU, else the request's, rounded up to whole vCPUs
// (1500m is 2): the scheduler accounts the request, the guest gets whole
// CPUs. 0 leaves the host's default.
func vcpus(r corev1.ResourceRequirements) (int, error) {
	q, ok := limitOrRequest(r, corev1.ResourceCPU)
	if !ok {
		return 0, nil
	}
	m := q.MilliValue()
	if m <= 0 || m > 64*1000 {
		return 0, fmt.Errorf("cpu %s: a VM has 1-64 vCPUs", q.String())
	}
	return int((m + 999) / 1000), nil
}

// memoryMiB is the limit's memory, else the request's, rounded up to MiB.
func memoryMiB(r corev1.ResourceRequirements) (int, error) {
	q, ok := limitOrRequest(r, corev1.ResourceMemory)
	if !ok {
		return 0, nil
	}
	b := q.Value()
	if b < 64<<20 || b > 1<<40 {
		return 0, fmt.Errorf("memory %s: a VM has 64Mi to 1Ti", q.String())
	}
	return int((b + (1<<20 - 1)) >> 20), nil
}

// The DisruptionTarget reasons kube-controller-manager gives a Pod it
// deletes because of its node (pkg/controller/tainteviction, podgc).
const (
	reasonTaintEviction = "DeletionByTaintManager"
	reasonPodGC         = "DeletionByPodGC"
)

// evicted reports whether the control plane deleted the Pod because its
// node went away (the taint-eviction controller, or the Pod GC after the
// node was declared out of service), not because anyone asked: such a
// deletion must not destroy a running VM by itself (docs/scale-out.md).
func evicted(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.DisruptionTarget && c.Status == corev1.ConditionTrue &&
			(c.Reason == reasonTaintEviction || c.Reason == reasonPodGC) {
			return true
		}
	}
	return false
}

// cpuQuantity is n whole CPUs; bytesQuantity n bytes.
func cpuQuantity(n int) resource.Quantity { return *resource.NewQuantity(int64(n), resource.DecimalSI) }

func bytesQuantity(n int64) resource.Quantity {
	if n < 0 {
		n = 0
	}
	if n > math.MaxInt64/2 {
		n = math.MaxInt64 / 2
	}
	return *resource.NewQuantity(n, resource.BinarySI)
}
