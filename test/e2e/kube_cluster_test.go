package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/banger-dev/banger/internal/testutil"
)

// The control plane a test cluster runs: 'make k8s-tools' builds these
// (scripts/k8s-tools.sh) into the test cache.
const (
	kubeVersion = "v1.37.2"
	kubeAPIIP   = "10.77.0.1"
	kubeBridge  = "k8sbr"
	kubeAPIPort = "6443"
)

var kubeTools = []string{"kube-apiserver", "kube-scheduler", "kube-controller-manager", "kubectl", "etcd"}

// kubeCluster is a real Kubernetes control plane (etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler) in a network namespace of its
// own. Its bridge k8sbr holds the API server's address; linkHost plugs other
// namespaces into it. Nothing touches the root namespace.
type kubeCluster struct {
	ns     string // control plane netns, "bgk-<hex>"
	apiIP  string // "10.77.0.1"
	dir    string // temp dir: PKI, kubeconfigs, etcd data, logs
	bin    string // the k8s tools dir
	admin  string // admin kubeconfig path (server https://10.77.0.1:6443)
	caFile string // cluster CA cert (PEM); it signs every cert of the cluster

	ca    *kubeCA
	procs []*kubeProc // in start order
}

// kubeProc is one running control-plane component.
type kubeProc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// kubeBinDir is where the k8s tools are: $BANGER_K8S_BIN, else the test
// cache. Without them the test skips, or fails with BANGER_REQUIRE_K8S=1.
func kubeBinDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("BANGER_K8S_BIN")
	if dir == "" {
		dir = filepath.Join(testutil.CacheDir(), "k8s", kubeVersion, "bin")
	}
	var missing []string
	for _, b := range kubeTools {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		msg := fmt.Sprintf("Kubernetes %s tools missing from %s (%s): run 'make k8s-tools' or set BANGER_K8S_BIN",
			kubeVersion, dir, strings.Join(missing, ", "))
		if os.Getenv("BANGER_REQUIRE_K8S") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return dir
}

