package vk

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"time"

	vkerrdefs "github.com/virtual-kubelet/virtual-kubelet/errdefs"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1listers "k8s.io/client-go/listers/core/v1"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/errdefs"
)

// Daemon is the local bangerd, over its RPC (client.Client.Call).
type Daemon interface {
	Call(ctx context.Context, method string, params, out any) error
}

// Config sets up a Provider.
type Config struct {
	NodeName string
	// HostIP is the node's address, reported as the Pods' host IP.
	HostIP string
	Daemon Daemon
	// Poll is how often VM states are read for the Pods' status (3 s).
	Poll time.Duration
	Log  *slog.Logger
	// Pods is the API server's view of the node's Pods (virtual-kubelet's
	// informer), once synced: status updates keep the conditions others
	// set (DisruptionTarget), and VMs whose Pods are gone are deleted.
	// Nil in tests without an API server.
	Pods corev1listers.PodLister
}

// Provider runs Pods as banger VMs on the local bangerd. It implements
// virtual-kubelet's PodLifecycleHandler and PodNotifier, and the kubelet
// API's logs, exec and port-forward (guest.go).
//
// It keeps no state of its own that matters: each VM carries its Pod's
// labels (LabelPodUID…), so after a restart of banger-vk or bangerd the
// Pods are found again from the VMs. Pod keys ("namespace/name") map to
// entries; every entry's VM work runs in its own goroutine, so a slow boot
// never blocks the pod controller.
type Provider struct {
	cfg Config
	log *slog.Logger

	mu     sync.Mutex
	pods   map[string]*entry
	notify func(*corev1.Pod)
}

// entry is one Pod banger-vk runs (or is making a VM for).
type entry struct {
	pod  *corev1.Pod // as last given; never mutated
	spec spec
	obs  observed
	last *corev1.PodStatus // last status sent
	// done closes when the VM work (create, adopt, job start) ended.
	done   chan struct{}
	cancel context.CancelFunc
}

// New makes a Provider; Run starts its status loop.
func New(cfg Config) *Provider {
	if cfg.Poll <= 0 {
		cfg.Poll = 3 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Provider{cfg: cfg, log: cfg.Log, pods: map[string]*entry{}}
}

func key(ns, name string) string { return ns + "/" + name }

// NotifyPods registers the pod controller's callback (it must not block).
func (p *Provider) NotifyPods(_ context.Context, cb func(*corev1.Pod)) {
	p.mu.Lock()
	p.notify = cb
	p.mu.Unlock()
}

// CreatePod starts making the Pod's VM (or adopts the VM it already has:
// after a restart, the Pod's UID label finds it) and returns at once; the
// status loop reports the boot.
func (p *Provider) CreatePod(_ context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := key(pod.Namespace, pod.Name)
	if e, ok := p.pods[k]; ok && e.pod.UID == pod.UID {
		e.pod = pod.DeepCopy()
		return nil
	}
	e := &entry{pod: pod.DeepCopy(), done: make(chan struct{})}
	p.pods[k] = e
	s, err := podSpec(pod, p.cfg.NodeName)
	if err != nil {
		e.obs.createErr = err.Error()
		close(e.done)
		go p.publish(k)
		return nil
	}
	e.spec = s
	e.obs.hasCmd = len(s.command) > 0
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go p.makeVM(ctx, k, e)
	return nil
}

// UpdatePod takes the Pod's newer object; a Pod banger-vk does not know yet
// (the first sync after a restart) is adopted as CreatePod would.
func (p *Provider) UpdatePod(ctx context.Context, pod *corev1.Pod) error {
	return p.CreatePod(ctx, pod)
}

// makeVM finds or creates the Pod's VM, then starts its command, recording
// each outcome in e.obs.
func (p *Provider) makeVM(ctx context.Context, k string, e *entry) {
	defer close(e.done)
	defer p.publish(k)
	log := p.log.With("pod", k)
	vm, err := p.findVM(ctx, e.pod.UID)
	// bangerd restarting (or not started yet): wait for it rather than
	// fail a Pod whose VM may well be running.
	for i := 0; err != nil && isUnreachable(err) && i < 40 && sleep(ctx, 3*time.Second); i++ {
		vm, err = p.findVM(ctx, e.pod.UID)
	}
	if err == nil && vm == nil {
		vm, err = p.createVM(ctx, e)
	}
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("pod VM", "err", err)
			p.set(e, func(o *observed) { o.createErr = err.Error() })
		}
		return
	}
	p.set(e, func(o *observed) { o.vm = vm; o.job = vm.Labels[LabelJob] })
	if !e.obs.hasCmd {
		return
	}
	if vm.State == api.StateRunning || vm.State == api.StateParked || vm.State == api.StatePaused {
		go p.runCommand(ctx, k, e, *vm)
	}
}

