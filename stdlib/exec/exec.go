// Package exec runs external commands without a shell: argv in, exit status,
// captured output and a readable error out. Commands run in their own
// process group so that cancellation kills the whole tree (a hung
// `lvcreate` together with the helpers it forked).
package exec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	osexec "os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/mattn/go-shellwords"
	"golang.org/x/sys/unix"
)

// KillGrace is how long a cancelled command gets between SIGTERM and
// SIGKILL of its process group.
var KillGrace = 2 * time.Second

// MaxCapture bounds captured output. Data that large belongs in a stream,
// not in a Lua string.
const MaxCapture = 64 << 20

// Cmd describes one command.
type Cmd struct {
	Argv  []string
	Env   map[string]string // added to (and overriding) the inherited environment
	Dir   string
	Stdin string // fed to the command; otherwise stdin is /dev/null
	// StdinReader streams into the command instead (a send stream into
	// zfs receive): bytes never pass through Lua.
	StdinReader io.Reader
	Timeout     time.Duration // 0: none
	Capture     bool          // capture stdout; otherwise it goes to Stdout
	Stdout      io.Writer     // where uncaptured stdout goes (nil: discarded)
	Stderr      io.Writer     // stderr is copied here as well as kept for errors (nil: kept only)
	// NoTTY runs the command in a new session, without a controlling
	// terminal: a tool that would prompt on /dev/tty (restore asking for
	// the next volume) reads end of file and fails instead of waiting for
	// an answer or stopping on SIGTTIN in the background.
	NoTTY bool
}

// Result is what a finished command reports.
type Result struct {
	Status   int // exit status; -1 when killed by a signal
	Signal   string
	Stdout   string // only with Capture
	Stderr   string // the last MaxCapture bytes
	Duration time.Duration
}

// Error is a command that ran and failed.
type Error struct {
	Argv     []string
	Status   int
	Signal   string
	Stderr   string
	TimedOut time.Duration // >0 when killed for exceeding its timeout
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Argv[0])
	switch {
	case e.TimedOut > 0:
		fmt.Fprintf(&b, " timed out after %v and was killed", e.TimedOut)
	case e.Signal != "":
		fmt.Fprintf(&b, " killed by signal %s", e.Signal)
	default:
		fmt.Fprintf(&b, " exited %d", e.Status)
	}
	if tail := StderrTail(e.Stderr); tail != "" {
		b.WriteString(": ")
		b.WriteString(tail)
	}
	return b.String()
}

// ErrInterrupted is returned when the context was cancelled while the
// command ran; the command's process group has been killed.
var ErrInterrupted = errors.New("interrupted")

// Split turns a command string into argv with shell quoting rules, but no
// shell: pipes, redirections and command lists are refused rather than
// passed as literal arguments.
func Split(s string) ([]string, error) {
	p := shellwords.NewParser()
	argv, err := p.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("cannot split %q: %w", s, err)
	}
	if p.Position >= 0 {
		return nil, fmt.Errorf("%q contains a shell operator (| ; & < >): bkrun runs commands without a shell; use an argv table and bkrun's streams instead", s)
	}
	if len(argv) == 0 {
		return nil, errors.New("empty command")
	}
	return argv, nil
}

// Quote renders argv for logs and dry-run output, quoting where a shell
// would need it, so the line can be pasted into a terminal.
func Quote(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=@%+,", r))
		}) < 0 {
			out[i] = a
			continue
		}
		out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(out, " ")
}

// StderrTail keeps the last few non-empty lines of stderr for an error
// message: that is where tools put the reason they failed.
func StderrTail(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	var keep []string
	for i := len(lines) - 1; i >= 0 && len(keep) < 3; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			keep = append([]string{l}, keep...)
		}
	}
	tail := strings.Join(keep, " / ")
	if len(tail) > 400 {
		tail = "..." + tail[len(tail)-397:]
	}
	return tail
}

