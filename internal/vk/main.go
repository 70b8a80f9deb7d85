package vk

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/buildinfo"
	"github.com/banger-dev/banger/internal/client"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/paths"
)

const usage = `Usage: banger-vk --kubeconfig FILE --tls-cert FILE --tls-key FILE --client-ca FILE [flags]

banger-vk makes this banger host a Kubernetes node (a virtual-kubelet
provider): Pods scheduled to it run as banger VMs on the local bangerd.
Run one per host, as the user that owns bangerd (docs/scale-out.md).

Examples:
  banger-vk --kubeconfig /etc/banger/vk.kubeconfig --node-name host-a \
    --address 10.0.0.5 --tls-cert /etc/banger/vk.crt --tls-key /etc/banger/vk.key \
    --client-ca /etc/kubernetes/pki/ca.crt
  banger-vk --version

Flags:
`

type flags struct {
	kubeconfig, nodeName, address, listen string
	cert, key, clientCA, socket, logLevel string
	cpus, maxPods                         int
	memory                                string
	system, version                       bool
}

func parseFlags(args []string, stderr io.Writer) (*flags, int) {
	fs := flag.NewFlagSet("banger-vk", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &flags{}
	host, _ := os.Hostname()
	fs.StringVar(&f.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the node's identity (default $KUBECONFIG)")
	fs.StringVar(&f.nodeName, "node-name", host, "the Node's name")
	fs.StringVar(&f.address, "address", "", "the node's IP, where the API server reaches the kubelet API (default: the first non-loopback IPv4)")
	fs.StringVar(&f.listen, "listen", ":10250", "the kubelet API's listen address (HTTPS)")
	fs.StringVar(&f.cert, "tls-cert", "", "the kubelet API's serving certificate (PEM), for --address")
	fs.StringVar(&f.key, "tls-key", "", "its private key (PEM)")
	fs.StringVar(&f.clientCA, "client-ca", "", "CA of the client certificates the API server presents (its --kubelet-client-certificate)")
	fs.StringVar(&f.socket, "socket", "", "bangerd's socket (default: the installed daemon's, else the user's)")
	fs.BoolVar(&f.system, "system", paths.Installed(), "use the system install's paths")
	fs.IntVar(&f.cpus, "cpus", runtime.NumCPU(), "vCPUs offered to Pods (the host's CPUs)")
	fs.StringVar(&f.memory, "memory", "", "memory offered to Pods, e.g. 16Gi (default: the host's)")
	fs.IntVar(&f.maxPods, "max-pods", 64, "Pods (VMs) at most on this node")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&f.version, "version", false, "print the version and exit")
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, 0
		}
		return nil, 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "banger-vk: unexpected argument %q (banger-vk --help)\n", fs.Arg(0))
		return nil, 2
	}
	if !f.version && (f.cert == "" || f.key == "" || f.clientCA == "") {
		fmt.Fprintln(stderr, "banger-vk: --tls-cert, --tls-key and --client-ca are required: the API server reaches logs, exec and port-forward over authenticated HTTPS (banger-vk --help)")
		return nil, 2
	}
	return f, -1
}

// Main is banger-vk's entry point.
func Main(args []string, stdout, stderr io.Writer) int {
	f, code := parseFlags(args, stderr)
	if f == nil {
		return code
	}
	if f.version {
		fmt.Fprintln(stdout, buildinfo.Get().Line("banger-vk"))
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, f, stderr); err != nil && ctx.Err() == nil {
		fmt.Fprintf(stderr, "banger-vk: %v\n", err)
		return 1
	}
	return 0
}

