package vk

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	vkerrdefs "github.com/virtual-kubelet/virtual-kubelet/errdefs"
	vkapi "github.com/virtual-kubelet/virtual-kubelet/node/api"
	utilexec "k8s.io/utils/exec"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guestjob"
	"github.com/banger-dev/banger/internal/guestssh"
)

// Caps on what a guest sends back that banger-vk holds in memory.
const (
	maxJobList  = 4 << 20
	maxLogBytes = 16 << 20
)

// guest dials the VM's SSH, waking it first when it is parked or paused.
func (p *Provider) guest(ctx context.Context, vm string) (*guestssh.Client, error) {
	var info api.SSHInfo
	if err := p.cfg.Daemon.Call(ctx, api.MethodVMSSHInfo, api.VMRef{Name: vm}, &info); err != nil {
		return nil, err
	}
	if info.State == api.StateParked || info.State == api.StatePaused {
		if err := p.cfg.Daemon.Call(ctx, api.MethodVMResume, api.VMResumeParams{Name: vm}, nil); err != nil {
			return nil, fmt.Errorf("wake VM %s: %w", vm, err)
		}
	} else if info.State != api.StateRunning {
		return nil, fmt.Errorf("VM %s is %s", vm, info.State)
	}
	signer, _, err := guestssh.EnsureKey(info.KeyPath)
	if err != nil {
		return nil, err
	}
	return guestssh.Dial(ctx, net.JoinHostPort(info.Host, "22"), guestssh.DialOptions{User: info.User, Signer: signer,
		KnownHosts: guestssh.OpenKnownHosts(info.KnownHosts), Timeout: 15 * time.Second})
}

// jobArgv is the container's command as a guest job: in its working
// directory, with its environment and the image's.
func jobArgv(s spec) []string {
	argv := []string{"sh", "-c", `[ -z "$1" ] || cd "$1" || exit 1; shift; exec env "$@"`, "sh", s.dir}
	argv = append(argv, s.env...)
	return guestssh.WithImageEnv(append(argv, s.command...))
}

// runCommand starts the Pod's command as a guest job (once: a job already
// running it is adopted) and waits for it to end.
func (p *Provider) runCommand(ctx context.Context, k string, e *entry, vm api.VM) {
	argv := jobArgv(e.spec)
	id := vm.Labels[LabelJob]
	for id == "" && ctx.Err() == nil {
		var err error
		if id, err = p.startJob(ctx, vm.Name, argv); err == nil {
			break
		}
		p.log.Warn("start pod command", "pod", k, "err", err)
		if !sleep(ctx, 3*time.Second) {
			return
		}
	}
	if ctx.Err() != nil {
		return
	}
	p.set(e, func(o *observed) { o.job = id })
	p.publish(k)
	for ctx.Err() == nil {
		code, err := p.waitJob(ctx, vm.Name, id)
		if err == nil {
			p.set(e, func(o *observed) { o.jobExit = &code })
			p.publish(k)
			return
		}
		p.log.Debug("wait for pod command", "pod", k, "err", err)
		if !sleep(ctx, 3*time.Second) {
			return
		}
	}
}

// startJob starts argv as a guest job and labels the VM with it. A job of
// the same argv already there (started before a restart that lost the
// label) is taken instead of a second run.
func (p *Provider) startJob(ctx context.Context, vm string, argv []string) (string, error) {
	sc, err := p.guest(ctx, vm)
	if err != nil {
		return "", err
	}
	defer sc.Close()
	jobs, err := listJobs(ctx, sc)
	if err != nil {
		return "", err
	}
	id := ""
	for _, j := range jobs {
		if slices.Equal(j.Argv, argv) {
			id = j.ID
		}
	}
	if id == "" {
		out, stderr := &guestssh.HeadBuffer{Max: 256}, &guestssh.HeadBuffer{Max: 4096}
		code, err := sc.Run(ctx, append([]string{guestjob.AgentPath, "job", "start", "--"}, argv...), nil, out, stderr)
		if err != nil {
			return "", err
		}
		id = strings.TrimSpace(out.String())
		if code != 0 || !guestjob.ValidID(id) {
			return "", fmt.Errorf("banger-agent job start exited %d: %s", code, strings.TrimSpace(stderr.String()))
		}
	}
	return id, p.cfg.Daemon.Call(ctx, api.MethodVMSet, api.VMSetParams{Name: vm, Labels: map[string]string{LabelJob: id}}, nil)
}

func listJobs(ctx context.Context, sc *guestssh.Client) ([]guestjob.Job, error) {
	out := &guestssh.HeadBuffer{Max: maxJobList}
	code, err := sc.Run(ctx, []string{guestjob.AgentPath, "job", "list"}, nil, out, io.Discard)
	if err != nil {
		return nil, err
	}
	if code != 0 {
		return nil, fmt.Errorf("banger-agent job list exited %d", code)
	}
	var js []guestjob.Job
	if err := json.Unmarshal(out.Bytes(), &js); err != nil {
		return nil, fmt.Errorf("the guest's job list is not JSON: %v", err)
	}
	return js, nil
}

// waitJob follows the job until it ends (one SSH session, its output
// discarded), then reads its exit status from the job list.
func (p *Provider) waitJob(ctx context.Context, vm, id string) (int, error) {
	sc, err := p.guest(ctx, vm)
	if err != nil {
		return 0, err
	}
	defer sc.Close()
	if _, err := sc.Run(ctx, []string{guestjob.AgentPath, "job", "logs", "-f", id}, nil, io.Discard, io.Discard); err != nil {
		return 0, err
	}
	js, err := listJobs(ctx, sc)
	if err != nil {
		return 0, err
	}
	for _, j := range js {
		if j.ID == id && !j.Running && j.ExitCode != nil {
			return *j.ExitCode, nil
		}
	}
	return 0, fmt.Errorf("job %s has not ended", id)
}