// Run runs c and waits for it. A non-zero exit returns *Error together with
// the Result; a cancelled ctx kills the process group and returns
// ErrInterrupted.
func Run(ctx context.Context, c Cmd) (Result, error) {
	if len(c.Argv) == 0 {
		return Result{}, errors.New("empty command")
	}
	if c.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
	path, err := osexec.LookPath(c.Argv[0])
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", c.Argv[0], unwrapExecErr(err))
	}
	cmd := osexec.Command(path, c.Argv[1:]...)
	cmd.Args[0] = c.Argv[0]
	cmd.Dir = c.Dir
	if len(c.Env) > 0 {
		cmd.Env = os.Environ()
		for k, v := range c.Env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	var input *inputReader
	if c.StdinReader != nil {
		// A stream that fails half-way (a dying send) must not reach the
		// command as a clean end of input: the command is stopped.
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		input = &inputReader{r: c.StdinReader, stop: cancel}
		cmd.Stdin = input
	} else if c.Stdin != "" {
		cmd.Stdin = strings.NewReader(c.Stdin)
	}
	var stdout limitedBuffer
	stderr := tailBuffer{max: MaxCapture}
	if c.Capture {
		cmd.Stdout = &stdout
	} else if c.Stdout != nil {
		cmd.Stdout = c.Stdout
	}
	cmd.Stderr = &stderr
	if c.Stderr != nil {
		cmd.Stderr = io.MultiWriter(&stderr, c.Stderr)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if c.NoTTY {
		// A new session is also a new process group (pgid = pid).
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}

	start := time.Now()
	if err := cmd.Start(); err != nil {
		return Result{}, fmt.Errorf("%s: %w", c.Argv[0], unwrapExecErr(err))
	}
	waitDone := make(chan struct{})
	killed := make(chan struct{})
	go func() {
		select {
		case <-waitDone:
			return
		case <-ctx.Done():
		}
		close(killed)
		pgid := cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-waitDone:
		case <-time.After(KillGrace):
		}
		// Kill stragglers in the group even if the leader has exited:
		// a helper it forked may still hold a device open.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}()
	werr := cmd.Wait()
	close(waitDone)
	res := Result{Status: 0, Stdout: stdout.String(), Stderr: stderr.String(), Duration: time.Since(start)}
	if stdout.overflow {
		return res, fmt.Errorf("%s: output exceeds %d MiB; stream it instead of capturing it", c.Argv[0], MaxCapture>>20)
	}
	if input != nil && input.err != nil {
		return res, &InputError{Cmd: c.Argv[0], Err: input.err}
	}
	select {
	case <-killed:
		if c.Timeout > 0 && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return res, &Error{Argv: c.Argv, Status: -1, Signal: "SIGTERM", Stderr: res.Stderr, TimedOut: c.Timeout}
		}
		return res, fmt.Errorf("%s: %w", c.Argv[0], ErrInterrupted)
	default:
	}
	if werr != nil {
		var ee *osexec.ExitError
		if !errors.As(werr, &ee) {
			return res, fmt.Errorf("%s: %w", c.Argv[0], werr)
		}
		res.Status = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			res.Signal = signalName(ws.Signal())
		}
		return res, &Error{Argv: c.Argv, Status: res.Status, Signal: res.Signal, Stderr: res.Stderr}
	}
	return res, nil
}

// InputError is a command stopped because the stream feeding its stdin
// (Cmd.StdinReader) failed.
type InputError struct {
	Cmd string
	Err error
}

func (e *InputError) Error() string { return "reading the input of " + e.Cmd + ": " + e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

// inputReader records the first read error of a command's input and stops
// the command. os/exec reads it in its own goroutine and Wait waits for
// that goroutine, so err is safe to read after Wait.
type inputReader struct {
	r    io.Reader
	stop func()
	err  error
}

func (in *inputReader) Read(p []byte) (int, error) {
	n, err := in.r.Read(p)
	if err != nil && err != io.EOF && in.err == nil {
		in.err = err
		in.stop()
	}
	return n, err
}

func signalName(s syscall.Signal) string {
	if name := unix.SignalName(s); name != "" {
		return name
	}
	return s.String()
}

func unwrapExecErr(err error) error {
	var ee *osexec.Error
	if errors.As(err, &ee) {
		return ee.Err
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// limitedBuffer captures up to MaxCapture bytes and notes an overflow.
// It does not embed bytes.Buffer: os/exec would then use its ReadFrom and
// bypass the limit.
type limitedBuffer struct {
	buf      bytes.Buffer
	overflow bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if b.buf.Len()+len(p) > MaxCapture {
		b.overflow = true
		return 0, errors.New("output too large")
	}
	return b.buf.Write(p)
}

func (b *limitedBuffer) String() string { return b.buf.String() }

// tailBuffer keeps the last max bytes written.
type tailBuffer struct {
	buf []byte
	max int
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.buf = append(b.buf, p...)
	if len(b.buf) > b.max {
		b.buf = append(b.buf[:0], b.buf[len(b.buf)-b.max:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string { return string(b.buf) }
