package vk

import (
	"context"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/buildinfo"
)

// Capacity is what a banger host offers the scheduler.
type Capacity struct {
	CPUs      int
	MemoryB   int64
	StorageB  int64
	MaxPods   int
	Kubelet   int32 // the kubelet API's port, for the API server
	HostName  string
	NodeLabel map[string]string
}

// NodeSpec is the Node banger-vk registers: the host's real capacity, the
// banger taint (only Pods meant as VMs land here), labels to select banger
// hosts by, and the address and port the API server reaches the kubelet
// API on for logs, exec and port-forward.
func NodeSpec(name, ip string, c Capacity) corev1.Node {
	res := corev1.ResourceList{
		corev1.ResourceCPU:              cpuQuantity(c.CPUs),
		corev1.ResourceMemory:           bytesQuantity(c.MemoryB),
		corev1.ResourceEphemeralStorage: bytesQuantity(c.StorageB),
		corev1.ResourcePods:             cpuQuantity(c.MaxPods),
	}
	labels := map[string]string{
		"type":                   "virtual-kubelet",
		"kubernetes.io/hostname": name,
		"kubernetes.io/os":       "linux",
		"kubernetes.io/arch":     runtime.GOARCH,
		api.KubeNodeLabel:        "true",
	}
	for k, v := range c.NodeLabel {
		labels[k] = v
	}
	now := metav1.Now()
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	return corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec:       corev1.NodeSpec{Taints: []corev1.Taint{{Key: TaintKey, Value: TaintValue, Effect: corev1.TaintEffectNoSchedule}}},
		Status: corev1.NodeStatus{
			Capacity:        res,
			Allocatable:     res.DeepCopy(),
			Phase:           corev1.NodeRunning,
			Addresses:       []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}, {Type: corev1.NodeHostName, Address: c.HostName}},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: c.Kubelet}},
			NodeInfo: corev1.NodeSystemInfo{OperatingSystem: "linux", Architecture: runtime.GOARCH,
				KubeletVersion: "banger-vk " + buildinfo.Get().Version, ContainerRuntimeVersion: "banger://" + buildinfo.Get().Version},
			Conditions: []corev1.NodeCondition{
				cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "banger-vk is ready"),
				cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", ""),
				cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", ""),
				cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", ""),
				cond(corev1.NodeNetworkUnavailable, corev1.ConditionFalse, "RouteCreated", ""),
			},
		},
	}
}

// NodeProvider keeps the Node's status: Ready while bangerd answers (after
// a grace, so a daemon restart does not flap it), and the host's images,
// so the scheduler's image-locality scoring prefers hosts that have a
// Pod's image.
type NodeProvider struct {
	Daemon Daemon
	Node   *corev1.Node
	Every  time.Duration // 10 s
	Grace  time.Duration // 40 s
	Log    *slog.Logger

	mu       sync.Mutex
	lastOK   time.Time
	lastSent *corev1.NodeStatus
}

// Ping is virtual-kubelet's heartbeat; the daemon's health is reported in
// the Ready condition instead, so a Ping never fails.
func (n *NodeProvider) Ping(context.Context) error { return nil }