// findVM is the VM labelled with the Pod's UID, if any.
func (p *Provider) findVM(ctx context.Context, uid types.UID) (*api.VM, error) {
	var vms []api.VM
	if err := p.cfg.Daemon.Call(ctx, api.MethodVMList, api.VMListParams{Filters: []string{"label=" + LabelPodUID + "=" + string(uid)}}, &vms); err != nil {
		return nil, fmt.Errorf("list VMs: %w", err)
	}
	if len(vms) == 0 {
		return nil, nil
	}
	return &vms[0], nil
}

// createVM pulls the image when it is an OCI reference the host lacks,
// then creates the VM (returning when it is ready). A VM of the name that
// appeared meanwhile (another banger-vk, or this one before a restart) is
// adopted rather than duplicated.
func (p *Provider) createVM(ctx context.Context, e *entry) (*api.VM, error) {
	params := e.spec.params
	img, err := p.ensureImage(ctx, params.Image)
	if err != nil {
		return nil, err
	}
	params.Image = img
	var vm api.VM
	err = p.cfg.Daemon.Call(ctx, api.MethodVMCreate, params, &vm)
	if errdefs.CodeOf(err) == errdefs.AlreadyExists {
		if found, ferr := p.findVM(ctx, e.pod.UID); ferr == nil && found != nil {
			return found, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("create VM %s: %w", params.Name, err)
	}
	return &vm, nil
}

// ensureImage returns the image to boot: a registered or built-in name
// itself, or, for an OCI reference the host does not have, what image.pull
// registers.
func (p *Provider) ensureImage(ctx context.Context, ref string) (string, error) {
	var im api.Image
	err := p.cfg.Daemon.Call(ctx, api.MethodImageShow, api.ImageRef{Name: ref}, &im)
	if err == nil {
		return im.Name, nil
	}
	if errdefs.CodeOf(err) != errdefs.NotFound {
		return "", fmt.Errorf("image %s: %w", ref, err)
	}
	if !strings.ContainsAny(ref, "/:.") {
		return ref, nil // a built-in image is made on first use; vm.create names what is wrong otherwise
	}
	if err := p.cfg.Daemon.Call(ctx, api.MethodImagePull, api.ImagePullParams{Ref: ref}, &im); err != nil {
		return "", fmt.Errorf("pull image %s: %w", ref, err)
	}
	return im.Name, nil
}

// set changes an entry's observation under the lock.
func (p *Provider) set(e *entry, f func(*observed)) {
	p.mu.Lock()
	f(&e.obs)
	p.mu.Unlock()
}

// DeletePod deletes the Pod's VM, except when the control plane evicted the
// Pod because its node went NotReady: then the VM is kept running and
// detached (labelled LabelEvicted, no longer this node's), and only the Pod
// ends. Deleting is idempotent; a VM still being made is deleted once made.
func (p *Provider) DeletePod(ctx context.Context, pod *corev1.Pod) error {
	k := key(pod.Namespace, pod.Name)
	p.mu.Lock()
	e := p.pods[k]
	p.mu.Unlock()
	if e != nil && e.pod.UID == pod.UID {
		if e.cancel != nil {
			e.cancel()
		}
		select {
		case <-e.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	vm, err := p.findVM(ctx, pod.UID)
	if err != nil {
		return err
	}
	if vm != nil {
		if evicted(pod) {
			err = p.detach(ctx, *vm, k)
		} else {
			err = p.cfg.Daemon.Call(ctx, api.MethodVMDelete, api.VMRef{Name: vm.Name}, nil)
			if errdefs.CodeOf(err) == errdefs.NotFound {
				err = nil
			}
		}
		if err != nil {
			return fmt.Errorf("pod %s: %w", k, err)
		}
	}
	p.mu.Lock()
	if cur := p.pods[k]; cur != nil && cur.pod.UID == pod.UID {
		delete(p.pods, k)
	}
	cb := p.notify
	p.mu.Unlock()
	if cb != nil {
		cb(terminated(pod, vm != nil && evicted(pod)))
	}
	return nil
}

// detach keeps an evicted Pod's VM: it is no longer the node's (GetPods
// stops listing it, so it is never deleted as a dangling Pod), and says
// which Pod it ran.
func (p *Provider) detach(ctx context.Context, vm api.VM, k string) error {
	p.log.Warn("pod evicted by the control plane; its VM is kept running, detached", "pod", k, "vm", vm.Name)
	return p.cfg.Daemon.Call(ctx, api.MethodVMSet, api.VMSetParams{Name: vm.Name,
		Labels: map[string]string{LabelEvicted: k}, RemoveLabels: []string{LabelNode, LabelPodUID}}, nil)
}

// terminated is the Pod with every container ended, as virtual-kubelet
// wants it after DeletePod.
func terminated(pod *corev1.Pod, kept bool) *corev1.Pod {
	out := pod.DeepCopy()
	now := metav1.Now()
	out.Status.Phase = corev1.PodSucceeded
	out.Status.Reason = "VMDeleted"
	if kept {
		out.Status.Phase, out.Status.Reason = corev1.PodFailed, "Evicted"
		out.Status.Message = "the node went NotReady and the Pod was evicted; banger kept its VM running, detached (label " + LabelEvicted + ")"
	}
	for i := range out.Status.ContainerStatuses {
		cs := &out.Status.ContainerStatuses[i]
		cs.Ready = false
		cs.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: out.Status.Reason, FinishedAt: now}}
	}
	for i := range out.Status.Conditions {
		if c := &out.Status.Conditions[i]; c.Type == corev1.PodReady || c.Type == corev1.ContainersReady {
			c.Status = corev1.ConditionFalse
		}
	}
	return out
}

// GetPod is the Pod as banger-vk runs it. A Pod it does not hold in memory
// but whose VM exists (a restart) is returned from the VM's labels, so the
// pod controller hands it over again with UpdatePod.
func (p *Provider) GetPod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	p.mu.Lock()
	e := p.pods[key(ns, name)]
	if e != nil {
		out := e.pod.DeepCopy()
		out.Status = p.statusLocked(e)
		p.mu.Unlock()
		return out, nil
	}
	p.mu.Unlock()
	vms, err := p.nodeVMs(ctx, "label="+LabelNamespace+"="+ns, "label="+LabelPod+"="+name)
	if err != nil {
		return nil, err
	}
	if len(vms) == 0 {
		return nil, vkerrdefs.NotFoundf("pod %s/%s has no VM on this node", ns, name)
	}
	return skeleton(vms[0]), nil
}