// RunInContainer runs cmd in the Pod's guest over SSH ('kubectl exec'):
// stdin, stdout and stderr stream through, and the command's exit status
// is the exec's. A TTY is not given (this slice); the command runs without.
func (p *Provider) RunInContainer(ctx context.Context, ns, pod, _ string, cmd []string, attach vkapi.AttachIO) error {
	if len(cmd) == 0 {
		return vkerrdefs.InvalidInput("exec: no command")
	}
	vm, err := p.vmOf(ctx, ns, pod)
	if err != nil {
		return err
	}
	sc, err := p.guest(ctx, vm.Name)
	if err != nil {
		return err
	}
	defer sc.Close()
	var stdout, stderr io.Writer = io.Discard, io.Discard
	if w := attach.Stdout(); w != nil {
		stdout = w
		defer w.Close()
	}
	if w := attach.Stderr(); w != nil {
		stderr = w
		defer w.Close()
	}
	code, err := sc.Run(ctx, guestssh.WithImageEnv(cmd), attach.Stdin(), stdout, stderr)
	if err != nil {
		return err
	}
	if code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", code), Code: code}
	}
	return nil
}

// AttachToContainer is refused: a VM has no single attached process; exec
// a shell instead.
func (p *Provider) AttachToContainer(context.Context, string, string, string, vkapi.AttachIO) error {
	return vkerrdefs.InvalidInput("attach is not supported by banger VMs; use kubectl exec")
}

// GetContainerLogs is the Pod's command's output (its guest job), or for a
// Pod without a command the VM's serial console. Following works for a
// command; tail and byte limits apply to what is returned whole.
func (p *Provider) GetContainerLogs(ctx context.Context, ns, pod, _ string, opts vkapi.ContainerLogOpts) (io.ReadCloser, error) {
	vm, err := p.vmOf(ctx, ns, pod)
	if err != nil {
		return nil, err
	}
	id := p.jobOf(ns, pod, vm)
	if id == "" {
		var logs api.VMLogs
		if err := p.cfg.Daemon.Call(ctx, api.MethodVMLogs, api.VMRef{Name: vm.Name}, &logs); err != nil {
			return nil, err
		}
		return io.NopCloser(strings.NewReader(trimLogs([]byte(logs.Text), opts))), nil
	}
	if !guestjob.ValidID(id) {
		return nil, fmt.Errorf("VM %s: label %s=%q is not a job id", vm.Name, LabelJob, id)
	}
	sc, err := p.guest(ctx, vm.Name)
	if err != nil {
		return nil, err
	}
	if opts.Follow {
		pr, pw := io.Pipe()
		go func() {
			defer sc.Close()
			_, err := sc.Run(ctx, []string{guestjob.AgentPath, "job", "logs", "-f", id}, nil, pw, io.Discard)
			pw.CloseWithError(err)
		}()
		return pr, nil
	}
	defer sc.Close()
	out := &guestssh.HeadBuffer{Max: maxLogBytes}
	if _, err := sc.Run(ctx, []string{guestjob.AgentPath, "job", "logs", id}, nil, out, io.Discard); err != nil {
		return nil, err
	}
	return io.NopCloser(strings.NewReader(trimLogs(out.Bytes(), opts))), nil
}

// jobOf is the guest job running the Pod's command: as banger-vk started
// it, or as the VM's label records it (after a restart).
func (p *Provider) jobOf(ns, name string, vm api.VM) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.pods[key(ns, name)]; e != nil && e.obs.job != "" {
		return e.obs.job
	}
	return vm.Labels[LabelJob]
}

// trimLogs applies kubectl's --tail and --limit-bytes.
func trimLogs(b []byte, opts vkapi.ContainerLogOpts) string {
	if opts.Tail > 0 {
		lines := bytes.SplitAfter(b, []byte("\n"))
		if len(lines) > 0 && len(lines[len(lines)-1]) == 0 {
			lines = lines[:len(lines)-1]
		}
		if len(lines) > opts.Tail {
			b = bytes.Join(lines[len(lines)-opts.Tail:], nil)
		}
	}
	if opts.LimitBytes > 0 && len(b) > opts.LimitBytes {
		b = b[:opts.LimitBytes]
	}
	return string(b)
}

// PortForward connects the stream to port on the guest ('kubectl
// port-forward'), byte for byte, until either side closes.
func (p *Provider) PortForward(ctx context.Context, ns, pod string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	vm, err := p.vmOf(ctx, ns, pod)
	if err != nil {
		return err
	}
	if vm.State != api.StateRunning {
		if sc, err := p.guest(ctx, vm.Name); err == nil { // wakes it
			sc.Close()
		}
	}
	if vm.IP == "" || port <= 0 || port > 65535 {
		return vkerrdefs.InvalidInputf("port-forward to VM %s port %d: no such address", vm.Name, port)
	}
	d := net.Dialer{Timeout: 10 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(vm.IP, strconv.Itoa(int(port))))
	if err != nil {
		return fmt.Errorf("port-forward to VM %s: %w", vm.Name, err)
	}
	defer conn.Close()
	in := make(chan error, 1)
	go func() {
		_, err := io.Copy(conn, stream)
		if tc, ok := conn.(*net.TCPConn); ok && err == nil {
			tc.CloseWrite() // the client is done sending; the guest may still answer
		} else {
			conn.Close()
		}
		in <- err
	}()
	out := make(chan error, 1)
	go func() { _, err := io.Copy(stream, conn); out <- err }()
	select {
	case err = <-out:
	case <-ctx.Done():
		err = ctx.Err()
	}
	return err
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
