package vk

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/banger-dev/banger/internal/api"
	vkapi "github.com/virtual-kubelet/virtual-kubelet/node/api"
)

func testPod(name, uid string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("00000000-0000-0000-0000-" + uid)},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "vm", Image: "tiny"}}},
	}
}

func TestVMNameIsADNSLabelPerUID(t *testing.T) {
	a := vmName(testPod("web.Frontend_1", "000000000001"))
	b := vmName(testPod("web.Frontend_1", "000000000002"))
	if a == b {
		t.Fatalf("two Pods of one name (different UIDs) share VM name %s", a)
	}
	if !strings.HasPrefix(a, "web-frontend-1-") {
		t.Fatalf("vmName = %s", a)
	}
	long := vmName(testPod(strings.Repeat("x", 250), "000000000003"))
	if len(long) > 63 {
		t.Fatalf("vmName of a long Pod name is %d characters", len(long))
	}
	if n := vmName(testPod("---", "000000000004")); !strings.HasPrefix(n, "pod-") {
		t.Fatalf("vmName of %q = %s", "---", n)
	}
	for _, n := range []string{a, b, long} {
		if strings.HasPrefix(n, "-") || strings.HasSuffix(n, "-") || strings.ContainsAny(n, "._A") {
			t.Fatalf("vmName %q is not a DNS label", n)
		}
	}
}

func TestPodSpecMapsResourcesAndAnnotations(t *testing.T) {
	p := testPod("job", "000000000001")
	p.Annotations = map[string]string{AnnotationNAT: "true", AnnotationStart: "cold", AnnotationDiskSize: "4G", AnnotationWorkspace: "/root/repo"}
	p.Spec.Containers[0].Resources = corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1500m"), corev1.ResourceMemory: resource.MustParse("300M")},
	}
	p.Spec.Containers[0].Command = []string{"make"}
	p.Spec.Containers[0].Args = []string{"test"}
	p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "A", Value: "1"}, {Name: "B", ValueFrom: &corev1.EnvVarSource{}}}
	s, err := podSpec(p, "node-1")
	if err != nil {
		t.Fatal(err)
	}
	if *s.params.VCPU != 2 || *s.params.MemoryMiB != 287 || !s.params.NAT || !s.params.Cold || *s.params.DiskSize != "4G" {
		t.Fatalf("params: vcpu %d mem %d nat %v cold %v disk %s", *s.params.VCPU, *s.params.MemoryMiB, s.params.NAT, s.params.Cold, *s.params.DiskSize)
	}
	if strings.Join(s.command, " ") != "make test" || s.dir != "/root/repo" || strings.Join(s.env, ",") != "A=1" {
		t.Fatalf("command %q dir %q env %q", s.command, s.dir, s.env)
	}
	if s.params.Labels[LabelPodUID] != string(p.UID) || s.params.Labels[LabelNode] != "node-1" || s.params.Labels[LabelPod] != "job" {
		t.Fatalf("labels: %v", s.params.Labels)
	}
	// The limit wins over the request.
	p.Spec.Containers[0].Resources.Limits = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("3")}
	if s, _ := podSpec(p, "n"); *s.params.VCPU != 3 {
		t.Fatalf("vcpu from limit: %d", *s.params.VCPU)
	}
}

func TestPodSpecRefusesWhatAVMCannotBe(t *testing.T) {
	cases := map[string]func(*corev1.Pod){
		"2 containers":    func(p *corev1.Pod) { p.Spec.Containers = append(p.Spec.Containers, p.Spec.Containers[0]) },
		"init containers": func(p *corev1.Pod) { p.Spec.InitContainers = p.Spec.Containers },
		"names no image":  func(p *corev1.Pod) { p.Spec.Containers[0].Image = " " },
		"1-64 vCPUs": func(p *corev1.Pod) {
			p.Spec.Containers[0].Resources.Limits = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100")}
		},
		"64Mi to 1Ti": func(p *corev1.Pod) {
			p.Spec.Containers[0].Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Mi")}
		},
		"want true or false":     func(p *corev1.Pod) { p.Annotations = map[string]string{AnnotationNAT: "yes please"} },
		"want warm or cold":      func(p *corev1.Pod) { p.Annotations = map[string]string{AnnotationStart: "lukewarm"} },
		"an absolute guest path": func(p *corev1.Pod) { p.Annotations = map[string]string{AnnotationWorkspace: "repo"} },
	}
	for want, mutate := range cases {
		p := testPod("bad", "000000000001")
		mutate(p)
		if _, err := podSpec(p, "n"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v", want, err)
		}
	}
}

