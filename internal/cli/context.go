package cli

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"

	"github.com/banger-dev/banger/internal/cli/output"
	"github.com/banger-dev/banger/internal/imagespec"
	"github.com/banger-dev/banger/internal/kubeclient"
)

// The commands that work against a cluster ('banger --context NAME'); the
// rest are the local daemon's.
var contextCommands = map[string]bool{
	"banger vm run": true, "banger vm list": true, "banger vm delete": true, "banger vm exec": true,
	"banger config show": true, "banger version": true,
}

// checkContext refuses --context on a command that only the local daemon
// can do, before anything happens.
func (a *app) checkContext(cmd *cobra.Command) error {
	if a.kubeContext == "" {
		a.kubeContext = os.Getenv("BANGER_CONTEXT")
	}
	if a.kubeContext == "" || contextCommands[cmd.CommandPath()] || !cmd.Runnable() || cmd.Name() == "help" ||
		strings.HasPrefix(cmd.CommandPath(), "banger __complete") || strings.HasPrefix(cmd.CommandPath(), "banger completion") {
		return nil
	}
	return usageError{fmt.Errorf("%s does not work with --context %s (a cluster runs vm run, vm exec, vm list and vm delete); drop --context for the local daemon", cmd.CommandPath(), a.kubeContext)}
}

// completeContexts offers the config's context names for --context.
func (a *app) completeContexts(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	cfg, _, err := a.config()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return slices.Sorted(maps.Keys(cfg.Config.Contexts)), cobra.ShellCompDirectiveNoFileComp
}

// cluster opens the [contexts.NAME] cluster of the config.
func (a *app) cluster() (*kubeclient.Cluster, error) {
	cfg, l, err := a.config()
	if err != nil {
		return nil, err
	}
	cx, ok := cfg.Config.Contexts[a.kubeContext]
	if !ok {
		return nil, usageError{fmt.Errorf("--context %s: no [contexts.%s] in %s (docs/scale-out.md shows one)", a.kubeContext, a.kubeContext, l.ConfigFile())}
	}
	kc := cx.Kubeconfig
	if strings.HasPrefix(kc, "~/") {
		home, _ := os.UserHomeDir()
		kc = filepath.Join(home, kc[2:])
	}
	c, err := kubeclient.Open(kc, cx.KubeContext, cx.Namespace)
	if err != nil {
		return nil, fmt.Errorf("--context %s: %w", a.kubeContext, err)
	}
	return c, nil
}

// vmRunKube is 'vm run' on a cluster: the VM is a Pod banger-vk runs; the
// workspace goes in and the command runs through the API server's exec.
func (a *app) vmRunKube(cmd *cobra.Command, path string, args []string, fl *vmRunFlags) error {
	ctx := cmd.Context()
	if len(args) == 0 && !fl.detach {
		return usageError{errors.New("vm run --context: give a command ('-- CMD') or -d; an interactive shell through a cluster is not supported yet")}
	}
	plan, done, err := a.planVMRun(ctx, path, fl.create.params(cmd), fl)
	if err != nil || done {
		return err
	}
	if plan.bootstrap {
		return usageError{errors.New("vm run --context does not install mise toolchains yet; pass --no-bootstrap")}
	}
	if plan.ws != nil && plan.params.Image == "" {
		if _, err := os.Lstat(filepath.Join(plan.ws.Root, imagespec.File)); err == nil {
			return usageError{fmt.Errorf("vm run --context cannot build %s's derived image on the cluster yet; pass --image", imagespec.File)}
		}
	}
	cl, err := a.cluster()
	if err != nil {
		return err
	}
	spec := kubeclient.VMSpec{Name: plan.params.Name, Image: plan.params.Image, NAT: plan.params.NAT, Cold: plan.params.Cold,
		Workspace: plan.guestPath}
	if err := a.kubeSpec(&spec, plan); err != nil {
		return err
	}
	pod, err := cl.Create(ctx, spec)
	if err != nil {
		return err
	}
	if fl.rm {
		defer a.deleteKubeVM(cl, pod.Name)
	}
	name := pod.Name
	if pod, err = a.waitKubeVM(ctx, cl, name); err != nil {
		if errors.Is(err, kubeclient.ErrUnschedulable) && !fl.rm {
			a.deleteKubeVM(cl, name) // no VM exists; a Pod left Pending would make one later, unasked
		}
		return err
	}
	r := kubeclient.Runner{C: cl, Pod: pod.Name}
	if plan.ws != nil {
		if err := a.sendWorkspace(ctx, r, pod.Name, plan.ws, plan.guestPath); err != nil {
			return err
		}
	}
	if fl.detach {
		fmt.Fprintf(a.stdout, "%s running on %s (%s)\n", pod.Name, pod.Spec.NodeName, pod.Status.PodIP)
		return nil
	}
	if plan.ws != nil {
		args = append([]string{"sh", "-c", `cd "$1" && shift && exec "$@"`, "sh", plan.guestPath}, args...)
	}
	return exitStatus(cl.Exec(ctx, pod.Name, args, nil, a.stdout, a.stderr))
}