// GetPodStatus is GetPod's status.
func (p *Provider) GetPodStatus(ctx context.Context, ns, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

// GetPods lists the node's Pods from its VMs (the labels name them): what
// virtual-kubelet compares with the API server at start to delete VMs whose
// Pods are gone.
func (p *Provider) GetPods(ctx context.Context) ([]*corev1.Pod, error) {
	vms, err := p.nodeVMs(ctx)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*corev1.Pod
	for _, vm := range vms {
		if e := p.pods[key(vm.Labels[LabelNamespace], vm.Labels[LabelPod])]; e != nil && string(e.pod.UID) == vm.Labels[LabelPodUID] {
			pod := e.pod.DeepCopy()
			pod.Status = p.statusLocked(e)
			out = append(out, pod)
			continue
		}
		out = append(out, skeleton(vm))
	}
	return out, nil
}

// nodeVMs lists this node's Pod VMs, narrowed by filters.
func (p *Provider) nodeVMs(ctx context.Context, filters ...string) ([]api.VM, error) {
	var vms []api.VM
	f := append([]string{"label=" + LabelNode + "=" + p.cfg.NodeName}, filters...)
	if err := p.cfg.Daemon.Call(ctx, api.MethodVMList, api.VMListParams{Filters: f}, &vms); err != nil {
		return nil, fmt.Errorf("list VMs: %w", err)
	}
	return vms, nil
}

// skeleton is a Pod known only from its VM's labels.
func skeleton(vm api.VM) *corev1.Pod {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: vm.Labels[LabelNamespace], Name: vm.Labels[LabelPod],
		UID: types.UID(vm.Labels[LabelPodUID])}}
	pod.Status.Phase = corev1.PodRunning
	if vm.State != api.StateRunning {
		pod.Status.Phase = corev1.PodPending
	}
	pod.Status.PodIP = vm.IP
	return pod
}

func (p *Provider) statusLocked(e *entry) corev1.PodStatus {
	if len(e.pod.Spec.Containers) == 0 {
		return e.pod.Status
	}
	st := podStatus(e.pod, e.obs, p.cfg.HostIP)
	st.Conditions = append(st.Conditions, p.foreignConditions(e.pod)...)
	return st
}