func kubeRandHex(t testing.TB) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// startKubeCluster brings a control plane up and waits until it is healthy:
// the API server ready, the controller-manager and scheduler answering
// their health checks, and the default ServiceAccount made. Cleanup stops
// the processes and deletes the namespace and the directory.
func startKubeCluster(t *testing.T) *kubeCluster {
	t.Helper()
	testutil.RequiresRoot(t)
	bin := kubeBinDir(t)
	began := time.Now()
	dir, err := os.MkdirTemp("", "bgk-")
	if err != nil {
		t.Fatal(err)
	}
	k := &kubeCluster{ns: "bgk-" + kubeRandHex(t), apiIP: kubeAPIIP, dir: dir, bin: bin}
	t.Cleanup(func() { k.stop(t) })
	for _, sub := range []string{"pki", "logs", "certs", "etcd"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	runTool(t, "ip", "netns", "add", k.ns)
	runTool(t, "ip", "-n", k.ns, "link", "set", "lo", "up")
	runTool(t, "ip", "-n", k.ns, "link", "add", kubeBridge, "type", "bridge")
	runTool(t, "ip", "-n", k.ns, "addr", "add", kubeAPIIP+"/24", "dev", kubeBridge)
	runTool(t, "ip", "-n", k.ns, "link", "set", kubeBridge, "up")
	k.writePKI(t)

	k.startEtcd(t)
	k.startAPIServer(t)
	cs := k.client(t)
	k.waitFor(t, "API server /readyz", 2*time.Minute, func() error {
		out, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(context.Background())
		if err == nil && strings.TrimSpace(string(out)) != "ok" {
			err = fmt.Errorf("readyz: %q", out)
		}
		return err
	})
	apiUp := time.Since(began)
	k.startControllers(t)
	hc := k.httpClient(t)
	// The scheduler's /readyz includes its informers' sync; the
	// controller-manager has no /readyz, its /healthz checks each controller.
	for _, u := range []string{"https://127.0.0.1:10257/healthz", "https://127.0.0.1:10259/readyz"} {
		k.waitFor(t, u, time.Minute, func() error { return httpOK(hc, u) })
	}
	k.waitFor(t, "ServiceAccount default/default", time.Minute, func() error {
		_, err := cs.CoreV1().ServiceAccounts("default").Get(context.Background(), "default", metav1.GetOptions{})
		return err
	})
	t.Logf("kube control plane up in %s (API server ready after %s; netns %s)",
		time.Since(began).Round(time.Millisecond), apiUp.Round(time.Millisecond), k.ns)
	return k
}

func (k *kubeCluster) server() string { return "https://" + net.JoinHostPort(kubeAPIIP, kubeAPIPort) }

func (k *kubeCluster) pki(name string) string { return filepath.Join(k.dir, "pki", name) }

// writePKI makes the CA and every cert, key and kubeconfig of the cluster.
func (k *kubeCluster) writePKI(t *testing.T) {
	t.Helper()
	masters := []string{"system:masters"}
	k.ca = newKubeCA(t)
	k.caFile = k.pki("ca.crt")
	writeSecret(t, k.caFile, k.ca.pem)
	writeSecret(t, k.pki("ca.key"), ecKeyPEM(t, k.ca.key))
	pkiDir := filepath.Join(k.dir, "pki")
	k.ca.writePair(t, pkiDir, "apiserver", certSpec{cn: "kube-apiserver", server: true,
		ips: []string{kubeAPIIP, "10.96.0.1"},
		dns: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}})
	k.ca.writePair(t, pkiDir, "kubelet-client", certSpec{cn: "kube-apiserver-kubelet-client", orgs: masters})
	// The controller-manager's and scheduler's health ports, on the
	// namespace's loopback; a cert of our own lets the wait verify them.
	k.ca.writePair(t, pkiDir, "loopback", certSpec{cn: "localhost", server: true, ips: []string{"127.0.0.1"}, dns: []string{"localhost"}})
	writeSAKeys(t, pkiDir)
	k.admin = filepath.Join(k.dir, "admin.kubeconfig")
	k.ca.writeClientKubeconfig(t, k.admin, k.server(), certSpec{cn: "banger-e2e-admin", orgs: masters})
	// The controller-manager and scheduler run as their own users, which
	// the RBAC bootstrap roles cover (the controller-manager's controllers
	// each use their own service account: --use-service-account-credentials).
	k.ca.writeClientKubeconfig(t, filepath.Join(k.dir, "controller-manager.kubeconfig"), k.server(),
		certSpec{cn: "system:kube-controller-manager"})
	k.ca.writeClientKubeconfig(t, filepath.Join(k.dir, "scheduler.kubeconfig"), k.server(),
		certSpec{cn: "system:kube-scheduler"})
}

func (k *kubeCluster) startEtcd(t *testing.T) {
	t.Helper()
	// Its own namespace, so fixed loopback ports collide with nothing.
	k.spawn(t, "etcd",
		"--name=bgk",
		"--data-dir="+filepath.Join(k.dir, "etcd"),
		"--listen-client-urls=http://127.0.0.1:2379",
		"--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380",
		"--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=bgk=http://127.0.0.1:2380",
		"--unsafe-no-fsync", // throwaway data: spare the disk
		"--log-level=warn")
	hc := k.httpClient(t)
	k.waitFor(t, "etcd /health", 30*time.Second, func() error {
		return httpOK(hc, "http://127.0.0.1:2379/health")
	})
}

