package kubeclient

import (
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/banger-dev/banger/internal/api"
)

func TestPodForIsAVMPod(t *testing.T) {
	p := PodFor(VMSpec{Image: "tiny", VCPU: 2, MemoryMiB: 512, NAT: true, Cold: true, DiskSize: "4G", Workspace: "/root/repo", Labels: map[string]string{"team": "web"}}, "ci")
	c := p.Spec.Containers[0]
	if p.GenerateName != "vm-" || p.Namespace != "ci" || c.Name != ContainerName || c.Image != "tiny" || len(c.Command) != 0 {
		t.Fatalf("pod: %+v", p)
	}
	if cpu := c.Resources.Limits[corev1.ResourceCPU]; cpu.Value() != 2 {
		t.Fatalf("cpu limit %s", cpu.String())
	}
	if mem := c.Resources.Requests[corev1.ResourceMemory]; mem.Value() != 512<<20 {
		t.Fatalf("memory request %s", mem.String())
	}
	a := p.Annotations
	if a[api.KubeAnnotationNAT] != "true" || a[api.KubeAnnotationStart] != "cold" || a[api.KubeAnnotationDiskSize] != "4G" || a[api.KubeAnnotationWorkspace] != "/root/repo" {
		t.Fatalf("annotations %v", a)
	}
	if p.Labels[LabelManagedBy] != ManagedBy || p.Labels["team"] != "web" || p.Spec.NodeSelector[api.KubeNodeLabel] != "true" {
		t.Fatalf("labels %v selector %v", p.Labels, p.Spec.NodeSelector)
	}
	tol := map[string]bool{}
	for _, x := range p.Spec.Tolerations {
		if x.TolerationSeconds == nil {
			tol[x.Key] = true
		}
	}
	for _, k := range []string{api.KubeTaintKey, corev1.TaintNodeNotReady, corev1.TaintNodeUnreachable} {
		if !tol[k] {
			t.Errorf("no lasting toleration of %s", k)
		}
	}
	if d := PodFor(VMSpec{Name: "x", Image: "tiny"}, "ci"); d.Name != "x" || d.GenerateName != "" {
		t.Fatalf("named pod: %q %q", d.Name, d.GenerateName)
	}
}

func TestPodState(t *testing.T) {
	pod := func(phase corev1.PodPhase, node string, conds ...corev1.PodCondition) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: corev1.PodSpec{NodeName: node}, Status: corev1.PodStatus{Phase: phase, Conditions: conds}}
	}
	ready := corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionTrue}
	unsched := corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable, Message: "0/2 nodes are available: 2 Insufficient cpu."}
	if s, done, err := podState(pod(corev1.PodPending, "")); done || err != nil || s != "waiting for a node" {
		t.Fatalf("pending: %s %v %v", s, done, err)
	}
	if _, done, err := podState(pod(corev1.PodPending, "", unsched)); done || !errors.Is(err, ErrUnschedulable) || !errors.Is(err, ErrNotRunning) || !strings.Contains(err.Error(), "Insufficient cpu") {
		t.Fatalf("unschedulable: %v %v", done, err)
	}
	if s, done, err := podState(pod(corev1.PodRunning, "host-a", ready)); !done || err != nil || s != "running on host-a" {
		t.Fatalf("running: %s %v %v", s, done, err)
	}
	if _, done, _ := podState(pod(corev1.PodRunning, "host-a")); done {
		t.Fatal("running but not ready counted as done")
	}
	failed := pod(corev1.PodFailed, "host-a")
	failed.Status.Message = "VM create failed: no image"
	if _, _, err := podState(failed); !errors.Is(err, ErrNotRunning) || !strings.Contains(err.Error(), "no image") {
		t.Fatalf("failed: %v", err)
	}
}
