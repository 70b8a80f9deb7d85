package fcvmm

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Main runs banger-vmm with Firecracker's command line (argv without the
// program name) and returns the exit status. While a microVM runs, the
// process ends through os.Exit or a signal instead of returning.
//
// Call it from the main goroutine with the OS thread locked in an init
// function, so the process name ("firecracker", which banger's reconcile
// checks like Firecracker's own comm) lands on the main thread.
func Main(argv []string) int {
	ensureStdio()
	signal.Ignore(syscall.SIGPIPE)
	if unix.Gettid() == os.Getpid() {
		name := []byte("firecracker\x00")
		unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&name[0])), 0, 0, 0)
	}

	a, err := parseArgs(argv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Arguments parsing error: %s\n\nFor more information try --help.\n", err)
		return exitArgParsing
	}
	switch {
	case a.has("help"):
		fmt.Print(usage)
		return exitOK
	case a.has("version"):
		fmt.Printf("Firecracker v%s\n\n", firecrackerVers)
		return exitOK
	case a.has("snapshot-version"):
		fmt.Println(snapshotVersion(snapshotFormat, snapshotLayout))
		return exitOK
	case a.has("describe-snapshot"):
		path := a.value("describe-snapshot", "")
		rec, err := readSnapshotHeader(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "Error: cannot describe snapshot %s: %v\n", path, err)
			return exitGeneric
		}
		fmt.Println(snapshotVersion(rec.Format, rec.Layout))
		return exitOK
	}

	id := a.value("id", defaultID)
	if err := validateID(id); err != nil {
		// Firecracker panics (and aborts) before creating anything.
		fmt.Fprintf(os.Stderr, "thread 'main' panicked at src/firecracker/src/main.rs:\nInvalid instance ID: %s\n", err)
		dieBySignal(syscall.SIGABRT)
	}

	log := newLogger(id)
	if code := configureLoggingFromArgs(log, a); code != exitOK {
		return code
	}
	log.info("fc_main", "Running Firecracker v%s", firecrackerVers)

	if f := a.value("seccomp-filter", ""); f != "" {
		// No filter is installed (QEMU is not Firecracker's thread model),
		// but an unreadable filter file fails as it would in Firecracker.
		if _, err := os.ReadFile(f); err != nil {
			log.errorf("fc_main", "Seccomp error: Failed to open the seccomp filter file %s: %s", f, rustIOError(err))
			return exitBadSeccomp
		}
	}

	go hostFacts() // ready by InstanceStart

	v := newVMM(id, log)
	if s := a.value("http-api-max-payload-size", ""); s != "" {
		n, _ := strconv.ParseInt(s, 10, 64)
		v.maxBody = n
	}
	if p := a.value("metrics-path", ""); p != "" {
		if err := v.met.configure(p); err != nil {
			log.errorf("fc_main", "Metrics error: %s", err)
			return exitGeneric
		}
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, append(append([]os.Signal{}, fatalSignals...), hupSignal)...)
	go func() {
		s := <-sigs
		v.sup.onSignal(s.(syscall.Signal))
	}()

	if !a.has("no-api") {
		path := a.value("api-sock", defaultAPISock)
		l, err := listenAPI(path)
		if err != nil {
			log.errorf("fc_main", "Failed to open the API socket at: %s. Check that it is not already used.", path)
			return exitGeneric
		}
		v.sup.setAPIListener(l)
		go func() {
			srv := &http.Server{Handler: v}
			if err := srv.Serve(l); err != nil && !v.sup.isStopping() {
				log.errorf("fc_api", "API server stopped: %v", err)
			}
		}()
		log.info("fc_api", "API server started.")
	}

	if cf := a.value("config-file", ""); cf != "" {
		v.mu.Lock()
		err := v.bootFromConfigFile(cf)
		v.mu.Unlock()
		if err != nil {
			log.errorf("fc_main", "Failed to build MicroVM from Json: %s", err)
			return exitBadConfig
		}
	}
	select {} // the VMM ends by os.Exit (guest reboot, SIGHUP) or a signal
}

