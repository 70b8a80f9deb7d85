// Package kubeclient is the CLI's way to a cluster of banger hosts
// ('banger --context NAME'): a VM there is a Pod that banger-vk runs as a
// banger VM (internal/vk). It creates such Pods, waits for them, runs
// commands in their guests through the API server's exec (streams and exit
// status intact), lists and deletes them. Only internal/cli imports it.
package kubeclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"

	"github.com/banger-dev/banger/internal/api"
)

// The label every VM Pod the CLI makes carries, and its one container's
// name. The annotations, taint and node label are api.Kube*, shared with
// banger-vk.
const (
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedBy      = "banger"
	ContainerName  = "vm"
)

// Cluster is one kubeconfig context and namespace.
type Cluster struct {
	cs   kubernetes.Interface
	rc   *rest.Config
	ns   string
	Name string // the API server's address, for messages
}

// Open reads the kubeconfig (empty: $KUBECONFIG, else ~/.kube/config) at
// kubeContext (empty: its current), in namespace ns (empty: the
// kubeconfig's, else default).
func Open(kubeconfig, kubeContext, ns string) (*Cluster, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kubeconfig != "" {
		rules.ExplicitPath = kubeconfig
	}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: kubeContext})
	rc, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	if ns == "" {
		if ns, _, err = cc.Namespace(); err != nil || ns == "" {
			ns = "default"
		}
	}
	return FromConfig(rc, ns)
}

// FromConfig is Open with a rest.Config already made.
func FromConfig(rc *rest.Config, ns string) (*Cluster, error) {
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	return &Cluster{cs: cs, rc: rc, ns: ns, Name: rc.Host}, nil
}

// Namespace is where the cluster's VM Pods are.
func (c *Cluster) Namespace() string { return c.ns }

// VMSpec is a VM to create as a Pod.
type VMSpec struct {
	Name      string // "" : generated ("vm-xxxxx")
	Image     string
	VCPU      int // 0: banger-vk's host default (1 vCPU is requested)
	MemoryMiB int // 0: the host default (256 MiB is requested)
	DiskSize  string
	NAT, Cold bool
	Workspace string // guest path the workspace goes to
	Labels    map[string]string
}

// PodFor is the Pod a VM is: one container of the image with no command
// (the VM is the workload), sized by requests equal to limits, tolerating
// the banger taint, and tolerating NotReady and unreachable nodes forever
// (a VM is not moved: its state is on the host; docs/scale-out.md).
func PodFor(s VMSpec, ns string) *corev1.Pod {
	vcpu, mem := s.VCPU, s.MemoryMiB
	if vcpu <= 0 {
		vcpu = 1
	}
	if mem <= 0 {
		mem = 256
	}
	res := corev1.ResourceList{
		corev1.ResourceCPU:    *resource.NewQuantity(int64(vcpu), resource.DecimalSI),
		corev1.ResourceMemory: *resource.NewQuantity(int64(mem)<<20, resource.BinarySI),
	}
	labels := map[string]string{LabelManagedBy: ManagedBy}
	for k, v := range s.Labels {
		labels[k] = v
	}
	ann := map[string]string{}
	if s.NAT {
		ann[api.KubeAnnotationNAT] = "true"
	}
	if s.Cold {
		ann[api.KubeAnnotationStart] = "cold"
	}
	if s.DiskSize != "" {
		ann[api.KubeAnnotationDiskSize] = s.DiskSize
	}
	if s.Workspace != "" {
		ann[api.KubeAnnotationWorkspace] = s.Workspace
	}
	f := false
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: ns, Labels: labels, Annotations: ann},
		Spec: corev1.PodSpec{
			Containers:                   []corev1.Container{{Name: ContainerName, Image: s.Image, Resources: corev1.ResourceRequirements{Requests: res, Limits: res.DeepCopy()}}},
			RestartPolicy:                corev1.RestartPolicyNever,
			NodeSelector:                 map[string]string{api.KubeNodeLabel: "true"},
			AutomountServiceAccountToken: &f,
			EnableServiceLinks:           &f,
			Tolerations: []corev1.Toleration{
				{Key: api.KubeTaintKey, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
				{Key: corev1.TaintNodeNotReady, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute},
				{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute},
			},
		},
	}
	if s.Name == "" {
		pod.GenerateName = "vm-"
	}
	return pod
}

// Create creates the VM's Pod.
func (c *Cluster) Create(ctx context.Context, s VMSpec) (*corev1.Pod, error) {
	pod, err := c.cs.CoreV1().Pods(c.ns).Create(ctx, PodFor(s, c.ns), metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create VM pod in %s: %w", c.ns, err)
	}
	return pod, nil
}