// kubeSpec fills the VM's size and labels from the flags, defaulting to
// the image in config.
func (a *app) kubeSpec(s *kubeclient.VMSpec, plan vmRunPlan) error {
	p := plan.params
	if p.VCPU != nil {
		s.VCPU = *p.VCPU
	}
	if p.MemoryMiB != nil {
		s.MemoryMiB = *p.MemoryMiB
	}
	if p.DiskSize != nil {
		s.DiskSize = *p.DiskSize
	}
	s.Labels = p.Labels
	if s.Image == "" {
		cfg, _, err := a.config()
		if err != nil {
			return err
		}
		s.Image = cfg.Config.DefaultImage
	}
	return nil
}

// waitKubeVM waits for the Pod to run, showing where it is on a terminal.
func (a *app) waitKubeVM(ctx context.Context, cl *kubeclient.Cluster, name string) (*corev1.Pod, error) {
	tty := output.IsTerminal(a.stderr)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	pod, err := cl.Wait(wctx, name, func(state string) {
		if tty {
			fmt.Fprintf(a.stderr, "%s\n", output.Dim(a.stderr, fmt.Sprintf("%s: %s", name, state)))
		}
	})
	if err != nil {
		return nil, err
	}
	return pod, nil
}

// deleteKubeVM is --rm's cleanup, with a fresh context (Ctrl-C must not
// abort it); it only reports a failure.
func (a *app) deleteKubeVM(cl *kubeclient.Cluster, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := cl.Delete(ctx, name); err != nil {
		a.printError(fmt.Errorf("could not delete VM pod %s: %w", name, err))
	}
}

// vmListKube lists the cluster's VM Pods.
func (a *app) vmListKube(ctx context.Context, asJSON bool) error {
	cl, err := a.cluster()
	if err != nil {
		return err
	}
	pods, err := cl.List(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		return output.JSON(a.stdout, pods)
	}
	rows := make([][]string, 0, len(pods))
	for _, p := range pods {
		img := ""
		if len(p.Spec.Containers) > 0 {
			img = p.Spec.Containers[0].Image
		}
		rows = append(rows, []string{p.Name, strings.ToLower(string(p.Status.Phase)), orDash(p.Status.PodIP), kubeclient.VCPUs(p), img, orDash(p.Spec.NodeName), age(p.CreationTimestamp.Format(time.RFC3339Nano))})
	}
	return output.Table(a.stdout, []string{"NAME", "STATE", "IP", "VCPU", "IMAGE", "NODE", "AGE"}, rows)
}

// vmDeleteKube deletes VM Pods (banger-vk deletes their VMs).
func (a *app) vmDeleteKube(ctx context.Context, names []string) error {
	cl, err := a.cluster()
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := cl.Delete(ctx, n); err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "%s deleted\n", n)
	}
	return nil
}

// vmExecKube runs a command in a VM Pod's guest.
func (a *app) vmExecKube(ctx context.Context, name string, argv []string) error {
	cl, err := a.cluster()
	if err != nil {
		return err
	}
	return exitStatus(cl.Exec(ctx, name, argv, nil, a.stdout, a.stderr))
}