// ensureStdio points closed descriptors 0-2 at /dev/null, so no socket or
// file the VMM opens later becomes "stdout" by accident.
func ensureStdio() {
	for fd := 0; fd <= 2; fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == unix.EBADF {
			if n, err := unix.Open("/dev/null", unix.O_RDWR, 0); err == nil && n != fd {
				unix.Dup2(n, fd)
				unix.Close(n)
			}
		}
	}
}

// listenAPI binds the API socket. It fails if anything exists at path, and
// the file is never unlinked, not even when the listener closes.
func listenAPI(path string) (*net.UnixListener, error) {
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false)
	return l, nil
}

// configureLoggingFromArgs applies --log-path, --level, --show-level and
// --show-log-origin.
func configureLoggingFromArgs(log *logger, a args) int {
	var path *string
	if p, ok := a.values["log-path"]; ok {
		path = &p
	}
	var lv *level
	if s, ok := a.values["level"]; ok {
		l, err := parseLevel(s)
		if err != nil {
			fmt.Fprintf(os.Stderr, "Arguments parsing error: Invalid value for 'level': %s\n", err)
			return exitArgParsing
		}
		lv = &l
	}
	var showLevel, showOrigin *bool
	if a.has("show-level") {
		t := true
		showLevel = &t
	}
	if a.has("show-log-origin") {
		t := true
		showOrigin = &t
	}
	if path == nil && lv == nil && showLevel == nil && showOrigin == nil {
		return exitOK
	}
	if err := log.configure(path, lv, showLevel, showOrigin); err != nil {
		fmt.Fprintf(os.Stderr, "Could not initialize logger: %s\n", err)
		return exitGeneric
	}
	return exitOK
}

// bootFromConfigFile applies a Firecracker --config-file (kebab-case keys,
// as in Firecracker's VmmConfig) through the API handlers, then starts the
// microVM.
func (v *vmm) bootFromConfigFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("Unable to read config file: %s", rustIOError(err))
	}
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fmt.Errorf("invalid JSON: %v", err)
	}
	known := map[string]bool{
		"balloon": true, "drives": true, "boot-source": true, "cpu-config": true, "logger": true,
		"machine-config": true, "metrics": true, "mmds-config": true, "network-interfaces": true,
		"vsock": true, "entropy": true, "pmem": true, "serial": true,
	}
	var keys []string
	for k := range cfg {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !known[k] {
			return fmt.Errorf("unknown field `%s`", k)
		}
	}
	present := func(k string) bool { r, ok := cfg[k]; return ok && string(r) != "null" }
	for _, k := range []string{"balloon", "cpu-config", "mmds-config"} {
		if present(k) {
			return fmt.Errorf("%s is not supported by banger-vmm", k)
		}
	}
	apply := func(res func() (int, any, *apiError)) error {
		if _, _, e := res(); e != nil {
			return errors.New(e.msg)
		}
		return nil
	}
	steps := []struct {
		key string
		fn  func([]byte) (int, any, *apiError)
	}{
		{"logger", v.putLogger}, {"metrics", v.putMetrics}, {"machine-config", v.putMachineConfig},
		{"boot-source", v.putBootSource}, {"entropy", v.putEntropy}, {"serial", v.putSerial},
		{"vsock", v.putVsock},
	}
	for _, s := range steps {
		if present(s.key) {
			if err := apply(func() (int, any, *apiError) { return s.fn(cfg[s.key]) }); err != nil {
				return err
			}
		}
	}
	for _, list := range []struct {
		key, idField string
		fn           func([]byte, *string) (int, any, *apiError)
	}{{"drives", "drive_id", v.putDrive}, {"network-interfaces", "iface_id", v.putNetwork}} {
		if !present(list.key) {
			continue
		}
		var items []json.RawMessage
		if err := json.Unmarshal(cfg[list.key], &items); err != nil {
			return fmt.Errorf("%s: %v", list.key, err)
		}
		for _, it := range items {
			var idOnly map[string]json.RawMessage
			json.Unmarshal(it, &idOnly)
			var id string
			json.Unmarshal(idOnly[list.idField], &id)
			if err := apply(func() (int, any, *apiError) { return list.fn(it, &id) }); err != nil {
				return err
			}
		}
	}
	return apply(func() (int, any, *apiError) { return v.putActions([]byte(`{"action_type":"InstanceStart"}`)) })
}