// NotifyNodeStatus starts the status loop.
func (n *NodeProvider) NotifyNodeStatus(ctx context.Context, cb func(*corev1.Node)) {
	if n.Every <= 0 {
		n.Every = 10 * time.Second
	}
	if n.Grace <= 0 {
		n.Grace = 40 * time.Second
	}
	n.lastOK = time.Now()
	go func() {
		t := time.NewTicker(n.Every)
		defer t.Stop()
		for {
			n.update(ctx, cb)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

func (n *NodeProvider) update(ctx context.Context, cb func(*corev1.Node)) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var images []api.Image
	err := n.Daemon.Call(cctx, api.MethodImageList, nil, &images)
	n.mu.Lock()
	defer n.mu.Unlock()
	node := n.Node.DeepCopy()
	ready := true
	if err == nil {
		n.lastOK = time.Now()
		node.Status.Images = nodeImages(images)
	} else {
		ready = time.Since(n.lastOK) < n.Grace
		if n.lastSent != nil {
			node.Status.Images = n.lastSent.Images
		}
	}
	for i := range node.Status.Conditions {
		c := &node.Status.Conditions[i]
		if c.Type != corev1.NodeReady {
			continue
		}
		c.Status, c.Reason, c.Message = corev1.ConditionTrue, "KubeletReady", "banger-vk is ready"
		if !ready {
			c.Status, c.Reason, c.Message = corev1.ConditionFalse, "BangerdUnreachable", "bangerd does not answer: "+err.Error()
		}
	}
	if n.lastSent != nil && sameStatus(*n.lastSent, node.Status) {
		return
	}
	n.lastSent = node.Status.DeepCopy()
	n.Node.Status = node.Status
	cb(node)
}

// sameStatus compares what banger-vk changes (condition states, images).
func sameStatus(a, b corev1.NodeStatus) bool {
	if len(a.Conditions) != len(b.Conditions) || len(a.Images) != len(b.Images) {
		return false
	}
	for i := range a.Conditions {
		if a.Conditions[i].Status != b.Conditions[i].Status {
			return false
		}
	}
	for i := range a.Images {
		if !slices.Equal(a.Images[i].Names, b.Images[i].Names) || a.Images[i].SizeBytes != b.Images[i].SizeBytes {
			return false
		}
	}
	return true
}

// nodeImages names each image as a Pod would (and as the scheduler
// normalises it, with ":latest").
func nodeImages(images []api.Image) []corev1.ContainerImage {
	out := make([]corev1.ContainerImage, 0, len(images))
	for _, im := range images {
		names := []string{im.Name, im.Name + ":latest"}
		if im.Source != "" && im.Source != im.Name {
			names = append(names, im.Source)
		}
		out = append(out, corev1.ContainerImage{Names: names, SizeBytes: im.SizeBytes})
	}
	return out
}

// GetStatsSummary reports the node's VMs' CPU and memory ('kubectl top'
// through metrics-server), from the daemon's vm.stats.
func (p *Provider) GetStatsSummary(ctx context.Context) (*statsv1alpha1.Summary, error) {
	vms, err := p.nodeVMs(ctx)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(vms))
	for _, vm := range vms {
		if vm.State == api.StateRunning {
			names = append(names, vm.Name)
		}
	}
	var stats []api.VMStats
	if len(names) > 0 {
		if err := p.cfg.Daemon.Call(ctx, api.MethodVMStats, api.VMStatsParams{Names: names}, &stats); err != nil {
			return nil, err
		}
	}
	now := metav1.Now()
	sum := &statsv1alpha1.Summary{Node: statsv1alpha1.NodeStats{NodeName: p.cfg.NodeName, StartTime: now}}
	byName := map[string]api.VMStats{}
	for _, s := range stats {
		byName[s.Name] = s
	}
	for _, vm := range vms {
		s, ok := byName[vm.Name]
		if !ok {
			continue
		}
		nano := uint64(s.CPUPercent * 1e7)
		mem := uint64(max(s.GuestMemUsedBytes, 0))
		ps := statsv1alpha1.PodStats{
			PodRef:    statsv1alpha1.PodReference{Name: vm.Labels[LabelPod], Namespace: vm.Labels[LabelNamespace], UID: vm.Labels[LabelPodUID]},
			StartTime: parseTime(vm.Runtime.StartedAt, vm.CreatedAt),
			CPU:       &statsv1alpha1.CPUStats{Time: now, UsageNanoCores: &nano},
			Memory:    &statsv1alpha1.MemoryStats{Time: now, WorkingSetBytes: &mem},
		}
		sum.Pods = append(sum.Pods, ps)
	}
	return sum, nil
}

// GetMetricsResource has no Prometheus metrics yet (GetStatsSummary has
// the figures).
func (p *Provider) GetMetricsResource(context.Context) ([]*dto.MetricFamily, error) { return nil, nil }
