package agent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"strings"
	"sync"
	"time"
)

// DefaultVsockPort is the AF_VSOCK port the agent listens on.
const DefaultVsockPort = 1024

// Options configure [Run].
type Options struct {
	VsockPort  uint32   // 0 disables the vsock transport
	SerialName string   // virtio-serial port name; "" disables the serial transport
	Listen     []string // extra listeners, "unix:/path" or "tcp:HOST:PORT"
	Logf       func(format string, args ...any)
}

// Run serves every available transport concurrently until ctx is done. A
// transport that is missing or fails is logged and skipped; Run returns when
// ctx is done or no transport is left.
func Run(ctx context.Context, o Options) {
	logf := o.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, addr := range o.Listen {
		l, err := Listen(addr)
		if err != nil {
			logf("listen %s: %v", addr, err)
			continue
		}
		logf("serving on %s", addr)
		wg.Go(func() {
			if err := Serve(ctx, l, logf); err != nil {
				logf("%s: %v", addr, err)
			}
		})
	}
	if o.VsockPort != 0 {
		wg.Go(func() { runVsock(ctx, o.VsockPort, logf) })
	}
	if o.SerialName != "" {
		wg.Go(func() { runSerial(ctx, o.SerialName, logf) })
	}
}

// retryStartup calls try every serialScanEvery until it succeeds, fails for
// good, or serialScanFor has passed since the start (modules may load late).
func retryStartup(ctx context.Context, try func() (retry bool)) {
	start := time.Now()
	for try() && time.Since(start) < serialScanFor {
		select {
		case <-ctx.Done():
			return
		case <-time.After(serialScanEvery):
		}
	}
}

func runVsock(ctx context.Context, port uint32, logf func(string, ...any)) {
	var l interface {
		Close() error
	}
	var lastErr error
	retryStartup(ctx, func() bool {
		ln, err := ListenVsock(port)
		if err != nil {
			lastErr = err
			return VsockUnavailable(err)
		}
		lastErr = nil
		logf("serving on vsock port %d", port)
		l = ln
		if err := Serve(ctx, ln, logf); err != nil {
			logf("vsock: %v", err)
		}
		return false
	})
	if l == nil && lastErr != nil {
		if VsockUnavailable(lastErr) {
			logf("vsock: unavailable, skipped: %v", lastErr)
		} else {
			logf("vsock: port %d: %v", port, lastErr)
		}
	}
}

func runSerial(ctx context.Context, name string, logf func(string, ...any)) {
	var dev string
	retryStartup(ctx, func() bool {
		var err error
		dev, err = FindSerialPort(name)
		return err != nil
	})
	if dev == "" {
		if ctx.Err() == nil {
			logf("serial: no virtio-serial port named %q, skipped", name)
		}
		return
	}
	logf("serving on %s (%s)", dev, name)
	ServeSerial(ctx, OpenSerial(dev), logf)
}

// listenFlag collects repeated --listen flags.
type listenFlag []string

func (f *listenFlag) String() string { return strings.Join(*f, ",") }

func (f *listenFlag) Set(s string) error {
	if _, _, err := ParseListenAddr(s); err != nil {
		return err
	}
	*f = append(*f, s)
	return nil
}

// Main is banger-agent's command line:
//
//	banger-agent [--vsock-port 1024] [--serial-name banger.agent] [--listen ADDR]... [--version]
//
// It serves until ctx is done and returns 0, or returns 2 on bad flags.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("banger-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	vsockPort := fs.Uint("vsock-port", DefaultVsockPort, "AF_VSOCK port to listen on (0 disables)")
	serialName := fs.String("serial-name", DefaultSerialName, "virtio-serial port name to serve (empty disables)")
	var listen listenFlag
	fs.Var(&listen, "listen", "also listen on `ADDR` (unix:/path or tcp:HOST:PORT; repeatable)")
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "banger-agent: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *vsockPort > 1<<32-1 {
		fmt.Fprintf(stderr, "banger-agent: --vsock-port %d out of range\n", *vsockPort)
		return 2
	}
	if *version {
		fmt.Fprintf(stdout, "banger-agent %s (protocol %d)\n", Version, ProtocolVersion)
		return 0
	}
	lg := log.New(stderr, "banger-agent: ", 0)
	lg.Printf("%s starting (protocol %d)", Version, ProtocolVersion)
	Run(ctx, Options{
		VsockPort:  uint32(*vsockPort),
		SerialName: *serialName,
		Listen:     listen,
		Logf:       lg.Printf,
	})
	if ctx.Err() == nil {
		lg.Printf("no transport left; idle")
		<-ctx.Done()
	}
	return 0
}
