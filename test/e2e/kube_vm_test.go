package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/kubeclient"
	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/internal/vk"
)

// vkHost is one banger host of the cluster: its own netns, bangerd and
// banger-vk, linked to the control plane's netns.
type vkHost struct {
	*vmEnv
	k                     *kubeCluster
	name, ip              string
	kubeconfig, cert, key string
	vk                    *exec.Cmd
}

func startVKHost(t *testing.T, k *kubeCluster, name string, idx int) *vkHost {
	t.Helper()
	h := &vkHost{vmEnv: newVMEnv(t), k: k, name: name}
	h.ip = k.linkHost(t, h.ns, idx)
	h.kubeconfig, h.cert, h.key = k.nodeCreds(t, name, h.ip)
	h.must("daemon", "status")
	h.startVK()
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(h.home, "banger-vk.log"))
			t.Logf("banger-vk %s log (tail):\n%s", name, tail(string(b), 6000))
		}
		h.stopVK(syscall.SIGTERM)
	})
	return h
}

func (h *vkHost) startVK() {
	h.t.Helper()
	cmd := exec.Command("ip", "netns", "exec", h.ns, filepath.Join(h.bin, "banger-vk"),
		"--kubeconfig", h.kubeconfig, "--node-name", h.name, "--address", h.ip, "--listen", h.ip+":10250",
		"--tls-cert", h.cert, "--tls-key", h.key, "--client-ca", h.k.caFile, "--log-level", "debug")
	cmd.Env = h.environ()
	logf, _ := os.OpenFile(filepath.Join(h.home, "banger-vk.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	go cmd.Wait()
	h.vk = cmd
}

func (h *vkHost) stopVK(sig syscall.Signal) {
	if h.vk == nil || h.vk.Process == nil {
		return
	}
	pid := h.vk.Process.Pid
	syscall.Kill(-pid, sig)
	for i := 0; i < 200 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	h.vk = nil
}

// vms lists the host's VMs.
func (h *vkHost) vms() []api.VM {
	h.t.Helper()
	var vms []api.VM
	if err := json.Unmarshal([]byte(h.must("vm", "list", "--json")), &vms); err != nil {
		h.t.Fatal(err)
	}
	return vms
}

func waitUntil(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func nodeReady(cs kubernetes.Interface, name string) bool {
	n, err := cs.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return false
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// vmPod is a Pod banger-vk runs as a VM of the tiny image.
func vmPod(name, cpu string) *corev1.Pod {
	p := kubeclient.PodFor(kubeclient.VMSpec{Name: name, Image: "tiny"}, "default")
	res := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse("256Mi")}
	p.Spec.Containers[0].Resources = corev1.ResourceRequirements{Requests: res, Limits: res.DeepCopy()}
	return p
}

func podRunning(cs kubernetes.Interface, name string) (*corev1.Pod, bool) {
	p, err := cs.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return nil, false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return p, p.Status.Phase == corev1.PodRunning
		}
	}
	return p, false
}

// TestKubeVMPods runs two banger hosts as Kubernetes nodes under a real
// control plane (kube-apiserver, etcd, kube-scheduler,
// kube-controller-manager built from Go modules), each a real bangerd with
// tiny guests in its own netns, and checks scheduling by capacity,
// ResourceQuota, kubectl exec and port-forward, survival of a banger-vk and
// bangerd restart, and 'banger --context' runs.
func TestKubeVMPods(t *testing.T) {
	testutil.RequiresGuest(t)
	k := startKubeCluster(t)
	cs := k.client(t)
	a := startVKHost(t, k, "host-a", 1)
	b := startVKHost(t, k, "host-b", 2)
	hosts := map[string]*vkHost{a.name: a, b.name: b}
	waitUntil(t, 90*time.Second, "both nodes Ready", func() bool { return nodeReady(cs, a.name) && nodeReady(cs, b.name) })

	placed := kubeScheduling(t, k, cs)
	kubeQuota(t, cs)
	kubeCommandPod(t, k, cs, placed[0])
	kubeExecAndPortForward(t, k, placed[0])
	kubeletAPIRefusesStrangers(t, k, a, placed[0])
	kubeRestartSurvives(t, k, cs, hosts, placed[0])
	kubeEvictionKeepsVM(t, cs, hosts, placed[1])

	// Deleting the Pods deletes their VMs.
	for _, n := range []string{"sched-1", "sched-2", "sched-3"} {
		cs.CoreV1().Pods("default").Delete(context.Background(), n, metav1.DeleteOptions{})
	}
	waitUntil(t, 2*time.Minute, "the VMs of deleted Pods to go", func() bool { return len(a.vms()) == 0 && len(b.vms()) == 1 })
	for _, vm := range b.vms() { // the evicted Pod's VM, kept: the owner deletes it
		b.must("vm", "delete", vm.Name)
	}

	kubeContextRun(t, k)
	waitUntil(t, 2*time.Minute, "the --rm run's VM to go", func() bool { return len(a.vms()) == 0 && len(b.vms()) == 0 })
}

// kubeScheduling: two 1.5-CPU VM Pods land on the two 2-CPU hosts, one
// each; a third stays Pending, Unschedulable for "Insufficient cpu".
func kubeScheduling(t *testing.T, k *kubeCluster, cs kubernetes.Interface) []*corev1.Pod {
	ctx := context.Background()
	for _, n := range []string{"sched-1", "sched-2"} {
		p := vmPod(n, "1500m")
		if n == "sched-2" {
			// Evicted 5 s after its node becomes unreachable (kubeEviction).
			five := int64(5)
			for i := range p.Spec.Tolerations {
				if p.Spec.Tolerations[i].Key == corev1.TaintNodeUnreachable {
					p.Spec.Tolerations[i].TolerationSeconds = &five
				}
			}
		}
		if _, err := cs.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var placed []*corev1.Pod
	waitUntil(t, 4*time.Minute, "sched-1 and sched-2 Running", func() bool {
		p1, ok1 := podRunning(cs, "sched-1")
		p2, ok2 := podRunning(cs, "sched-2")
		placed = []*corev1.Pod{p1, p2}
		return ok1 && ok2
	})
	if placed[0].Spec.NodeName == placed[1].Spec.NodeName {
		t.Fatalf("both Pods on %s: the scheduler should have spread them by capacity", placed[0].Spec.NodeName)
	}
	if _, err := cs.CoreV1().Pods("default").Create(ctx, vmPod("sched-3", "1500m"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var msg string
	waitUntil(t, time.Minute, "sched-3 Unschedulable", func() bool {
		p, err := cs.CoreV1().Pods("default").Get(ctx, "sched-3", metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
				msg = c.Message
				return true
			}
		}
		return false
	})
	if !strings.Contains(msg, "Insufficient cpu") {
		t.Fatalf("sched-3 unschedulable for %q, want Insufficient cpu", msg)
	}
	t.Logf("placed sched-1 on %s, sched-2 on %s; sched-3: %s", placed[0].Spec.NodeName, placed[1].Spec.NodeName, msg)
	return placed
}

// kubeCommandPod: a Pod with a command runs it once as a guest job, with
// its env; the command's exit status ends the Pod, its output is kubectl
// logs; a Pod without one shows its VM's console. Deleting the Pod deletes
// its VM.
func kubeCommandPod(t *testing.T, k *kubeCluster, cs kubernetes.Interface, sandbox *corev1.Pod) {
	ctx := context.Background()
	p := vmPod("job-1", "500m")
	p.Spec.Containers[0].Command = []string{"sh", "-c", "echo hello-from-job; echo greeting=$GREETING; exit 3"}
	p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "GREETING", Value: "hi"}}
	if _, err := cs.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got *corev1.Pod
	waitUntil(t, 4*time.Minute, "job-1 to end", func() bool {
		got, _ = cs.CoreV1().Pods("default").Get(ctx, "job-1", metav1.GetOptions{})
		return got != nil && (got.Status.Phase == corev1.PodFailed || got.Status.Phase == corev1.PodSucceeded)
	})
	cst := got.Status.ContainerStatuses
	if got.Status.Phase != corev1.PodFailed || len(cst) != 1 || cst[0].State.Terminated == nil || cst[0].State.Terminated.ExitCode != 3 {
		t.Fatalf("job-1: phase %s, container %+v (want Failed, exit 3)", got.Status.Phase, cst)
	}
	out, stderr, err := k.kubectl(t, "logs", "job-1")
	if err != nil || !strings.Contains(out, "hello-from-job") || !strings.Contains(out, "greeting=hi") {
		t.Fatalf("kubectl logs job-1: %q %v %s", out, err, stderr)
	}
	out, stderr, err = k.kubectl(t, "logs", sandbox.Name)
	if err != nil || !strings.Contains(out, "BANGER-READY") {
		t.Fatalf("kubectl logs %s (its console): %q %v %s", sandbox.Name, tail(out, 500), err, stderr)
	}
	if err := cs.CoreV1().Pods("default").Delete(ctx, "job-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("job-1 ran its command on %s, ended Failed with exit 3, and kubectl logs showed its output", got.Spec.NodeName)
}

// kubeQuota: a ResourceQuota refuses a VM bigger than it allows.
func kubeQuota(t *testing.T, cs kubernetes.Interface) {
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team"}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	q := &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Name: "vms"}, Spec: corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{
		corev1.ResourceRequestsCPU: resource.MustParse("1"), corev1.ResourceLimitsCPU: resource.MustParse("1")}}}
	if _, err := cs.CoreV1().ResourceQuotas("team").Create(ctx, q, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The quota binds once its controller has counted the namespace (and
	// the namespace has its default ServiceAccount); before that, admission
	// lets a Pod through.
	waitUntil(t, time.Minute, "the quota to be in force", func() bool {
		cur, err := cs.CoreV1().ResourceQuotas("team").Get(ctx, "vms", metav1.GetOptions{})
		_, serr := cs.CoreV1().ServiceAccounts("team").Get(ctx, "default", metav1.GetOptions{})
		return err == nil && serr == nil && len(cur.Status.Hard) > 0
	})
	p := vmPod("big", "2")
	p.Namespace = "team"
	_, err := cs.CoreV1().Pods("team").Create(ctx, p, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "exceeded quota") {
		t.Fatalf("a 2-CPU VM Pod under a 1-CPU quota: %v, want exceeded quota", err)
	}
	t.Logf("quota: %v", err)
}

// kubeExecAndPortForward: kubectl exec runs in the guest (streams and exit
// status intact); kubectl port-forward reaches a guest port byte-exact.
func kubeExecAndPortForward(t *testing.T, k *kubeCluster, pod *corev1.Pod) {
	out, stderr, err := k.kubectl(t, "exec", pod.Name, "--", "sh", "-c", "uname -s; echo to-stderr >&2; exit 3")
	var ee *exec.ExitError
	if !strings.Contains(out, "Linux") || !strings.Contains(stderr, "to-stderr") || !asExit(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("kubectl exec: out %q stderr %q err %v (want Linux, to-stderr, exit 3)", out, stderr, err)
	}
	blob := make([]byte, 3<<20)
	rand.Read(blob)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	up := k.kubectlCmd(ctx, "exec", "-i", pod.Name, "--", "sh", "-c", "mkdir -p /tmp/www && cat > /tmp/www/blob && busybox httpd -p 8080 -h /tmp/www")
	up.Stdin = bytes.NewReader(blob)
	if o, err := up.CombinedOutput(); err != nil {
		t.Fatalf("upload and serve: %v %s", err, o)
	}
	pf := k.kubectlCmd(ctx, "port-forward", "pod/"+pod.Name, "18080:8080")
	var pfOut bytes.Buffer
	pf.Stdout, pf.Stderr = &pfOut, &pfOut
	if err := pf.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { pf.Process.Kill(); pf.Wait() }()
	var got []byte
	waitUntil(t, time.Minute, "port-forward to answer", func() bool {
		got, err = httpGetInNS(t, k.ns, "http://127.0.0.1:18080/blob")
		return err == nil
	})
	if sha256.Sum256(got) != sha256.Sum256(blob) {
		t.Fatalf("port-forward: got %d bytes, sha256 differs from the %d sent (kubectl: %s)", len(got), len(blob), pfOut.String())
	}
	t.Logf("port-forward: %d bytes byte-exact", len(got))
}

// kubeletAPIRefusesStrangers: banger-vk's kubelet API answers only callers
// the API server vouches for; one with no credentials gets 401.
func kubeletAPIRefusesStrangers(t *testing.T, k *kubeCluster, h *vkHost, pod *corev1.Pod) {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // the server's identity is not what this checks
		DialContext:     nsDial(k.ns)}
	defer tr.CloseIdleConnections()
	for _, path := range []string{"/containerLogs/default/" + pod.Name + "/vm", "/pods", "/run/default/" + pod.Name + "/vm?cmd=id"} {
		req, _ := http.NewRequest(http.MethodGet, "https://"+h.ip+":10250"+path, nil)
		if strings.HasPrefix(path, "/run") {
			req.Method = http.MethodPost
		}
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatalf("kubelet API %s: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("kubelet API %s without credentials: %s, want 401", path, resp.Status)
		}
	}
}

