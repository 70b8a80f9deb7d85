package sysexectest

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/sysexec"
)

func TestFake(t *testing.T) {
	f := (&Fake{}).On("apt-cache", Reply{Stdout: "first"}, Reply{Stderr: "E: boom\n", Code: 100})
	var r sysexec.Runner = f
	ctx := context.Background()

	res, err := r.Run(ctx, sysexec.Cmd{Path: "/usr/bin/apt-cache", Args: []string{"show", "x"}, Stdin: strings.NewReader("in")})
	if err != nil || string(res.Stdout) != "first" {
		t.Fatalf("first run: %q %v", res.Stdout, err)
	}
	for i := 0; i < 2; i++ { // the last reply repeats
		_, err = r.Run(ctx, sysexec.Cmd{Path: "apt-cache", Args: []string{"policy"}})
		var se *sysexec.Error
		if !errors.As(err, &se) || se.Code != 100 || err.Error() != "apt-cache policy: exit status 100: E: boom" {
			t.Fatalf("failing run: %v", err)
		}
	}
	var out bytes.Buffer
	f.Default = func(c sysexec.Cmd) Reply { return Reply{Stdout: "default " + c.Args[0]} }
	if _, err := r.Run(ctx, sysexec.Cmd{Path: "git", Args: []string{"status"}, Stdout: &out}); err != nil || out.String() != "default status" {
		t.Errorf("default reply: %q %v", out.String(), err)
	}
	if got := strings.Join(f.Argvs(), "; "); got != "/usr/bin/apt-cache show x; apt-cache policy; apt-cache policy; git status" {
		t.Errorf("Argvs = %q", got)
	}
	if c := f.Calls()[0]; string(c.Stdin) != "in" {
		t.Errorf("stdin recorded %q", c.Stdin)
	}

	if _, err := (&Fake{}).Run(ctx, sysexec.Cmd{Path: "mkfs.ext4"}); err == nil || !strings.Contains(err.Error(), "nothing scripted") {
		t.Errorf("unscripted run: %v", err)
	}
	missing := errors.New(`exec: "qemu-img": executable file not found in $PATH`)
	if _, err := (&Fake{}).On("qemu-img", Reply{Err: missing}).Run(ctx, sysexec.Cmd{Path: "qemu-img"}); !errors.Is(err, missing) || err.Error() != missing.Error() {
		t.Errorf("start failure: %v", err)
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := (&Fake{}).On("sleep", Reply{}).Run(done, sysexec.Cmd{Path: "sleep"}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled run: %v", err)
	}
}
