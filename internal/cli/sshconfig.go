package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/atomicfile"
	"github.com/banger-dev/banger/internal/guestssh"
	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
)

// The fence around banger's lines in ~/.ssh/config.
const (
	sshBegin = "# >>> banger ssh-config >>>"
	sshEnd   = "# <<< banger ssh-config <<<"
)

func (a *app) sshConfigCmd() *cobra.Command {
	var install, uninstall bool
	cmd := &cobra.Command{
		Use:   "ssh-config [--install | --uninstall]",
		Short: "Make plain 'ssh NAME.vm' (and scp, rsync, editors) reach banger's VMs",
		Long: `Write ~/.config/banger/ssh_config, a Host *.vm block for OpenSSH: user root,
banger's key, host keys checked against the ones banger pinned, and the
connection made through banger (which finds the VM by name, and wakes it if
it is parked), so no resolver set-up is needed.

--install adds one Include line for it to the top of ~/.ssh/config, fenced
by marker comments (running it again changes nothing); --uninstall removes
exactly those lines and the file, leaving the rest of ~/.ssh/config as it
was. Without a flag it prints the file and whether the Include is there.`,
		Example: `  banger ssh-config --install
  ssh dev.vm
  scp ./notes.txt dev.vm:/root/
  banger ssh-config --uninstall`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if install && uninstall {
				return usageError{errors.New("ssh-config: --install and --uninstall go separately")}
			}
			home, err := os.UserHomeDir()
			if err != nil {
				return err
			}
			s := sshSetup{home: home}
			switch {
			case uninstall:
				if err := s.uninstall(); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "removed banger's Include from %s and %s\n", s.userConfig(), s.file())
				return nil
			case install:
				if err := a.writeSSHFile(cmd.Context(), s); err != nil {
					return err
				}
				if err := s.install(); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "installed: %s includes %s; try 'ssh NAME.vm'\n", s.userConfig(), s.file())
				return nil
			}
			if err := a.writeSSHFile(cmd.Context(), s); err != nil {
				return err
			}
			state := "not included yet: 'banger ssh-config --install' adds it"
			if b, _ := os.ReadFile(s.userConfig()); bytes.Contains(b, []byte(sshBegin)) {
				state = "included from " + s.userConfig()
			}
			fmt.Fprintf(a.stdout, "%s (%s):\n\n", s.file(), state)
			b, err := os.ReadFile(s.file())
			if err != nil {
				return err
			}
			a.stdout.Write(b)
			return nil
		},
	}
	cmd.Flags().BoolVar(&install, "install", false, "add the Include to ~/.ssh/config (idempotent)")
	cmd.Flags().BoolVar(&uninstall, "uninstall", false, "remove banger's lines from ~/.ssh/config and its ssh_config")
	return cmd
}

// sshSetup is where ssh-config writes, under one home directory.
type sshSetup struct{ home string }

func (s sshSetup) file() string       { return filepath.Join(s.home, ".config", "banger", "ssh_config") }
func (s sshSetup) userConfig() string { return filepath.Join(s.home, ".ssh", "config") }

// includeBlock is the fenced lines install puts at the top of ~/.ssh/config.
func (s sshSetup) includeBlock() string {
	return sshBegin + "\nInclude " + quoteSSH(s.file()) + "\n" + sshEnd + "\n"
}

// writeSSHFile writes banger's ssh_config for this user and mode.
func (a *app) writeSSHFile(ctx context.Context, s sshSetup) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	l, err := a.layout()
	if err != nil {
		return err
	}
	c, err := a.loadConfig(l)
	if err != nil {
		return err
	}
	key := c.SSHKeyPath
	if key == "" {
		key = filepath.Join(l.StateDir, "ssh", "id_ed25519")
	}
	banger := quoteSSH(self)
	if a.system {
		banger += " --system"
	}
	body := fmt.Sprintf(`# Written by 'banger ssh-config'; 'banger ssh-config --uninstall' removes it.
# Plain ssh to banger's VMs: ssh NAME.vm
Host *.vm
    User root
    IdentityFile %s
    IdentitiesOnly yes
    UserKnownHostsFile /dev/null
    KnownHostsCommand %s internal known-hosts %%H
    StrictHostKeyChecking yes
    ProxyCommand %s internal ssh-proxy %%h %%p
`, quoteSSH(key), banger, banger)
	if err := os.MkdirAll(filepath.Dir(s.file()), 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(s.file(), []byte(body), 0o600)
}

// quoteSSH quotes a path for ssh_config when it holds a space.
func quoteSSH(p string) string {
	if strings.ContainsAny(p, " \t") {
		return `"` + p + `"`
	}
	return p
}

