package fcvmm

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Firecracker v1.14.1's exit codes.
const (
	exitOK          = 0
	exitGeneric     = 1
	exitBadSeccomp  = 148
	exitBadConfig   = 152
	exitArgParsing  = 153
	exitSIGHUP      = 156
	defaultAPISock  = "/run/firecracker.socket"
	defaultID       = "anonymous-instance"
	defaultMaxBody  = 51200
	firecrackerVers = "1.14.1"
)

// argSpec describes one of Firecracker's command-line arguments.
type argSpec struct {
	takesValue bool
}

// knownArgs are the arguments Firecracker v1.14.1 accepts. Those that do not
// apply to a QEMU-backed VMM are accepted and ignored (see docs/vmm.md).
var knownArgs = map[string]argSpec{
	"api-sock":                  {true},
	"id":                        {true},
	"seccomp-filter":            {true},
	"no-seccomp":                {false},
	"start-time-us":             {true},
	"start-time-cpu-us":         {true},
	"parent-cpu-time-us":        {true},
	"config-file":               {true},
	"no-api":                    {false},
	"log-path":                  {true},
	"level":                     {true},
	"module":                    {true},
	"show-level":                {false},
	"show-log-origin":           {false},
	"metrics-path":              {true},
	"boot-timer":                {false},
	"metadata":                  {true},
	"http-api-max-payload-size": {true},
	"mmds-size-limit":           {true},
	"enable-pci":                {false},
	"version":                   {false},
	"snapshot-version":          {false},
	"describe-snapshot":         {true},
	"help":                      {false},
}

// args is a parsed command line.
type args struct {
	values map[string]string // arguments with a value
	flags  map[string]bool   // arguments without one
}

func (a args) has(name string) bool {
	_, v := a.values[name]
	return v || a.flags[name]
}

func (a args) value(name, def string) string {
	if v, ok := a.values[name]; ok {
		return v
	}
	return def
}

// parseArgs parses argv (without the program name) the way Firecracker's
// arg_parser does: "--name value" pairs and "--flag" switches, each at most
// once, nothing else.
func parseArgs(argv []string) (args, error) {
	a := args{values: map[string]string{}, flags: map[string]bool{}}
	for i := 0; i < len(argv); i++ {
		w := argv[i]
		name, ok := strings.CutPrefix(w, "--")
		spec, known := knownArgs[name]
		if !ok || !known {
			return a, fmt.Errorf("Found argument '%s' which wasn't expected, or isn't valid in this context.", w)
		}
		if a.has(name) {
			return a, fmt.Errorf("The argument '%s' was provided more than once.", name)
		}
		if !spec.takesValue {
			a.flags[name] = true
			continue
		}
		if i+1 >= len(argv) || strings.HasPrefix(argv[i+1], "--") {
			return a, fmt.Errorf("The argument '%s' requires a value, but none was supplied", name)
		}
		i++
		a.values[name] = argv[i]
	}
	switch {
	case a.has("no-seccomp") && a.has("seccomp-filter"):
		return a, errors.New("Firecracker arguments 'no-seccomp' and 'seccomp-filter' cannot be used together.")
	case a.has("no-api") && !a.has("config-file"):
		return a, errors.New("Firecracker argument 'no-api' requires 'config-file' to be provided.")
	}
	for _, n := range []string{"http-api-max-payload-size", "mmds-size-limit", "start-time-us", "start-time-cpu-us", "parent-cpu-time-us"} {
		if v, ok := a.values[n]; ok {
			if _, err := strconv.ParseUint(v, 10, 64); err != nil {
				return a, fmt.Errorf("Invalid value for '%s': %v", n, err)
			}
		}
	}
	return a, nil
}

// validateID checks an instance id as Firecracker does: 1 to 64 characters,
// each alphanumeric or '-'.
func validateID(id string) error {
	if len(id) < 1 || len(id) > 64 {
		return fmt.Errorf("InvalidLen(%d, 1, 64)", len(id))
	}
	for i, c := range id {
		if !(c == '-' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return fmt.Errorf("InvalidChar('%c', %d)", c, i)
		}
	}
	return nil
}

const usage = `Firecracker v` + firecrackerVers + `

Usage: banger-vmm [ARGUMENTS]

banger-vmm is banger's Firecracker-compatible VMM backed by QEMU (-M microvm).
It accepts Firecracker's arguments:

  --api-sock <PATH>              Path to unix domain socket used by the API. [default: "` + defaultAPISock + `"]
  --id <ID>                      MicroVM unique identifier. [default: "` + defaultID + `"]
  --no-seccomp                   Disables seccomp filtering (banger-vmm applies none).
  --seccomp-filter <FILE>        Accepted; banger-vmm applies no seccomp filter.
  --config-file <FILE>           Path to a file that contains the microVM configuration in JSON format.
  --no-api                       Optional parameter which allows starting and using a microVM without an active API socket.
  --log-path <PATH>              Path to a fifo or a file used for configuring the logger on startup.
  --level <LEVEL>                Set the logger level.
  --module <MODULE>              Accepted and ignored.
  --show-level                   Whether or not to output the level in the logs.
  --show-log-origin              Whether or not to include the file path and line number of the log's origin.
  --metrics-path <PATH>          Path to a fifo or a file used for configuring the metrics on startup.
  --boot-timer, --metadata <FILE>, --http-api-max-payload-size <N>, --mmds-size-limit <N>,
  --enable-pci, --start-time-us <N>, --start-time-cpu-us <N>, --parent-cpu-time-us <N>
                                 Accepted (see docs/vmm.md).
  --version                      Print the binary version number.
  --snapshot-version             Print the supported snapshot version.
  --describe-snapshot <FILE>     Print the snapshot version of the given file.
  --help                         Show the help message.

Environment: BANGER_QEMU (default qemu-system-x86_64 from PATH), BANGER_VMM_ACCEL (kvm|tcg).
`
