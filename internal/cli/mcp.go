package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/buildinfo"
	"github.com/banger-dev/banger/internal/guestssh"
)

// maxToolOutput caps each output stream a tool returns to the agent.
const maxToolOutput = 1 << 20

func (a *app) mcpCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mcp",
		Short: "Serve banger to coding agents over the Model Context Protocol",
		Example: `  banger mcp serve     # an MCP server on stdin/stdout
  claude mcp add banger -- banger mcp serve`,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "serve",
		Short: "Run an MCP server on stdin and stdout (for an agent to start)",
		Long: `Run a Model Context Protocol server on stdin and stdout. Its tools run
commands in throwaway VMs (run), in existing ones (exec), copy files (cp),
and list, create, park, resume, fork and delete VMs, each with a JSON schema
and a description an agent can act on. A tool that fails returns a tool
error with banger's one-line message; the server keeps serving. The tools
reach the daemon as this CLI does (starting it in user mode).`,
		Example: "  banger mcp serve",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.mcpServer().Run(cmd.Context(), &mcp.StdioTransport{})
		},
	})
	return cmd
}

// mcpServer is banger's MCP server: each tool runs the banger command it
// stands for, in this process, with its output captured.
func (a *app) mcpServer() *mcp.Server {
	s := mcp.NewServer(&mcp.Implementation{Name: "banger", Version: buildinfo.Get().Version}, nil)
	mcp.AddTool(s, &mcp.Tool{Name: "run", Description: "Run a command in a fresh, throwaway Linux microVM (deleted afterwards) and return its exit code and output. " +
		"Give workspace (a host directory that is a git repository) to have it copied into the VM and the command run there, e.g. command [\"make\",\"test\"]. " +
		"The default image is a dev box with build tools, Python, Node, Go and Docker."}, a.mcpRun)
	mcp.AddTool(s, &mcp.Tool{Name: "exec", Description: "Run a command in an existing running VM (in its workspace, if one was prepared) and return its exit code and output."}, a.mcpExec)
	mcp.AddTool(s, &mcp.Tool{Name: "cp", Description: "Copy a file or directory between the host and a VM. Exactly one of src and dst is VM:PATH (e.g. dev:/root/out); the other is a host path. Modes, times and symlinks are kept."}, a.mcpCp)
	mcp.AddTool(s, &mcp.Tool{Name: "list", Description: "List VMs with their state, address, image and labels. Filters like label=team=web or state=running narrow the list (all must match)."}, a.mcpList)
	mcp.AddTool(s, &mcp.Tool{Name: "ports", Description: "List the listening sockets in running VMs, with endpoints (NAME.vm:PORT) and http links the host can reach."}, a.mcpPorts)
	mcp.AddTool(s, &mcp.Tool{Name: "create", Description: "Create and boot a VM to keep (for several exec calls); it stays until deleted."}, a.mcpCreate)
	mcp.AddTool(s, &mcp.Tool{Name: "park", Description: "Snapshot a running VM to disk and stop its VMM: it holds no memory; exec, or resume, wakes it with its processes as they were."}, a.mcpVMVerb("park"))
	mcp.AddTool(s, &mcp.Tool{Name: "resume", Description: "Wake a parked VM (or resume a paused one)."}, a.mcpVMVerb("resume"))
	mcp.AddTool(s, &mcp.Tool{Name: "delete", Description: "Delete a VM and its disks (irreversible)."}, a.mcpVMVerb("delete"))
	mcp.AddTool(s, &mcp.Tool{Name: "fork", Description: "Make running copies of a VM from its memory and disks as they are now (each with its own name, address and identity)."}, a.mcpFork)
	return s
}

// cliResult is one banger command's outcome.
type cliResult struct {
	stdout, stderr string
	code           int
	truncated      bool
}

// cli runs banger args in this process with its output captured (each
// stream capped). A command that ran and exited non-zero (a guest command's
// own code) is a result; banger failing is the error, its message one line.
func (a *app) cli(ctx context.Context, args ...string) (cliResult, error) {
	out, errb := &guestssh.HeadBuffer{Max: maxToolOutput}, &guestssh.HeadBuffer{Max: maxToolOutput}
	sub := &app{stdin: strings.NewReader(""), stdout: out, stderr: errb, system: a.system}
	root := sub.rootCmd()
	root.SetArgs(args)
	root.SetIn(sub.stdin)
	root.SetOut(out)
	root.SetErr(errb)
	err := root.ExecuteContext(ctx)
	r := cliResult{stdout: out.String(), stderr: errb.String(), truncated: out.Len() >= maxToolOutput || errb.Len() >= maxToolOutput}
	var ec *ExitCodeError
	switch {
	case errors.As(err, &ec):
		r.code = ec.Code
		return r, nil
	case err != nil:
		if ctx.Err() != nil {
			return r, fmt.Errorf("timed out (%v)", context.Cause(ctx))
		}
		return r, err
	}
	return r, nil
}