func TestEvictedOnlyForControlPlaneEvictions(t *testing.T) {
	p := testPod("e", "000000000001")
	if evicted(p) {
		t.Fatal("a plain deletion counted as an eviction")
	}
	for reason, want := range map[string]bool{reasonTaintEviction: true, reasonPodGC: true, "PreemptionByScheduler": false, "TerminationByKubelet": false} {
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue, Reason: reason}}
		if evicted(p) != want {
			t.Errorf("reason %s: evicted = %v", reason, !want)
		}
	}
}

func TestPodStatusFollowsTheVM(t *testing.T) {
	p := testPod("s", "000000000001")
	vm := &api.VM{ID: "abc", Name: "s-1", State: api.StateRunning, IP: "172.30.0.5", CreatedAt: "2026-12-05T10:00:00Z",
		Runtime: api.VMRuntime{StartedAt: "2026-12-05T10:00:03Z"}}
	cases := []struct {
		name  string
		o     observed
		phase corev1.PodPhase
		ready bool
	}{
		{"creating", observed{}, corev1.PodPending, false},
		{"create failed", observed{createErr: "no image"}, corev1.PodFailed, false},
		{"running sandbox", observed{vm: vm}, corev1.PodRunning, true},
		{"command not started", observed{vm: vm, hasCmd: true}, corev1.PodPending, false},
		{"command running", observed{vm: vm, hasCmd: true, job: "0123456789ab"}, corev1.PodRunning, true},
		{"command exited 0", observed{vm: vm, hasCmd: true, job: "0123456789ab", jobExit: new(int)}, corev1.PodSucceeded, false},
	}
	for _, c := range cases {
		st := podStatus(p, c.o, "10.0.0.1")
		ready := st.ContainerStatuses[0].Ready
		if st.Phase != c.phase || ready != c.ready {
			t.Errorf("%s: phase %s ready %v, want %s %v", c.name, st.Phase, ready, c.phase, c.ready)
		}
		if c.o.vm != nil && (st.PodIP != vm.IP || st.StartTime == nil) {
			t.Errorf("%s: pod IP %q start %v", c.name, st.PodIP, st.StartTime)
		}
	}
	stopped := *vm
	stopped.State, stopped.Runtime.StopReason = api.StateStopped, "guest powered off"
	st := podStatus(p, observed{vm: &stopped}, "")
	if st.Phase != corev1.PodFailed || !strings.Contains(st.Message, "guest powered off") {
		t.Fatalf("stopped VM: %s %q", st.Phase, st.Message)
	}
	one := 1
	if st := podStatus(p, observed{vm: vm, hasCmd: true, job: "x", jobExit: &one}, ""); st.Phase != corev1.PodFailed || st.ContainerStatuses[0].State.Terminated.ExitCode != 1 {
		t.Fatalf("exit 1: %+v", st)
	}
	// The same VM gives the same status: no churn in the API server.
	if a, b := podStatus(p, observed{vm: vm}, "h"), podStatus(p, observed{vm: vm}, "h"); a.String() != b.String() {
		t.Fatal("status of an unchanged VM changed")
	}
}

func TestTrimLogs(t *testing.T) {
	logs := []byte("one\ntwo\nthree\n")
	for _, c := range []struct {
		opts vkapi.ContainerLogOpts
		want string
	}{
		{vkapi.ContainerLogOpts{}, "one\ntwo\nthree\n"},
		{vkapi.ContainerLogOpts{Tail: 2}, "two\nthree\n"},
		{vkapi.ContainerLogOpts{Tail: 9}, "one\ntwo\nthree\n"},
		{vkapi.ContainerLogOpts{LimitBytes: 5}, "one\nt"},
		{vkapi.ContainerLogOpts{Tail: 1, LimitBytes: 3}, "thr"},
	} {
		if got := trimLogs(logs, c.opts); got != c.want {
			t.Errorf("%+v: %q, want %q", c.opts, got, c.want)
		}
	}
}

func TestJobArgvRunsInDirWithEnv(t *testing.T) {
	argv := jobArgv(spec{command: []string{"make", "test"}, dir: "/root/repo", env: []string{"A=1"}})
	got := strings.Join(argv, " ")
	if !strings.HasSuffix(got, "sh /root/repo A=1 make test") {
		t.Fatalf("jobArgv: %q", got)
	}
}