// ErrNotRunning is wrapped by Wait when the Pod ended or could not start;
// ErrUnschedulable (which wraps it too) when no node can take it.
var (
	ErrNotRunning    = errors.New("VM pod did not run")
	ErrUnschedulable = fmt.Errorf("%w: unschedulable", ErrNotRunning)
)

// Wait polls until the Pod is Running and Ready, reporting each new state
// to progress. A Pod the scheduler cannot place fails at once with the
// scheduler's reason ("0/2 nodes are available: 2 Insufficient cpu").
func (c *Cluster) Wait(ctx context.Context, name string, progress func(string)) (*corev1.Pod, error) {
	last := ""
	for {
		pod, err := c.cs.CoreV1().Pods(c.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		state, done, err := podState(pod)
		if state != last && progress != nil {
			progress(state)
			last = state
		}
		if done || err != nil {
			return pod, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("VM pod %s: %w (last: %s)", name, ctx.Err(), last)
		case <-time.After(time.Second):
		}
	}
}

// podState says where a Pod is, whether it is ready, or why it failed.
func podState(pod *corev1.Pod) (string, bool, error) {
	for _, cond := range pod.Status.Conditions {
		if cond.Type == corev1.PodScheduled && cond.Status == corev1.ConditionFalse && cond.Reason == corev1.PodReasonUnschedulable {
			return "unschedulable", false, fmt.Errorf("%w: %s: %s", ErrUnschedulable, pod.Name, cond.Message)
		}
	}
	switch pod.Status.Phase {
	case corev1.PodRunning:
		for _, cond := range pod.Status.Conditions {
			if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
				return "running on " + pod.Spec.NodeName, true, nil
			}
		}
		return "starting on " + pod.Spec.NodeName, false, nil
	case corev1.PodFailed, corev1.PodSucceeded:
		msg := pod.Status.Message
		if msg == "" {
			msg = pod.Status.Reason
		}
		return "ended", false, fmt.Errorf("%w: %s is %s: %s", ErrNotRunning, pod.Name, pod.Status.Phase, msg)
	}
	if pod.Spec.NodeName == "" {
		return "waiting for a node", false, nil
	}
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.State.Waiting != nil && cs.State.Waiting.Reason != "" {
			return cs.State.Waiting.Reason + " on " + pod.Spec.NodeName, false, nil
		}
	}
	return "pending on " + pod.Spec.NodeName, false, nil
}

// Exec runs argv in the Pod's guest through the API server, with the
// streams given (stdin nil: none), and returns its exit status.
func (c *Cluster) Exec(ctx context.Context, pod string, argv []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	req := c.cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(c.ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: ContainerName, Command: argv, Stdin: stdin != nil, Stdout: stdout != nil, Stderr: stderr != nil}, scheme.ParameterCodec)
	ex, err := remotecommand.NewSPDYExecutor(c.rc, http.MethodPost, req.URL())
	if err != nil {
		return 0, err
	}
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: stdin, Stdout: stdout, Stderr: stderr})
	var ce utilexec.CodeExitError
	if errors.As(err, &ce) {
		return ce.Code, nil
	}
	var ee utilexec.ExitError
	if errors.As(err, &ee) && ee.Exited() {
		return ee.ExitStatus(), nil
	}
	if err != nil {
		return 0, fmt.Errorf("exec in VM pod %s: %w", pod, err)
	}
	return 0, nil
}

// Runner runs commands in one Pod's guest (for code that runs a guest
// command the same way over SSH or over the cluster).
type Runner struct {
	C   *Cluster
	Pod string
}

// Run is Exec.
func (r Runner) Run(ctx context.Context, argv []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	return r.C.Exec(ctx, r.Pod, argv, stdin, stdout, stderr)
}

// Delete deletes the VM's Pod (banger-vk deletes the VM); a Pod already
// gone is not an error.
func (c *Cluster) Delete(ctx context.Context, name string) error {
	err := c.cs.CoreV1().Pods(c.ns).Delete(ctx, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// List is the namespace's VM Pods.
func (c *Cluster) List(ctx context.Context) ([]corev1.Pod, error) {
	l, err := c.cs.CoreV1().Pods(c.ns).List(ctx, metav1.ListOptions{LabelSelector: LabelManagedBy + "=" + ManagedBy})
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

// VCPUs is a Pod's CPU request as whole vCPUs (for listing).
func VCPUs(pod corev1.Pod) string {
	if len(pod.Spec.Containers) == 0 {
		return ""
	}
	q := pod.Spec.Containers[0].Resources.Requests[corev1.ResourceCPU]
	return strconv.FormatInt((q.MilliValue()+999)/1000, 10)
}
