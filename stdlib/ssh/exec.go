package ssh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/bkrun/bkrun/stdlib/exec"
	xssh "golang.org/x/crypto/ssh"
)

// ExitError is a remote command that ran and failed.
type ExitError struct {
	Conn   string // user@host:port
	Cmd    string
	Status int // -1 when killed by a signal
	Signal string
	Stderr string
}

func (e *ExitError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "ssh: %s: remote command %q ", e.Conn, e.Cmd)
	if e.Signal != "" {
		fmt.Fprintf(&b, "killed by signal %s", e.Signal)
	} else {
		fmt.Fprintf(&b, "exited %d", e.Status)
	}
	if tail := exec.StderrTail(e.Stderr); tail != "" {
		b.WriteString(": ")
		b.WriteString(tail)
	}
	return b.String()
}

// copyBuf is the size of the buffer stdin is copied through.
const copyBuf = 256 << 10

// Exec runs cmd (a remote shell command line) and waits for it. stdin
// (nil: empty) is streamed to the command and stdout/stderr (nil:
// discarded) are streamed back as they arrive; nothing is buffered whole.
// A non-zero exit returns *ExitError carrying the tail of stderr. When
// reading stdin fails, the session is closed without sending EOF, so the
// remote command cannot mistake a truncated input for a complete one.
// Cancelling ctx signals the command (TERM) and closes the session.
func (c *Conn) Exec(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s, err := c.client.NewSession()
	if err != nil {
		return c.fail("opening a session", err)
	}
	defer s.Close()
	tail := &tailBuffer{max: 64 << 10}
	if stdout == nil {
		stdout = io.Discard
	}
	var gate gate // after an interrupt, late output must not reach the caller's writers
	s.Stdout = gate.wrap(stdout)
	if stderr != nil {
		s.Stderr = gate.wrap(io.MultiWriter(tail, stderr))
	} else {
		s.Stderr = tail
	}
	var in io.WriteCloser
	if stdin != nil {
		in, err = s.StdinPipe()
		if err != nil {
			return c.fail("opening stdin", err)
		}
	}
	if err := s.Start(cmd); err != nil {
		return c.fail(fmt.Sprintf("starting %q", cmd), err)
	}
	var (
		stdinErr error
		stdinMu  sync.Mutex
	)
	if stdin != nil {
		go func() {
			buf := make([]byte, copyBuf)
			w := &writeSide{w: in}
			_, err := io.CopyBuffer(w, readerOnly{stdin}, buf)
			if err != nil && w.err == nil {
				stdinMu.Lock()
				stdinErr = err
				stdinMu.Unlock()
				// Stop the command before it can take the cut input
				// for a complete one. Signals need a server that allows
				// them (OpenSSH refuses them for root logins); a command
				// that is not stopped sees a plain end of input, so
				// receivers must check sizes or hashes themselves.
				_ = s.Signal(xssh.SIGKILL)
				s.Close()
				return
			}
			in.Close()
		}()
	}
	done := make(chan error, 1)
	go func() { done <- s.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		// Signal the command and drop the session without waiting: an
		// OpenSSH server keeps the channel until the command closes its
		// output, which a hung command may never do.
		gate.close()
		_ = s.Signal(xssh.SIGTERM)
		s.Close()
		return fmt.Errorf("ssh: %s: %q: %w", c, cmd, context.Cause(ctx))
	}
	stdinMu.Lock()
	serr := stdinErr
	stdinMu.Unlock()
	if serr != nil {
		return fmt.Errorf("ssh: %s: %q: reading its input: %w", c, cmd, serr)
	}
	if err == nil {
		return nil
	}
	var ee *xssh.ExitError
	var em *xssh.ExitMissingError
	switch {
	case errors.As(err, &ee):
		status := ee.ExitStatus()
		if ee.Signal() != "" {
			status = -1
		}
		return &ExitError{Conn: c.String(), Cmd: cmd, Status: status, Signal: ee.Signal(), Stderr: tail.String()}
	case errors.As(err, &em):
		return c.fail(fmt.Sprintf("%q", cmd), errors.New("connection lost before the command reported its exit status"))
	}
	return c.fail(fmt.Sprintf("%q", cmd), err)
}

// gate passes writes through until closed, then drops them.
type gate struct {
	mu     sync.Mutex
	closed bool
}

func (g *gate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

func (g *gate) wrap(w io.Writer) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.closed {
			return len(p), nil
		}
		return w.Write(p)
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// writeSide records write errors: a command that exits before reading all
// its input closes the channel, and then its exit status, not the failed
// write, says whether that was a failure.
type writeSide struct {
	w   io.Writer
	err error
}

func (w *writeSide) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	if err != nil {
		w.err = err
	}
	return n, err
}

// readerOnly hides WriteTo so that io.CopyBuffer uses the buffer (and the
// copy's errors stay attributable to the reading side or the writing side).
type readerOnly struct{ r io.Reader }

func (r readerOnly) Read(p []byte) (int, error) { return r.r.Read(p) }

// Output runs cmd with no input and returns its stdout with surrounding
// white space trimmed. Output larger than exec.MaxCapture is an error.
func (c *Conn) Output(ctx context.Context, cmd string) (string, error) {
	var out limitedBuffer
	err := c.Exec(ctx, cmd, nil, &out, nil)
	if out.overflow {
		return "", fmt.Errorf("ssh: %s: %q: output exceeds %d MiB; stream it instead of capturing it", c, cmd, exec.MaxCapture>>20)
	}
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out.String()), nil
}

// limitedBuffer keeps up to exec.MaxCapture bytes.
type limitedBuffer struct {
	b        strings.Builder
	overflow bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if b.b.Len()+len(p) > exec.MaxCapture {
		b.overflow = true
		return 0, errors.New("output too large")
	}
	return b.b.Write(p)
}

func (b *limitedBuffer) String() string { return b.b.String() }

// tailBuffer keeps the last max bytes written; safe for one writer and
// readers after the writer is done.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > b.max {
		b.buf = append(b.buf[:0], b.buf[len(b.buf)-b.max:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
