package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/cli/output"
	"github.com/banger-dev/banger/internal/guestjob"
	"github.com/banger-dev/banger/internal/guestssh"
	"github.com/spf13/cobra"
)

func (a *app) vmExecCmd() *cobra.Command {
	var (
		detach, list, asJSON bool
		kill                 bool
		signal               string
	)
	cmd := &cobra.Command{
		Use:   "exec NAME -- CMD [ARG...]",
		Short: "Run a command in a running VM (in its workspace, if one was prepared) and exit with its exit code",
		Long: `Run a command in a VM over SSH and exit with its exit code.

-d starts it in the background instead and prints its job id at once: it runs
under a supervisor in the guest, outliving this command, the daemon and the
SSH connection; its output and exit status are kept in the guest (in /run:
jobs end when the VM stops; a park and wake keeps them). Then:
  banger vm exec --list NAME          its jobs, running or with their exit status
  banger vm logs NAME --exec ID [-f]  its output (-f follows, then exits with its status)
  banger vm exec --kill NAME ID       signal it (--signal, default TERM) and report how it ended`,
		Example: `  banger vm exec dev -- uname -a
  banger vm exec dev -- sh -c 'echo $HOME'
  banger vm exec -d dev -- npm run dev
  banger vm exec --list dev
  banger vm exec --kill dev 3f2a9c01b7d4 --signal INT`,
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case list && (detach || kill):
				return usageError{errors.New("vm exec: --list goes alone: banger vm exec --list NAME")}
			case kill && detach:
				return usageError{errors.New("vm exec: -d and --kill go separately")}
			case list && len(args) != 1:
				return usageError{errors.New("usage: banger vm exec --list NAME")}
			case kill && (len(args) != 2 || cmd.ArgsLenAtDash() >= 0):
				return usageError{errors.New("usage: banger vm exec --kill NAME ID [--signal SIG]")}
			case !list && !kill && (len(args) < 2 || cmd.ArgsLenAtDash() != 1):
				return usageError{errors.New("usage: banger vm exec [-d] NAME -- CMD [ARG...]")}
			case cmd.Flags().Changed("signal") && !kill:
				return usageError{errors.New("vm exec: --signal goes with --kill")}
			case asJSON && !list:
				return usageError{errors.New("vm exec: --json goes with --list")}
			}
			if kill {
				if err := guestjob.CheckSignal(signal); err != nil {
					return usageError{fmt.Errorf("--signal: %w", err)}
				}
			}
			return nil
		},
		ValidArgsFunction: a.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if a.kubeContext != "" {
				if list || kill || detach {
					return usageError{errors.New("vm exec --context: -d, --list and --kill are the local daemon's (this slice)")}
				}
				return a.vmExecKube(ctx, args[0], args[1:])
			}
			switch {
			case list:
				return a.listJobs(ctx, args[0], asJSON)
			case kill:
				return a.killJob(ctx, args[0], args[1], signal)
			}
			c, _, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			var info api.SSHInfo
			if err := a.sshInfo(ctx, c, args[0], &info); err != nil {
				return err
			}
			argv := a.inWorkspace(ctx, info, args[1:])
			if detach {
				return a.startJob(ctx, args[0], argv)
			}
			return exitStatus(a.guestSession(ctx, c, args[0], argv, false))
		},
	}
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "start the command in the background and print its job id")
	cmd.Flags().BoolVar(&list, "list", false, "list the VM's background jobs")
	cmd.Flags().BoolVar(&asJSON, "json", false, "with --list: print JSON")
	cmd.Flags().BoolVar(&kill, "kill", false, "signal a background job: NAME ID")
	cmd.Flags().StringVar(&signal, "signal", "TERM", "with --kill: the signal (TERM, INT, KILL, HUP, … or a number)")
	return cmd
}