// timeoutFor bounds a tool call: seconds (default 600, at most 3600).
func timeoutFor(ctx context.Context, seconds int) (context.Context, context.CancelFunc, error) {
	if seconds < 0 || seconds > 3600 {
		return nil, nil, fmt.Errorf("timeout_seconds %d: must be 1-3600 (0 for the default, 600)", seconds)
	}
	if seconds == 0 {
		seconds = 600
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(seconds)*time.Second)
	return ctx, cancel, nil
}

// CommandOutput is what run and exec return.
type CommandOutput struct {
	ExitCode  int    `json:"exit_code" jsonschema:"the command's exit code (128+N when killed by signal N)"`
	Stdout    string `json:"stdout"`
	Stderr    string `json:"stderr"`
	Truncated bool   `json:"truncated,omitempty" jsonschema:"an output stream was cut at 1 MiB"`
}

// RunInput is the run tool's arguments.
type RunInput struct {
	Command        []string `json:"command" jsonschema:"the command and its arguments, run without a shell; use [\"sh\",\"-c\",\"...\"] for shell syntax"`
	Workspace      string   `json:"workspace,omitempty" jsonschema:"absolute host path of a git repository to copy into the VM; the command runs in it"`
	Image          string   `json:"image,omitempty" jsonschema:"image to boot (default: the configured default, the dev box)"`
	NAT            bool     `json:"nat,omitempty" jsonschema:"give the VM outbound network access (package downloads)"`
	TimeoutSeconds int      `json:"timeout_seconds,omitempty" jsonschema:"give up after this many seconds (default 600, at most 3600)"`
}

func (a *app) mcpRun(ctx context.Context, _ *mcp.CallToolRequest, in RunInput) (*mcp.CallToolResult, CommandOutput, error) {
	if len(in.Command) == 0 {
		return nil, CommandOutput{}, errors.New("command: give at least the program to run")
	}
	ctx, cancel, err := timeoutFor(ctx, in.TimeoutSeconds)
	if err != nil {
		return nil, CommandOutput{}, err
	}
	defer cancel()
	args := []string{"vm", "run", "--rm"}
	if in.Image != "" {
		args = append(args, "--image", in.Image)
	}
	if in.NAT {
		args = append(args, "--nat")
	}
	if in.Workspace != "" {
		args = append(args, in.Workspace)
	}
	return a.commandOutput(a.cli(ctx, append(append(args, "--"), in.Command...)...))
}

// ExecInput is the exec tool's arguments.
type ExecInput struct {
	VM             string   `json:"vm" jsonschema:"the VM's name"`
	Command        []string `json:"command" jsonschema:"the command and its arguments, run without a shell; use [\"sh\",\"-c\",\"...\"] for shell syntax"`
	TimeoutSeconds int      `json:"timeout_seconds,omitempty" jsonschema:"give up after this many seconds (default 600, at most 3600)"`
}

func (a *app) mcpExec(ctx context.Context, _ *mcp.CallToolRequest, in ExecInput) (*mcp.CallToolResult, CommandOutput, error) {
	if in.VM == "" || len(in.Command) == 0 {
		return nil, CommandOutput{}, errors.New("vm and command are both needed")
	}
	ctx, cancel, err := timeoutFor(ctx, in.TimeoutSeconds)
	if err != nil {
		return nil, CommandOutput{}, err
	}
	defer cancel()
	return a.commandOutput(a.cli(ctx, append([]string{"vm", "exec", in.VM, "--"}, in.Command...)...))
}

func (a *app) commandOutput(r cliResult, err error) (*mcp.CallToolResult, CommandOutput, error) {
	if err != nil {
		return nil, CommandOutput{}, toolError(err)
	}
	return nil, CommandOutput{ExitCode: r.code, Stdout: r.stdout, Stderr: r.stderr, Truncated: r.truncated}, nil
}

// toolError is banger's error as an agent reads it.
func toolError(err error) error {
	return errors.New(strings.TrimPrefix(strings.TrimSpace(err.Error()), "banger: "))
}

// CpInput is the cp tool's arguments.
type CpInput struct {
	Src string `json:"src" jsonschema:"what to copy: a host path, or VM:PATH"`
	Dst string `json:"dst" jsonschema:"where to: a host path, or VM:PATH (a directory receives the source inside it)"`
}

// Done is what a tool that only acts returns.
type Done struct {
	Message string `json:"message"`
}

func (a *app) mcpCp(ctx context.Context, _ *mcp.CallToolRequest, in CpInput) (*mcp.CallToolResult, Done, error) {
	if _, err := a.cli(ctx, "vm", "cp", in.Src, in.Dst); err != nil {
		return nil, Done{}, toolError(err)
	}
	return nil, Done{Message: fmt.Sprintf("copied %s to %s", in.Src, in.Dst)}, nil
}

// ListInput is the list tool's arguments.
type ListInput struct {
	Filters []string `json:"filters,omitempty" jsonschema:"filters, each one of: label=KEY=VALUE, label=KEY, state=STATE, image=NAME; all must match"`
}

// VMSummary is one VM as the list and create tools show it.
type VMSummary struct {
	Name   string            `json:"name"`
	State  string            `json:"state"`
	IP     string            `json:"ip"`
	DNS    string            `json:"dns_name"`
	Image  string            `json:"image"`
	Labels map[string]string `json:"labels,omitempty"`
}

