package e2e

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/banger-dev/banger/internal/cli"
)

// TestMCPServer ([P12]): an MCP client (the official SDK's) starts 'banger
// mcp serve', lists its tools (each with an input schema and a
// description), runs `uname -a` in a throwaway VM (exit code 0, Linux in
// its output) and `exit 42` (exit code 42), and an invalid argument and a
// failing banger call come back as tool errors, the server still serving.
func TestMCPServer(t *testing.T) {
	v := newVMEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.Command("ip", "netns", "exec", v.ns, filepath.Join(v.bin, "banger"), "mcp", "serve")
	cmd.Env = v.environ()
	client := mcp.NewClient(&mcp.Implementation{Name: "e2e", Version: "v1"}, nil)
	cs, err := client.Connect(ctx, &mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()

	tools, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tl := range tools.Tools {
		names = append(names, tl.Name)
		if tl.Description == "" || tl.InputSchema == nil {
			t.Errorf("tool %s: description %q, schema %v", tl.Name, tl.Description, tl.InputSchema)
		}
	}
	for _, want := range []string{"run", "exec", "cp", "list", "ports", "create", "park", "resume", "fork", "delete"} {
		if !slices.Contains(names, want) {
			t.Errorf("no %s tool in %v", want, names)
		}
	}

	call := func(name string, args any) (*mcp.CallToolResult, cli.CommandOutput) {
		t.Helper()
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
		if err != nil {
			t.Fatalf("%s: protocol error %v", name, err)
		}
		var out cli.CommandOutput
		if !res.IsError {
			b, _ := json.Marshal(res.StructuredContent)
			json.Unmarshal(b, &out)
		}
		return res, out
	}
	t0 := time.Now()
	res, out := call("run", map[string]any{"command": []string{"uname", "-a"}})
	if res.IsError || out.ExitCode != 0 || !strings.Contains(out.Stdout, "Linux") {
		t.Fatalf("run uname -a: error %v, %+v (%s)", res.IsError, out, text(res))
	}
	t.Logf("run uname -a: %v", time.Since(t0).Round(time.Millisecond))
	if res, out = call("run", map[string]any{"command": []string{"sh", "-c", "echo bye >&2; exit 42"}}); res.IsError || out.ExitCode != 42 || out.Stderr != "bye\n" {
		t.Errorf("run exit 42: error %v, %+v (%s)", res.IsError, out, text(res))
	}
	if res, _ = call("run", map[string]any{"command": "not a list"}); !res.IsError || !strings.Contains(text(res), "command") {
		t.Errorf("an invalid argument: error %v, %q", res.IsError, text(res))
	}
	if res, _ = call("exec", map[string]any{"vm": "no-such-vm", "command": []string{"true"}}); !res.IsError || !strings.Contains(text(res), "no-such-vm") {
		t.Errorf("exec in a missing VM: error %v, %q", res.IsError, text(res))
	}
	res, _ = call("list", map[string]any{})
	if res.IsError {
		t.Errorf("list after the throwaway VMs: %s", text(res))
	} else if b, _ := json.Marshal(res.StructuredContent); string(b) != `{"vms":[]}` {
		t.Errorf("list: %s (the run VMs should be gone)", b)
	}
}

// text is a tool result's text content.
func text(r *mcp.CallToolResult) string {
	var b strings.Builder
	for _, c := range r.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
}