func (k *kubeCluster) startAPIServer(t *testing.T) {
	t.Helper()
	k.spawn(t, "kube-apiserver",
		"--advertise-address="+kubeAPIIP,
		"--bind-address="+kubeAPIIP,
		"--secure-port="+kubeAPIPort,
		"--cert-dir="+filepath.Join(k.dir, "certs"),
		"--etcd-servers=http://127.0.0.1:2379",
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction,ResourceQuota",
		"--client-ca-file="+k.caFile,
		"--tls-cert-file="+k.pki("apiserver.crt"),
		"--tls-private-key-file="+k.pki("apiserver.key"),
		"--kubelet-client-certificate="+k.pki("kubelet-client.crt"),
		"--kubelet-client-key="+k.pki("kubelet-client.key"),
		"--kubelet-certificate-authority="+k.caFile,
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+k.pki("sa.pub"),
		"--service-account-signing-key-file="+k.pki("sa.key"),
		"--service-cluster-ip-range=10.96.0.0/16",
		"--allow-privileged=true",
		"--profiling=false")
}

// startControllers starts the controller-manager and the scheduler. Their
// secure ports cannot be both off and health-checked, so they serve on the
// namespace's loopback only, with a cert from the cluster CA.
func (k *kubeCluster) startControllers(t *testing.T) {
	t.Helper()
	serving := []string{
		"--bind-address=127.0.0.1",
		"--cert-dir=" + filepath.Join(k.dir, "certs"),
		"--tls-cert-file=" + k.pki("loopback.crt"),
		"--tls-private-key-file=" + k.pki("loopback.key"),
		"--leader-elect=false",
	}
	k.spawn(t, "kube-controller-manager", append(serving,
		"--secure-port=10257",
		"--kubeconfig="+filepath.Join(k.dir, "controller-manager.kubeconfig"),
		"--controllers=*",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file="+k.pki("sa.key"),
		"--root-ca-file="+k.caFile,
		"--cluster-signing-cert-file="+k.caFile,
		"--cluster-signing-key-file="+k.pki("ca.key"),
		// A node that stops renewing its Lease turns NotReady after the
		// grace period. Nothing validates the pair; the grace period must
		// exceed --node-monitor-period and be several times the node's
		// status/Lease update interval, or healthy nodes flap.
		"--node-monitor-period=2s",
		"--node-monitor-grace-period=20s")...)
	k.spawn(t, "kube-scheduler", append(serving,
		"--secure-port=10259",
		"--kubeconfig="+filepath.Join(k.dir, "scheduler.kubeconfig"))...)
}