// install puts the include block at the top of ~/.ssh/config (made 0600,
// in a 0700 ~/.ssh, when missing), or leaves a config that has it alone.
func (s sshSetup) install() error {
	cfg := s.userConfig()
	old, err := os.ReadFile(cfg)
	mode := fs.FileMode(0o600)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(cfg), 0o700); err != nil {
			return err
		}
	case err != nil:
		return err
	default:
		if fi, err := os.Stat(cfg); err == nil {
			mode = fi.Mode().Perm()
		}
	}
	if cur, ok := fenced(old); ok {
		if cur == s.includeBlock() {
			return nil
		}
		old, _ = unfence(old)
	}
	return atomicfile.WriteFile(cfg, append([]byte(s.includeBlock()), old...), mode)
}

// uninstall removes the fenced lines (and nothing else) and banger's file.
func (s sshSetup) uninstall() error {
	cfg := s.userConfig()
	old, err := os.ReadFile(cfg)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if rest, ok := unfence(old); ok {
		fi, err := os.Stat(cfg)
		if err != nil {
			return err
		}
		if err := atomicfile.WriteFile(cfg, rest, fi.Mode().Perm()); err != nil {
			return err
		}
	}
	if err := os.Remove(s.file()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// fenced is the block between the markers, the markers included.
func fenced(b []byte) (string, bool) {
	i := bytes.Index(b, []byte(sshBegin+"\n"))
	if i < 0 || i > 0 && b[i-1] != '\n' {
		return "", false
	}
	j := bytes.Index(b[i:], []byte(sshEnd+"\n"))
	if j < 0 {
		return "", false
	}
	return string(b[i : i+j+len(sshEnd)+1]), true
}

// unfence is b without the fenced block.
func unfence(b []byte) ([]byte, bool) {
	block, ok := fenced(b)
	if !ok {
		return b, false
	}
	i := bytes.Index(b, []byte(block))
	return append(append([]byte(nil), b[:i]...), b[i+len(block):]...), true
}

// vmOfHost is the VM name of an ssh host "NAME.vm" (or "[NAME.vm]:22").
func vmOfHost(host string) (string, error) {
	h := host
	if strings.HasPrefix(h, "[") {
		if end := strings.Index(h, "]"); end > 0 {
			h = h[1:end]
		}
	}
	name, ok := strings.CutSuffix(strings.ToLower(h), ".vm")
	if !ok || name == "" || strings.ContainsAny(name, "./") {
		return "", usageError{fmt.Errorf("%q is not a banger VM's ssh name (NAME.vm)", host)}
	}
	return name, nil
}

func (a *app) sshHelperCmds() []*cobra.Command {
	return []*cobra.Command{{
		Use:   "known-hosts HOST",
		Short: "Print the host keys banger pinned for HOST (NAME.vm), in known_hosts form (ssh's KnownHostsCommand)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			info, err := a.hostInfo(cmd.Context(), args[0], false)
			if err != nil {
				return err
			}
			keys, err := guestssh.OpenKnownHosts(info.KnownHosts).Keys(info.Host)
			if err != nil {
				return err
			}
			for _, k := range keys {
				fmt.Fprintf(a.stdout, "%s %s", args[0], ssh.MarshalAuthorizedKey(k))
			}
			return nil
		},
	}, {
		Use:   "ssh-proxy HOST PORT",
		Short: "Connect stdin and stdout to PORT of VM HOST (NAME.vm), waking it if parked (ssh's ProxyCommand)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			info, err := a.hostInfo(cmd.Context(), args[0], true)
			if err != nil {
				return err
			}
			conn, err := (&net.Dialer{}).DialContext(cmd.Context(), "tcp", net.JoinHostPort(info.Host, args[1]))
			if err != nil {
				return err
			}
			defer conn.Close()
			return pipe(conn, a.stdin, a.stdout)
		},
	}}
}

// hostInfo is how to reach the VM of ssh host NAME.vm; wake wakes it
// first when it is parked or paused.
func (a *app) hostInfo(ctx context.Context, host string, wake bool) (api.SSHInfo, error) {
	var info api.SSHInfo
	name, err := vmOfHost(host)
	if err != nil {
		return info, err
	}
	c, _, err := a.daemon(ctx)
	if err != nil {
		return info, err
	}
	if wake {
		return info, a.sshInfo(ctx, c, name, &info)
	}
	return info, c.Call(ctx, api.MethodVMSSHInfo, api.VMRef{Name: name}, &info)
}

// pipe copies in to conn and conn to out until conn's far end closes.
func pipe(conn net.Conn, in io.Reader, out io.Writer) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(conn, in)
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	_, err := io.Copy(out, conn)
	conn.Close()
	return err
}