func run(ctx context.Context, f *flags, stderr io.Writer) error {
	log := logging.New(stderr, f.logLevel)
	layout, err := paths.Resolve(f.system)
	if err != nil {
		return err
	}
	d := &daemonConn{layout: layout, socket: f.socket, system: f.system}
	if d.socket == "" {
		d.socket = layout.SocketPath()
	}
	var st api.DaemonStatus
	if err := d.Call(ctx, api.MethodDaemonStatus, nil, &st); err != nil {
		return fmt.Errorf("bangerd at %s: %w", d.socket, err)
	}
	capa, err := capacity(f, st.StateDir)
	if err != nil {
		return err
	}
	ip := f.address
	if ip == "" {
		if ip, err = firstIPv4(); err != nil {
			return err
		}
	}
	rc, err := clientcmd.BuildConfigFromFlags("", f.kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig %q: %w", f.kubeconfig, err)
	}
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	auth, err := webhookAuth(kc, f)
	if err != nil {
		return err
	}
	tlsCfg, err := servingTLS(f)
	if err != nil {
		return err
	}
	log.Info("banger-vk starting", "node", f.nodeName, "address", ip, "listen", f.listen, "cpus", capa.CPUs, "memory", capa.MemoryB, "bangerd", d.socket)
	return serve(ctx, serveConfig{
		kube: kc, node: NodeSpec(f.nodeName, ip, capa), listen: f.listen, tls: tlsCfg, auth: auth,
		provider: Config{NodeName: f.nodeName, HostIP: ip, Daemon: d, Log: log},
	})
}

// servingTLS is the kubelet API's TLS: its serving certificate, and client
// certificates verified against --client-ca when presented (a bearer token
// is the other way in; webhookAuth checks both).
func servingTLS(f *flags) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(f.cert, f.key)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	pem, err := os.ReadFile(f.clientCA)
	if err != nil {
		return nil, fmt.Errorf("--client-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--client-ca %s: no PEM certificate in it", f.clientCA)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.VerifyClientCertIfGiven}, nil
}

// webhookAuth checks callers of the kubelet API as a kubelet does: client
// certificates against --client-ca, bearer tokens by TokenReview, and every
// request by SubjectAccessReview against the API server.
func webhookAuth(kc kubernetes.Interface, f *flags) (nodeutil.Auth, error) {
	ca, err := dynamiccertificates.NewDynamicCAContentFromFile("client-ca", f.clientCA)
	if err != nil {
		return nil, fmt.Errorf("--client-ca: %w", err)
	}
	return nodeutil.WebhookAuth(kc, f.nodeName, func(c *nodeutil.WebhookAuthConfig) error {
		c.AuthnConfig.ClientCertificateCAContentProvider = ca
		return nil
	})
}

// capacity is the host's: CPUs, memory, and the state directory's disk.
func capacity(f *flags, stateDir string) (Capacity, error) {
	c := Capacity{CPUs: f.cpus, MaxPods: f.maxPods, HostName: f.nodeName}
	if c.CPUs < 1 || c.MaxPods < 1 {
		return c, errors.New("--cpus and --max-pods must be at least 1")
	}
	_, port, err := net.SplitHostPort(f.listen)
	if err != nil {
		return c, fmt.Errorf("--listen %q: %w", f.listen, err)
	}
	p, _ := strconv.Atoi(port)
	c.Kubelet = int32(p)
	if f.memory != "" {
		q, err := resource.ParseQuantity(f.memory)
		if err != nil {
			return c, fmt.Errorf("--memory %q: %w (e.g. 16Gi)", f.memory, err)
		}
		c.MemoryB = q.Value()
	} else {
		mib, err := config.HostMemoryMiB()
		if err != nil {
			return c, err
		}
		c.MemoryB = int64(mib) << 20
	}
	var fs unix.Statfs_t
	if stateDir == "" {
		stateDir = "/"
	}
	if err := unix.Statfs(stateDir, &fs); err == nil {
		c.StorageB = int64(fs.Blocks) * fs.Bsize
	}
	return c, nil
}

func firstIPv4() (string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			return n.IP.String(), nil
		}
	}
	return "", errors.New("no non-loopback IPv4 address: pass --address")
}

// daemonConn calls bangerd, starting it first in user mode when it does not
// answer (as the CLI does); a system install's daemon is systemd's to start.
type daemonConn struct {
	layout paths.Layout
	socket string
	system bool
}

func (d *daemonConn) Call(ctx context.Context, method string, params, out any) error {
	err := client.New(d.socket).Call(ctx, method, params, out)
	if err == nil || d.system || !isUnreachable(err) {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, eerr := client.Ensure(sctx, d.layout, nil)
	if eerr != nil {
		return err
	}
	return c.Call(ctx, method, params, out)
}

func isUnreachable(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) || errors.Is(err, os.ErrNotExist)
}