// spawn starts a component inside the namespace, its output in logs/.
func (k *kubeCluster) spawn(t *testing.T, name string, args ...string) {
	t.Helper()
	logPath := filepath.Join(k.dir, "logs", name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := k.runInNS(t, context.Background(), name, nil, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Its own process group, so stop reaches anything it forks. No
	// Pdeathsig: it follows the forking thread, and inNS threads exit.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &kubeProc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	k.procs = append(k.procs, p)
}

// runInNS makes (does not start) a command running bin inside k.ns; a bare
// name found in k.bin runs from there. env adds to the test's environment
// (without proxy settings: every address here is local to the namespace).
func (k *kubeCluster) runInNS(t *testing.T, ctx context.Context, bin string, env []string, args ...string) *exec.Cmd {
	t.Helper()
	return k.nsCmd(ctx, bin, env, args...)
}

func (k *kubeCluster) nsCmd(ctx context.Context, bin string, env []string, args ...string) *exec.Cmd {
	if !strings.Contains(bin, "/") {
		if _, err := os.Stat(filepath.Join(k.bin, bin)); err == nil {
			bin = filepath.Join(k.bin, bin)
		}
	}
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", k.ns, bin}, args...)...)
	for _, kv := range os.Environ() {
		if !strings.Contains(strings.ToLower(strings.SplitN(kv, "=", 2)[0]), "proxy") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// kubectlCmd makes (does not start) a kubectl command run as the admin
// inside k.ns, for port-forward and other streaming uses.
func (k *kubeCluster) kubectlCmd(ctx context.Context, args ...string) *exec.Cmd {
	global := []string{"--kubeconfig=" + k.admin, "--cache-dir=" + filepath.Join(k.dir, "kubectl-cache")}
	return k.nsCmd(ctx, "kubectl", nil, append(global, args...)...)
}

// kubectl runs kubectl as the admin inside k.ns, for at most 60 s.
func (k *kubeCluster) kubectl(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := k.kubectlCmd(ctx, args...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err = cmd.Run()
	return so.String(), se.String(), err
}

// nsDial opens its connections from inside network namespace ns: the
// socket is made on a thread switched there, which dies afterwards.
func nsDial(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
			h, err := netns.GetFromName(ns)
			if err != nil {
				ch <- result{nil, err}
				return
			}
			defer h.Close()
			if err := netns.Set(h); err != nil {
				ch <- result{nil, err}
				return
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}

// restConfig loads kubeconfig for a client whose connections start in ns.
func restConfig(t *testing.T, kubeconfig, ns string) *rest.Config {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dial = nsDial(ns)
	cfg.Proxy = func(*http.Request) (*url.URL, error) { return nil, nil }
	cfg.Timeout = 30 * time.Second
	return cfg
}

func clientFor(t *testing.T, kubeconfig, ns string) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(restConfig(t, kubeconfig, ns))
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// client is an admin clientset dialing inside k.ns.
func (k *kubeCluster) client(t *testing.T) kubernetes.Interface {
	t.Helper()
	return clientFor(t, k.admin, k.ns)
}

// httpClient dials inside k.ns and trusts the cluster CA.
func (k *kubeCluster) httpClient(t *testing.T) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(k.ca.cert)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext:     nsDial(k.ns),
		TLSClientConfig: &tls.Config{RootCAs: pool},
	}}
}

func httpOK(hc *http.Client, url string) error {
	resp, err := hc.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", url, resp.Status, body)
	}
	return nil
}

// waitFor polls fn until it succeeds, failing at timeout or as soon as a
// component exits.
func (k *kubeCluster) waitFor(t *testing.T, what string, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		for _, p := range k.procs {
			select {
			case <-p.done:
				t.Fatalf("%s exited (%v) while waiting for %s", p.name, p.err, what)
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s after %s: %v", what, timeout, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// linkHost connects namespace hostNS to the cluster's bridge with a veth
// pair: kv<idx> in k.ns on k8sbr, kube<idx> in hostNS holding
// 10.77.0.(10+idx)/24. It returns that address.
func (k *kubeCluster) linkHost(t *testing.T, hostNS string, idx int) string {
	t.Helper()
	if idx < 0 || idx > 200 {
		t.Fatalf("linkHost: index %d out of range", idx)
	}
	ip := fmt.Sprintf("10.77.0.%d", 10+idx)
	peer, host := fmt.Sprintf("kv%d", idx), fmt.Sprintf("kube%d", idx)
	runTool(t, "ip", "-n", k.ns, "link", "add", peer, "type", "veth", "peer", "name", host, "netns", hostNS)
	t.Cleanup(func() { exec.Command("ip", "-n", hostNS, "link", "del", host).Run() })
	runTool(t, "ip", "-n", k.ns, "link", "set", peer, "master", kubeBridge, "up")
	runTool(t, "ip", "-n", hostNS, "addr", "add", ip+"/24", "dev", host)
	runTool(t, "ip", "-n", hostNS, "link", "set", host, "up")
	return ip
}

// nodeCreds makes node name's credentials: a kubeconfig for
// system:node:<name> (group system:nodes, data embedded) and a kubelet
// serving cert and key for ip and name, all signed by the cluster CA.
func (k *kubeCluster) nodeCreds(t *testing.T, name, ip string) (kubeconfig, cert, key string) {
	t.Helper()
	dir := filepath.Join(k.dir, "nodes", name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	user := certSpec{cn: "system:node:" + name, orgs: []string{"system:nodes"}}
	kubeconfig = filepath.Join(dir, "kubeconfig")
	k.ca.writeClientKubeconfig(t, kubeconfig, k.server(), user)
	user.server, user.ips, user.dns = true, []string{ip}, []string{name}
	cert, key = k.ca.writePair(t, dir, "kubelet", user)
	return kubeconfig, cert, key
}

// stop shows the components' logs if the test failed, ends them (last
// started first), and deletes the namespace and the directory.
func (k *kubeCluster) stop(t *testing.T) {
	if t.Failed() {
		for _, p := range k.procs {
			t.Logf("--- last lines of %s's log:\n%s", p.name, lastLines(p.log, 40))
		}
	}
	for i := len(k.procs) - 1; i >= 0; i-- {
		p := k.procs[i]
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Logf("%s ignored SIGTERM for 10 s; killing it", p.name)
			syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	}
	if out, err := exec.Command("ip", "netns", "del", k.ns).CombinedOutput(); err != nil {
		t.Logf("ip netns del %s: %v %s", k.ns, err, out)
	}
	os.RemoveAll(k.dir)
}

func lastLines(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestKubeHarness proves the harness: a healthy control plane with
// ResourceQuota, the Node authorizer and NodeRestriction in force, a
// linked namespace reaching the API server, and the API server reaching a
// kubelet there by its InternalIP and verifying its serving cert. Nothing
// of the cluster survives the test.
func TestKubeHarness(t *testing.T) {
	testutil.RequiresRoot(t)
	kubeBinDir(t)
	var k *kubeCluster
	hostNS := "bgkh-" + kubeRandHex(t)
	t.Cleanup(func() { // runs last, after every other cleanup
		if k != nil {
			checkKubeGone(t, k, hostNS)
		}
	})
	k = startKubeCluster(t)
	runTool(t, "ip", "netns", "add", hostNS)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", hostNS).Run() })
	runTool(t, "ip", "-n", hostNS, "link", "set", "lo", "up")
	ip := k.linkHost(t, hostNS, 0)
	kubeconfig, cert, key := k.nodeCreds(t, "probe-node", ip)

	t.Run("readyz", func(t *testing.T) {
		out, errOut, err := k.kubectl(t, "get", "--raw", "/readyz")
		if err != nil || strings.TrimSpace(out) != "ok" {
			t.Fatalf("kubectl get --raw /readyz: %v %q %s", err, out, errOut)
		}
	})
	t.Run("quota", func(t *testing.T) { probeQuota(t, k) })
	t.Run("node-restriction", func(t *testing.T) {
		probeNodeRestriction(t, k, clientFor(t, kubeconfig, k.ns), ip)
	})
	t.Run("kubelet-link", func(t *testing.T) { probeKubeletLink(t, k, hostNS, kubeconfig, cert, key, ip) })
}

// probeQuota: a quota of one CPU refuses a Pod asking for two.
func probeQuota(t *testing.T, k *kubeCluster) {
	cs := k.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const ns = "quota-probe"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rq := &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Name: "cpu"},
		Spec: corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{corev1.ResourceRequestsCPU: resource.MustParse("1")}}}
	if _, err := cs.CoreV1().ResourceQuotas(ns).Create(ctx, rq, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Admission refuses every Pod of the namespace until the quota
	// controller has filled in the quota's status, and until the
	// namespace's default ServiceAccount exists.
	k.waitFor(t, "quota status and default ServiceAccount in "+ns, time.Minute, func() error {
		got, err := cs.CoreV1().ResourceQuotas(ns).Get(ctx, "cpu", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if _, ok := got.Status.Hard[corev1.ResourceRequestsCPU]; !ok {
			return fmt.Errorf("quota status not computed yet")
		}
		_, err = cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err
	})
	pod := func(name, cpu string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "c", Image: "busybox", Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu)}}}}}}
	}
	_, err := cs.CoreV1().Pods(ns).Create(ctx, pod("big", "2"), metav1.CreateOptions{})
	if !apierrors.IsForbidden(err) || !strings.Contains(fmt.Sprint(err), "exceeded quota") {
		t.Fatalf("a Pod asking for 2 CPUs under a 1-CPU quota: want 'exceeded quota', got %v", err)
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod("small", "500m"), metav1.CreateOptions{}); err != nil {
		t.Fatalf("a Pod within the quota: %v", err)
	}
}