// foreignConditions are the Pod's conditions banger-vk does not own (the
// control plane's DisruptionTarget): its status updates replace the whole
// status, and must not erase the mark the eviction rule reads.
func (p *Provider) foreignConditions(pod *corev1.Pod) []corev1.PodCondition {
	conds := pod.Status.Conditions
	if p.cfg.Pods != nil {
		if cur, err := p.cfg.Pods.Pods(pod.Namespace).Get(pod.Name); err == nil && cur.UID == pod.UID {
			conds = cur.Status.Conditions
		}
	}
	var out []corev1.PodCondition
	for _, c := range conds {
		switch c.Type {
		case corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady:
		default:
			out = append(out, c)
		}
	}
	return out
}

// publish sends the entry's status when it changed.
func (p *Provider) publish(k string) {
	p.mu.Lock()
	e := p.pods[k]
	cb := p.notify
	if e == nil || cb == nil {
		p.mu.Unlock()
		return
	}
	st := p.statusLocked(e)
	if e.last != nil && reflect.DeepEqual(*e.last, st) {
		p.mu.Unlock()
		return
	}
	e.last = &st
	pod := e.pod.DeepCopy()
	pod.Status = st
	p.mu.Unlock()
	cb(pod)
}

// Run refreshes the Pods' VM states every Poll until ctx ends.
func (p *Provider) Run(ctx context.Context) {
	t := time.NewTicker(p.cfg.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := p.refresh(ctx); err != nil && ctx.Err() == nil {
			p.log.Debug("refresh pod status", "err", err)
		}
	}
}

// refresh reads the node's VMs once and publishes what changed. A VM that
// vanished (deleted on the host) fails its Pod.
func (p *Provider) refresh(ctx context.Context) error {
	vms, err := p.nodeVMs(ctx)
	if err != nil {
		return err
	}
	byUID := map[string]api.VM{}
	for _, vm := range vms {
		byUID[vm.Labels[LabelPodUID]] = vm
	}
	p.sweep(ctx, vms)
	p.mu.Lock()
	var keys []string
	for k, e := range p.pods {
		select {
		case <-e.done:
		default:
			continue // still being made; makeVM publishes
		}
		if e.obs.createErr != "" {
			continue
		}
		if vm, ok := byUID[string(e.pod.UID)]; ok {
			v := vm
			e.obs.vm = &v
		} else if e.obs.vm != nil {
			e.obs.createErr = fmt.Sprintf("VM %s was deleted on the host", e.obs.vm.Name)
		}
		keys = append(keys, k)
	}
	p.mu.Unlock()
	for _, k := range keys {
		p.publish(k)
	}
	return nil
}

// sweep deletes the node's VMs whose Pods are gone from the API server
// (deleted while banger-vk was down, or while their VM was still being
// made): virtual-kubelet sweeps only once, at start.
func (p *Provider) sweep(ctx context.Context, vms []api.VM) {
	if p.cfg.Pods == nil {
		return
	}
	for _, vm := range vms {
		ns, name, uid := vm.Labels[LabelNamespace], vm.Labels[LabelPod], vm.Labels[LabelPodUID]
		p.mu.Lock()
		e := p.pods[key(ns, name)]
		known := e != nil && string(e.pod.UID) == uid
		p.mu.Unlock()
		if known {
			continue
		}
		pod, err := p.cfg.Pods.Pods(ns).Get(name)
		if err == nil && string(pod.UID) == uid {
			continue // the pod controller hands it over
		}
		if err != nil && !apierrors.IsNotFound(err) {
			continue
		}
		p.log.Info("deleting a VM whose Pod is gone", "vm", vm.Name, "pod", key(ns, name))
		if err := p.cfg.Daemon.Call(ctx, api.MethodVMDelete, api.VMRef{Name: vm.Name}, nil); err != nil && errdefs.CodeOf(err) != errdefs.NotFound {
			p.log.Warn("delete VM of a gone Pod", "vm", vm.Name, "err", err)
		}
	}
}

var errNoVM = errors.New("no VM")

// vmOf is the running Pod's VM, for exec, logs and port-forward.
func (p *Provider) vmOf(ctx context.Context, ns, name string) (api.VM, error) {
	p.mu.Lock()
	e := p.pods[key(ns, name)]
	var vm *api.VM
	if e != nil && e.obs.vm != nil {
		v := *e.obs.vm
		vm = &v
	}
	p.mu.Unlock()
	if vm != nil {
		return *vm, nil
	}
	vms, err := p.nodeVMs(ctx, "label="+LabelNamespace+"="+ns, "label="+LabelPod+"="+name)
	if err != nil {
		return api.VM{}, err
	}
	if len(vms) == 0 {
		return api.VM{}, vkerrdefs.AsNotFound(fmt.Errorf("pod %s/%s: %w on node %s", ns, name, errNoVM, p.cfg.NodeName))
	}
	return vms[0], nil
}
