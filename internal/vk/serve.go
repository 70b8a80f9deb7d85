package vk

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"path"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node"
	vkapi "github.com/virtual-kubelet/virtual-kubelet/node/api"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/record"
)

type serveConfig struct {
	kube     kubernetes.Interface
	node     corev1.Node
	listen   string
	tls      *tls.Config
	auth     nodeutil.Auth
	provider Config
}

// serve runs the node: virtual-kubelet's pod and node controllers over the
// Provider, and the kubelet API over HTTPS, until ctx ends.
//
// It composes virtual-kubelet's parts itself rather than through
// nodeutil.NewNode, which also runs cluster-wide Secret, ConfigMap and
// Service informers: a node's identity may not list those (the Node
// authorizer), and banger VMs use none of them. Only the node's own Pods
// are watched; the other informers the pod controller requires are never
// started (so env values from Secrets and ConfigMaps are not resolved).
func serve(ctx context.Context, c serveConfig) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	name := c.node.Name
	podFactory := informers.NewSharedInformerFactoryWithOptions(c.kube, time.Minute, nodeutil.PodInformerFilter(name))
	pods := podFactory.Core().V1().Pods()
	unused := informers.NewSharedInformerFactory(c.kube, 0) // never started
	c.provider.Pods = pods.Lister()
	prov := New(c.provider)
	np := &NodeProvider{Daemon: c.provider.Daemon, Node: c.node.DeepCopy(), Log: c.provider.Log}
	nc, err := node.NewNodeController(np, &c.node, c.kube.CoreV1().Nodes(),
		node.WithNodeEnableLeaseV1(nodeutil.NodeLeaseV1Client(c.kube), node.DefaultLeaseDuration))
	if err != nil {
		return err
	}
	eb := record.NewBroadcaster()
	defer eb.Shutdown()
	eb.StartRecordingToSink(&corev1client.EventSinkImpl{Interface: c.kube.CoreV1().Events(corev1.NamespaceAll)})
	pc, err := node.NewPodController(node.PodControllerConfig{
		PodClient:                 c.kube.CoreV1(),
		EventRecorder:             eb.NewRecorder(scheme.Scheme, corev1.EventSource{Component: path.Join(name, "pod-controller")}),
		Provider:                  prov,
		PodInformer:               pods,
		SecretInformer:            unused.Core().V1().Secrets(),
		ConfigMapInformer:         unused.Core().V1().ConfigMaps(),
		ServiceInformer:           unused.Core().V1().Services(),
		SkipDownwardAPIResolution: true,
	})
	if err != nil {
		return err
	}
	stopHTTP, err := serveKubeletAPI(c, prov, pods.Lister())
	if err != nil {
		return err
	}
	defer stopHTTP()
	podFactory.Start(ctx.Done())
	go pc.Run(ctx, 4) //nolint:errcheck // its error is read from pc.Err()
	select {
	case <-pc.Ready():
	case <-pc.Done():
		return pc.Err()
	case <-ctx.Done():
		return nil
	}
	go nc.Run(ctx) //nolint:errcheck // its error is read from nc.Err()
	select {
	case <-nc.Ready():
	case <-nc.Done():
		return nc.Err()
	case <-ctx.Done():
		return nil
	}
	// The status loop reads the Pod informer, synced by now.
	go prov.Run(ctx)
	select {
	case <-ctx.Done():
		<-pc.Done()
		return nil
	case <-pc.Done():
		return pc.Err()
	case <-nc.Done():
		return nc.Err()
	}
}

// serveKubeletAPI serves logs, exec, attach and port-forward (and the pod
// and stats lists) to the API server, authenticated and authorized as a
// kubelet's are.
func serveKubeletAPI(c serveConfig, p *Provider, pods corev1listers.PodLister) (func(), error) {
	h := vkapi.PodHandler(vkapi.PodHandlerConfig{
		RunInContainer:        p.RunInContainer,
		AttachToContainer:     p.AttachToContainer,
		GetContainerLogs:      p.GetContainerLogs,
		PortForward:           p.PortForward,
		GetPods:               p.GetPods,
		GetPodsFromKubernetes: func(context.Context) ([]*corev1.Pod, error) { return pods.List(labels.Everything()) },
		GetStatsSummary:       p.GetStatsSummary,
		GetMetricsResource:    p.GetMetricsResource,
		StreamIdleTimeout:     4 * time.Hour,
		StreamCreationTimeout: 30 * time.Second,
	}, false)
	ln, err := tls.Listen("tcp", c.listen, c.tls)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: nodeutil.WithAuth(c.auth, h), ReadHeaderTimeout: 30 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			c.provider.Log.Error("kubelet API", "err", err)
		}
	}()
	return func() { srv.Close() }, nil
}