// probeNodeRestriction: probe-node's credentials register probe-node and
// label it, but neither create nor change another node.
func probeNodeRestriction(t *testing.T, k *kubeCluster, node kubernetes.Interface, ip string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	self := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "probe-node"}, Status: corev1.NodeStatus{
		Addresses:       []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}, {Type: corev1.NodeHostName, Address: "probe-node"}},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: 10250}},
	}}
	if _, err := node.CoreV1().Nodes().Create(ctx, self, metav1.CreateOptions{}); err != nil {
		t.Fatalf("probe-node registering itself: %v", err)
	}
	other := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "other-node"}}
	if _, err := node.CoreV1().Nodes().Create(ctx, other, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("probe-node creating other-node: want forbidden, got %v", err)
	}
	if _, err := k.client(t).CoreV1().Nodes().Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatalf("admin creating other-node: %v", err)
	}
	patch := []byte(`{"metadata":{"labels":{"banger.dev/probe":"yes"}}}`)
	_, err := node.CoreV1().Nodes().Patch(ctx, "other-node", types.MergePatchType, patch, metav1.PatchOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("probe-node patching other-node: want forbidden, got %v", err)
	}
	t.Logf("probe-node patching other-node: %v", err)
	if _, err := node.CoreV1().Nodes().Patch(ctx, "probe-node", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatalf("probe-node labelling itself: %v", err)
	}
}

