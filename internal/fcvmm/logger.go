package fcvmm

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Log levels, ordered as Firecracker's (Off hides everything).
type level int

const (
	levelOff level = iota
	levelError
	levelWarn
	levelInfo
	levelDebug
	levelTrace
)

func (l level) String() string {
	return [...]string{"OFF", "ERROR", "WARN", "INFO", "DEBUG", "TRACE"}[l]
}

// parseLevel accepts Firecracker's level names, case-insensitively.
func parseLevel(s string) (level, error) {
	switch strings.ToLower(s) {
	case "off":
		return levelOff, nil
	case "error":
		return levelError, nil
	case "warning", "warn":
		return levelWarn, nil
	case "info":
		return levelInfo, nil
	case "debug":
		return levelDebug, nil
	case "trace":
		return levelTrace, nil
	}
	return 0, fmt.Errorf("unknown variant `%s`, expected one of `Off`, `Trace`, `Debug`, `Info`, `Warning`, `Error`", s)
}

// logger writes Firecracker-format lines,
// "<local time> [<id>:<thread>:<LEVEL>:<file>:<line>] <message>", to stdout
// until a log file is configured, then only to that file. Writes never block:
// the destination is written with write(2) on a non-blocking descriptor and
// a line that does not fit is dropped (and counted), as Firecracker does.
type logger struct {
	mu         sync.Mutex
	id         string
	fd         int // -1: stdout
	max        level
	showLevel  bool
	showOrigin bool
	missed     atomic.Uint64 // lines that could not be written
}

func newLogger(id string) *logger {
	return &logger{id: id, fd: -1, max: levelInfo, showLevel: true}
}

// logTime formats t as Firecracker's LocalTime does.
func logTime(t time.Time) string {
	return t.Format("2006-01-02T15:04:05.000000000")
}

func (l *logger) logf(lv level, thread, format string, a ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if lv > l.max || lv == levelOff {
		return
	}
	prefix := []string{}
	if l.id != "" {
		prefix = append(prefix, l.id)
	}
	prefix = append(prefix, thread)
	if l.showLevel {
		prefix = append(prefix, lv.String())
	}
	if l.showOrigin {
		if _, file, line, ok := runtime.Caller(2); ok {
			if i := strings.Index(file, "internal/fcvmm/"); i >= 0 {
				file = file[i:]
			}
			prefix = append(prefix, file, fmt.Sprint(line))
		}
	}
	msg := fmt.Sprintf("%s [%s] %s\n", logTime(time.Now()), strings.Join(prefix, ":"), fmt.Sprintf(format, a...))
	l.write([]byte(msg))
}

func (l *logger) write(b []byte) {
	fd := l.fd
	if fd < 0 {
		fd = 1
	}
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			l.missed.Add(1)
			return
		}
		b = b[n:]
	}
}

func (l *logger) info(thread, format string, a ...any)   { l.logf(levelInfo, thread, format, a...) }
func (l *logger) warn(thread, format string, a ...any)   { l.logf(levelWarn, thread, format, a...) }
func (l *logger) errorf(thread, format string, a ...any) { l.logf(levelError, thread, format, a...) }
func (l *logger) debug(thread, format string, a ...any)  { l.logf(levelDebug, thread, format, a...) }

// openSink opens a log or metrics destination as Firecracker does: created if
// missing, read-write (so a FIFO without a reader does not block the open)
// and non-blocking.
func openSink(path string) (int, error) {
	return unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_APPEND|unix.O_NONBLOCK|unix.O_CLOEXEC, 0o644)
}

// configure applies a logger configuration (PUT /logger or the --log-path
// family of flags). A nil path keeps the current destination.
func (l *logger) configure(path *string, lv *level, showLevel, showOrigin *bool) error {
	fd := -1
	if path != nil {
		var err error
		if fd, err = openSink(*path); err != nil {
			return fmt.Errorf("Failed to open target file: %s", rustIOError(err))
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if fd >= 0 {
		if l.fd >= 0 {
			unix.Close(l.fd)
		}
		l.fd = fd
	}
	if lv != nil {
		l.max = *lv
	}
	if showLevel != nil {
		l.showLevel = *showLevel
	}
	if showOrigin != nil {
		l.showOrigin = *showOrigin
	}
	return nil
}

// metrics is a much smaller cousin of Firecracker's metrics system: once a
// destination is configured, one JSON object per line is written every 60 s
// after boot and on FlushMetrics.
type metrics struct {
	mu       sync.Mutex
	fd       int
	start    time.Time
	requests map[string]uint64
	failures map[string]uint64
	flushes  uint64
}

var errMetricsReinit = errors.New("Reinitialization of metrics not allowed.")

func newMetrics() *metrics {
	return &metrics{fd: -1, start: time.Now(), requests: map[string]uint64{}, failures: map[string]uint64{}}
}

func (m *metrics) configure(path string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fd >= 0 {
		return errMetricsReinit
	}
	fd, err := openSink(path)
	if err != nil {
		return fmt.Errorf("Cannot initialize the metrics system due to: %s", rustIOError(err))
	}
	m.fd = fd
	return nil
}

func (m *metrics) count(key string, failed bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.requests[key]++
	if failed {
		m.failures[key]++
	}
}

// flush writes one metrics line; it is a no-op until configure succeeded.
func (m *metrics) flush(missedLogs uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fd < 0 {
		return
	}
	m.flushes++
	line := map[string]any{
		"utc_timestamp_ms": time.Now().UnixMilli(),
		"api_server": map[string]any{
			"requests": m.requests,
			"failures": m.failures,
		},
		"logger": map[string]any{"missed_log_count": missedLogs, "missed_metrics_count": 0},
		"vmm":    map[string]any{"uptime_ms": time.Since(m.start).Milliseconds(), "flushes": m.flushes, "backend": "banger-vmm/qemu-microvm"},
	}
	b, _ := json.Marshal(line)
	b = append(b, '\n')
	unix.Write(m.fd, b)
}

// muslStrerror holds the errno texts where musl (Firecracker's release
// builds are static musl binaries) words it differently from glibc, whose
// wording Go's errno strings follow.
var muslStrerror = map[unix.Errno]string{
	unix.EADDRINUSE:    "Address in use",
	unix.EADDRNOTAVAIL: "Address not available",
	unix.EBUSY:         "Resource busy",
	unix.ELOOP:         "Symbolic link loop",
	unix.EMFILE:        "No file descriptors available",
	unix.ENAMETOOLONG:  "Filename too long",
	unix.ENOTSOCK:      "Not a socket",
}

// rustIOError renders an OS error the way Rust's std::io::Error displays it
// in Firecracker: "No such file or directory (os error 2)".
func rustIOError(err error) string {
	var errno unix.Errno
	if !errors.As(err, &errno) {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return rustIOError(pe.Err)
		}
		return err.Error()
	}
	s := errno.Error()
	if m, ok := muslStrerror[errno]; ok {
		s = m
	}
	if s != "" {
		s = strings.ToUpper(s[:1]) + s[1:]
	}
	return fmt.Sprintf("%s (os error %d)", s, int(errno))
}