// agentJob runs "banger-agent job ARGS…" in VM name, its output to stdout,
// and turns its failure into one line.
func (a *app) agentJob(ctx context.Context, name string, stdout io.Writer, args ...string) (int, error) {
	c, _, err := a.daemon(ctx)
	if err != nil {
		return 0, err
	}
	var info api.SSHInfo
	if err := a.sshInfo(ctx, c, name, &info); err != nil {
		return 0, err
	}
	if info.State != api.StateRunning {
		return 0, fmt.Errorf("VM %s is %s; start it with 'banger vm start %s'", name, info.State, name)
	}
	stderr := &guestssh.HeadBuffer{Max: 4096}
	code, err := runIn(ctx, info, append([]string{guestAgent, "job"}, args...), nil, stdout, stderr)
	if err != nil {
		return 0, err
	}
	if code == 0 || args[0] == "logs" && code != 1 && code != 2 {
		return code, nil // logs -f passes the job's own status
	}
	return 0, agentModeError("", name, "job", "run background jobs (it predates 'vm exec -d')", code, stderr.String())
}

func (a *app) startJob(ctx context.Context, name string, argv []string) error {
	out := &guestssh.HeadBuffer{Max: 256}
	if _, err := a.agentJob(ctx, name, out, append([]string{"start", "--"}, argv...)...); err != nil {
		return err
	}
	id := strings.TrimSpace(out.String())
	if !guestjob.ValidID(id) {
		return fmt.Errorf("%s: the guest answered %q, not a job id", name, printable(id))
	}
	fmt.Fprintln(a.stdout, id)
	if output.IsTerminal(a.stderr) {
		fmt.Fprintln(a.stderr, output.Dim(a.stderr, fmt.Sprintf("output: banger vm logs %s --exec %s -f; stop it: banger vm exec --kill %s %s", name, id, name, id)))
	}
	return nil
}

// jobs asks the guest for its jobs; its answer is capped and checked.
func (a *app) jobs(ctx context.Context, name string) ([]guestjob.Job, error) {
	out := &guestssh.HeadBuffer{Max: 4 << 20}
	if _, err := a.agentJob(ctx, name, out, "list"); err != nil {
		return nil, err
	}
	if out.Len() >= out.Max {
		return nil, fmt.Errorf("%s: the job list is larger than %d bytes", name, out.Max)
	}
	var js []guestjob.Job
	if err := json.Unmarshal(out.Bytes(), &js); err != nil {
		return nil, fmt.Errorf("%s: the job list is not JSON: %v", name, err)
	}
	for i := range js {
		if !guestjob.ValidID(js[i].ID) {
			return nil, fmt.Errorf("%s: the job list names %q, not a job id", name, printable(js[i].ID))
		}
	}
	return js, nil
}

func (a *app) listJobs(ctx context.Context, name string, asJSON bool) error {
	js, err := a.jobs(ctx, name)
	if err != nil {
		return err
	}
	if asJSON {
		return output.JSON(a.stdout, js)
	}
	rows := [][]string{}
	for _, j := range js {
		started := j.Started
		if t, err := time.Parse(time.RFC3339Nano, j.Started); err == nil {
			started = age(t.Format(time.RFC3339Nano))
		}
		cmd := printable(strings.Join(j.Argv, " "))
		if len(cmd) > 60 {
			cmd = cmd[:57] + "..."
		}
		rows = append(rows, []string{j.ID, j.Status(), printable(started), cmd})
	}
	return output.Table(a.stdout, []string{"ID", "STATUS", "STARTED", "COMMAND"}, rows)
}

// killJob signals a job, then waits (up to 10 s) to report how it ended.
func (a *app) killJob(ctx context.Context, name, id, signal string) error {
	if _, err := a.agentJob(ctx, name, io.Discard, "kill", id, signal); err != nil {
		return err
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		js, err := a.jobs(ctx, name)
		if err != nil {
			return err
		}
		for _, j := range js {
			if j.ID == id && !j.Running {
				fmt.Fprintf(a.stdout, "job %s %s\n", id, j.Status())
				return nil
			}
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(a.stdout, "job %s signalled (%s); still running after 10s (--signal KILL ends it)\n", id, signal)
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// jobLogs prints a job's output; following, it exits with the job's own
// exit status once the job ends.
func (a *app) jobLogs(ctx context.Context, name, id string, follow bool) error {
	if !guestjob.ValidID(id) {
		return usageError{fmt.Errorf("--exec %q: not a job id (banger vm exec --list %s shows them)", id, name)}
	}
	args := []string{"logs", id}
	if follow {
		args = []string{"logs", "-f", id}
	}
	return exitStatus(a.agentJob(ctx, name, a.stdout, args...))
}

// printable replaces what a terminal would interpret in a guest's text.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return '?'
	}, s)
}