func asExit(err error, ee **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	*ee = e
	return ok
}

// httpGetInNS fetches url with a connection opened inside netns ns.
func httpGetInNS(t *testing.T, ns, url string) ([]byte, error) {
	tr := &http.Transport{DialContext: nsDial(ns)}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

func podBootID(t *testing.T, k *kubeCluster, pod string) string {
	t.Helper()
	out, stderr, err := k.kubectl(t, "exec", pod, "--", "cat", "/proc/sys/kernel/random/boot_id")
	id := strings.TrimSpace(out)
	if err != nil || !uuidRE.MatchString(id) {
		t.Fatalf("boot_id of %s: %q %v %s", pod, out, err, stderr)
	}
	return id
}

// kubeRestartSurvives: SIGKILL banger-vk and bangerd on the Pod's host and
// start them again: the Pod stays Running throughout, its guest is the same
// boot, and the host still has one VM for it.
func kubeRestartSurvives(t *testing.T, k *kubeCluster, cs kubernetes.Interface, hosts map[string]*vkHost, pod *corev1.Pod) {
	h := hosts[pod.Spec.NodeName]
	before := podBootID(t, k, pod.Name)
	dpid := h.daemonPID()
	h.stopVK(syscall.SIGKILL)
	if err := syscall.Kill(dpid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	stop := watchPhase(cs, pod.Name)
	time.Sleep(3 * time.Second)
	h.must("daemon", "status")
	h.startVK()
	time.Sleep(15 * time.Second) // banger-vk resyncs its Pods and reports their status
	if p, ok := podRunning(cs, pod.Name); !ok {
		t.Fatalf("after the restart %s is %s", pod.Name, p.Status.Phase)
	}
	if after := podBootID(t, k, pod.Name); after != before {
		t.Fatalf("boot_id changed across the restart: %s → %s", before, after)
	}
	if phases := stop(); len(phases) > 0 {
		t.Fatalf("the Pod left Running during the restart: %v", phases)
	}
	n := 0
	for _, vm := range h.vms() {
		if vm.Labels[vk.LabelPodUID] == string(pod.UID) {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d VMs for Pod %s on %s, want 1", n, pod.Name, h.name)
	}
	t.Logf("banger-vk and bangerd SIGKILLed and restarted on %s: %s stayed Running, boot_id %s unchanged, one VM", h.name, pod.Name, before)
}

// kubeEvictionKeepsVM: banger-vk stops on the Pod's host; the node goes
// unreachable and the control plane evicts the Pod (it tolerates that for
// 5 s). When banger-vk comes back it finishes the Pod's deletion but keeps
// the VM running, detached and labelled: an eviction never destroys a VM by
// itself.
func kubeEvictionKeepsVM(t *testing.T, cs kubernetes.Interface, hosts map[string]*vkHost, pod *corev1.Pod) {
	h := hosts[pod.Spec.NodeName]
	vmName := ""
	for _, vm := range h.vms() {
		if vm.Labels[vk.LabelPodUID] == string(pod.UID) {
			vmName = vm.Name
		}
	}
	boot := h.bootID(vmName)
	h.stopVK(syscall.SIGKILL)
	waitUntil(t, 3*time.Minute, "the Pod to be evicted", func() bool {
		p, err := cs.CoreV1().Pods("default").Get(context.Background(), pod.Name, metav1.GetOptions{})
		return err == nil && p.DeletionTimestamp != nil
	})
	h.startVK()
	waitUntil(t, 2*time.Minute, "the evicted Pod to be gone", func() bool {
		_, err := cs.CoreV1().Pods("default").Get(context.Background(), pod.Name, metav1.GetOptions{})
		return err != nil
	})
	vm := h.show(vmName)
	if vm.State != api.StateRunning || vm.Labels[vk.LabelEvicted] != "default/"+pod.Name || vm.Labels[vk.LabelNode] != "" {
		t.Fatalf("the evicted Pod's VM: state %s labels %v (want running, %s=default/%s, no node label)", vm.State, vm.Labels, vk.LabelEvicted, pod.Name)
	}
	if b := h.bootID(vmName); b != boot {
		t.Fatalf("the evicted Pod's VM rebooted: %s → %s", boot, b)
	}
	t.Logf("evicted %s: VM %s kept running, labelled %s", pod.Name, vmName, vk.LabelEvicted)
}

// watchPhase polls the Pod's phase until stop, returning every phase seen
// other than Running.
func watchPhase(cs kubernetes.Interface, name string) func() []string {
	done := make(chan struct{})
	res := make(chan []string, 1)
	go func() {
		var bad []string
		for {
			select {
			case <-done:
				res <- bad
				return
			case <-time.After(300 * time.Millisecond):
			}
			p, err := cs.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
			if err == nil && p.Status.Phase != corev1.PodRunning {
				bad = append(bad, string(p.Status.Phase))
			}
		}
	}()
	return func() []string { close(done); return <-res }
}

// kubeContextRun: 'banger --context test vm run ./repo -- …' creates the
// Pod, copies the repository in, runs the command there and exits with its
// status.
func kubeContextRun(t *testing.T, k *kubeCluster) {
	e := newEnv(t)
	os.MkdirAll(filepath.Dir(e.configFile()), 0o700)
	cfg := fmt.Sprintf("default_image = \"tiny\"\n\n[contexts.test]\nkubeconfig = %q\n", k.admin)
	if err := os.WriteFile(e.configFile(), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	repo := filepath.Join(e.home, "repo")
	os.MkdirAll(repo, 0o755)
	os.WriteFile(filepath.Join(repo, "hello.txt"), []byte("hello from the repo\n"), 0o644)
	for _, args := range [][]string{{"init", "-q"}, {"add", "."}, {"-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "one"}} {
		if out, err := exec.Command("git", append([]string{"-C", repo}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v %s", args, err, out)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := k.runInNS(t, ctx, filepath.Join(e.bin, "banger"), e.environ(),
		"--context", "test", "vm", "run", "--rm", repo, "--", "sh", "-c", "cat hello.txt; exit 42")
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	var ee *exec.ExitError
	if !asExit(err, &ee) || ee.ExitCode() != 42 || !strings.Contains(so.String(), "hello from the repo") {
		t.Fatalf("banger --context test vm run: err %v, stdout %q, stderr %q (want exit 42 and the repo's file)", err, so.String(), se.String())
	}
	t.Logf("banger --context test vm run exited 42 with %q", strings.TrimSpace(so.String()))

	// A VM no host can take fails at once with the scheduler's reason, and
	// leaves no Pod behind to make one later.
	big := k.runInNS(t, ctx, filepath.Join(e.bin, "banger"), e.environ(), "--context", "test", "vm", "run", "--vcpu", "16", "--", "true")
	so.Reset()
	se.Reset()
	big.Stdout, big.Stderr = &so, &se
	err = big.Run()
	if !asExit(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(se.String(), "Insufficient cpu") || strings.Count(se.String(), "\n") != 1 {
		t.Fatalf("an oversized --context run: err %v, stderr %q (want exit 1 naming Insufficient cpu, one line)", err, se.String())
	}
	waitUntil(t, 90*time.Second, "no banger Pod left (the --rm run's and the unschedulable one)", func() bool {
		out, _, err := k.kubectl(t, "get", "pods", "-l", kubeclient.LabelManagedBy+"="+kubeclient.ManagedBy, "-o", "name")
		return err == nil && strings.TrimSpace(out) == ""
	})
	t.Logf("oversized run: %s", strings.TrimSpace(se.String()))
}