// probeKubeletLink: from the linked namespace, the node's client reaches
// the API server; and the API server, proxying to probe-node, reaches a
// stand-in kubelet there by its InternalIP, verifying its serving cert
// against the cluster CA and presenting its kubelet-client cert.
func probeKubeletLink(t *testing.T, k *kubeCluster, hostNS, kubeconfig, cert, key, ip string) {
	v, err := clientFor(t, kubeconfig, hostNS).Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("API server from %s: %v", hostNS, err)
	}
	if v.GitVersion != kubeVersion {
		t.Errorf("API server version %s, want %s", v.GitVersion, kubeVersion)
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(k.ca.cert)
	var ln net.Listener
	inNS(t, hostNS, func() { ln, err = net.Listen("tcp", net.JoinHostPort(ip, "10250")) })
	if err != nil {
		t.Fatal(err)
	}
	serve(t, tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{pair},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}),
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "stand-in kubelet: %s asked for %s", r.TLS.PeerCertificates[0].Subject.CommonName, r.URL.Path)
		}))
	out, errOut, err := k.kubectl(t, "get", "--raw", "/api/v1/nodes/probe-node/proxy/healthz")
	want := "stand-in kubelet: kube-apiserver-kubelet-client asked for /healthz"
	if err != nil || out != want {
		t.Fatalf("node proxy: %v\nstdout %q\nstderr %s\nwant %q", err, out, errOut, want)
	}
}

// checkKubeGone fails t if anything of cluster k outlived its cleanup.
func checkKubeGone(t *testing.T, k *kubeCluster, otherNS ...string) {
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Errorf("ip netns list: %v %s", err, out)
	}
	for _, ns := range append(otherNS, k.ns) {
		for _, f := range strings.Fields(string(out)) {
			if f == ns {
				t.Errorf("netns %s outlived the test", ns)
			}
		}
	}
	if _, err := os.Stat(k.dir); !os.IsNotExist(err) {
		t.Errorf("%s outlived the test (%v)", k.dir, err)
	}
	for _, p := range k.procs {
		if err := syscall.Kill(p.cmd.Process.Pid, 0); err != syscall.ESRCH {
			t.Errorf("%s (pid %d) outlived the test: %v", p.name, p.cmd.Process.Pid, err)
		}
	}
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, c := range cmdlines {
		data, _ := os.ReadFile(c)
		if bytes.Contains(data, []byte(k.dir+"/")) {
			t.Errorf("%s outlived the test: %s", filepath.Dir(c), bytes.ReplaceAll(data, []byte{0}, []byte{' '}))
		}
	}
}