// VMList is the list tool's result.
type VMList struct {
	VMs []VMSummary `json:"vms"`
}

func summary(v api.VM) VMSummary {
	return VMSummary{Name: v.Name, State: v.State, IP: v.IP, DNS: v.DNSName, Image: v.Image, Labels: v.Labels}
}

func (a *app) mcpList(ctx context.Context, _ *mcp.CallToolRequest, in ListInput) (*mcp.CallToolResult, VMList, error) {
	args := []string{"vm", "list", "--json"}
	for _, f := range in.Filters {
		args = append(args, "--filter", f)
	}
	var vms []api.VM
	if err := a.cliJSON(ctx, &vms, args...); err != nil {
		return nil, VMList{}, err
	}
	out := VMList{VMs: []VMSummary{}}
	for _, v := range vms {
		out.VMs = append(out.VMs, summary(v))
	}
	return nil, out, nil
}

// cliJSON runs a banger command that prints JSON and decodes it.
func (a *app) cliJSON(ctx context.Context, v any, args ...string) error {
	r, err := a.cli(ctx, args...)
	if err != nil {
		return toolError(err)
	}
	if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
		return fmt.Errorf("banger %s printed no JSON: %v", strings.Join(args[:2], " "), err)
	}
	return nil
}

// PortsInput is the ports tool's arguments.
type PortsInput struct {
	VMs []string `json:"vms,omitempty" jsonschema:"VM names (default: every running VM)"`
}

// PortsOutput is the ports tool's result.
type PortsOutput struct {
	VMs []api.VMPorts `json:"vms"`
}

func (a *app) mcpPorts(ctx context.Context, _ *mcp.CallToolRequest, in PortsInput) (*mcp.CallToolResult, PortsOutput, error) {
	var out PortsOutput
	if err := a.cliJSON(ctx, &out.VMs, append([]string{"vm", "ports", "--json"}, in.VMs...)...); err != nil {
		return nil, PortsOutput{}, err
	}
	return nil, out, nil
}

// CreateInput is the create tool's arguments.
type CreateInput struct {
	Name   string            `json:"name,omitempty" jsonschema:"the VM's name, a DNS label (default: generated)"`
	Image  string            `json:"image,omitempty" jsonschema:"image to boot (default: the configured default, the dev box)"`
	NAT    bool              `json:"nat,omitempty" jsonschema:"give the VM outbound network access"`
	Labels map[string]string `json:"labels,omitempty" jsonschema:"labels to find it by (list filters label=KEY=VALUE)"`
}

func (a *app) mcpCreate(ctx context.Context, _ *mcp.CallToolRequest, in CreateInput) (*mcp.CallToolResult, VMSummary, error) {
	args := []string{"vm", "create", "--json"}
	if in.Name != "" {
		args = append(args, "--name", in.Name)
	}
	if in.Image != "" {
		args = append(args, "--image", in.Image)
	}
	if in.NAT {
		args = append(args, "--nat")
	}
	for k, v := range in.Labels {
		args = append(args, "--label", k+"="+v)
	}
	var v api.VM
	if err := a.cliJSON(ctx, &v, args...); err != nil {
		return nil, VMSummary{}, err
	}
	return nil, summary(v), nil
}

// VMInput names one VM.
type VMInput struct {
	VM string `json:"vm" jsonschema:"the VM's name"`
}

func (a *app) mcpVMVerb(verb string) mcp.ToolHandlerFor[VMInput, Done] {
	return func(ctx context.Context, _ *mcp.CallToolRequest, in VMInput) (*mcp.CallToolResult, Done, error) {
		if in.VM == "" {
			return nil, Done{}, errors.New("vm: give the VM's name")
		}
		r, err := a.cli(ctx, "vm", verb, in.VM)
		if err != nil {
			return nil, Done{}, toolError(err)
		}
		return nil, Done{Message: strings.TrimSpace(r.stdout)}, nil
	}
}

// ForkInput is the fork tool's arguments.
type ForkInput struct {
	VM    string `json:"vm" jsonschema:"the VM to copy"`
	Count int    `json:"count,omitempty" jsonschema:"how many copies (1-16, default 1)"`
}

// ForkOutput names the copies.
type ForkOutput struct {
	Forks []VMSummary `json:"forks"`
}

func (a *app) mcpFork(ctx context.Context, _ *mcp.CallToolRequest, in ForkInput) (*mcp.CallToolResult, ForkOutput, error) {
	if in.VM == "" {
		return nil, ForkOutput{}, errors.New("vm: give the VM's name")
	}
	args := []string{"vm", "fork", in.VM, "--json"}
	if in.Count > 0 {
		args = append(args, "--count", strconv.Itoa(in.Count))
	}
	var r api.VMForkResult
	if err := a.cliJSON(ctx, &r, args...); err != nil {
		return nil, ForkOutput{}, err
	}
	out := ForkOutput{Forks: []VMSummary{}}
	for _, v := range r.Forks {
		out.Forks = append(out.Forks, summary(v))
	}
	return nil, out, nil
}
