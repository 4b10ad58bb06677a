package ssh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/bkrun/bkrun/internal/receive"
	"github.com/bkrun/bkrun/stdlib/exec"
	xssh "golang.org/x/crypto/ssh"
)

// DefaultReceiveCommand is the command Receiver runs when given none. A
// key with a forced command (the intended set-up) runs that instead.
const DefaultReceiveCommand = "bkrun receive"

// ReceiverSession is a session with a remote `bkrun receive` (protocol
// bkrun-receive/1, see docs/RECEIVE.md): files are streamed to it one at a
// time, each verified by the receiver (size, BLAKE3) before it is renamed
// into place under the receiver's root.
type ReceiverSession struct {
	c      *Conn
	cmd    string
	s      *xssh.Session
	in     io.WriteCloser
	cl     *receive.Client
	stderr *tailBuffer
	stop   func() bool // detaches the context watcher

	mu     sync.Mutex
	closed bool
	err    error
}

// Root is the receiver's root directory, as it announced it.
func (r *ReceiverSession) Root() string { return r.cl.Root }

// Receiver starts remoteCmd (default DefaultReceiveCommand) on the remote
// host and reads its greeting. A peer that does not greet as bkrun
// receive within the connect timeout is an error naming what it said.
// Cancelling ctx closes the session.
func (c *Conn) Receiver(ctx context.Context, remoteCmd string) (*ReceiverSession, error) {
	if remoteCmd == "" {
		remoteCmd = DefaultReceiveCommand
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s, err := c.client.NewSession()
	if err != nil {
		return nil, c.fail("opening a session", err)
	}
	in, err := s.StdinPipe()
	if err != nil {
		s.Close()
		return nil, c.fail("opening stdin", err)
	}
	out, err := s.StdoutPipe()
	if err != nil {
		s.Close()
		return nil, c.fail("opening stdout", err)
	}
	tail := &tailBuffer{max: 16 << 10}
	s.Stderr = tail
	if err := s.Start(remoteCmd); err != nil {
		s.Close()
		return nil, c.fail(fmt.Sprintf("starting %q", remoteCmd), err)
	}
	type result struct {
		cl  *receive.Client
		err error
	}
	ch := make(chan result, 1)
	go func() {
		cl, err := receive.NewClient(out, in)
		ch <- result{cl, err}
	}()
	timer := time.NewTimer(DefaultConnectTimeout)
	defer timer.Stop()
	var res result
	select {
	case res = <-ch:
	case <-ctx.Done():
		s.Close()
		return nil, fmt.Errorf("ssh: %s: %q: %w", c, remoteCmd, context.Cause(ctx))
	case <-timer.C:
		s.Close()
		res.err = &receive.NotReceiverError{Got: fmt.Sprintf("nothing in %v", DefaultConnectTimeout)}
	}
	if res.err != nil {
		var ne *receive.NotReceiverError
		if errors.As(res.err, &ne) {
			// Give the remote a moment to finish its complaint on stderr.
			done := make(chan struct{})
			go func() { s.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(time.Second):
			}
			if t := exec.StderrTail(tail.String()); t != "" {
				ne.Got += "; stderr: " + t
			}
		}
		s.Close()
		return nil, c.fail("", res.err)
	}
	r := &ReceiverSession{c: c, cmd: remoteCmd, s: s, in: in, cl: res.cl, stderr: tail}
	r.stop = context.AfterFunc(ctx, func() { s.Close() })
	return r, nil
}

// wrap names the connection in an error, and explains a session that
// broke by what the connection or the receiver said.
func (r *ReceiverSession) wrap(err error) error {
	if l := r.c.Lost(); l != nil {
		return fmt.Errorf("ssh: %s: receive: %v: %w", r.c, err, l)
	}
	if t := exec.StderrTail(r.stderr.String()); t != "" && !strings.Contains(err.Error(), "refused") {
		return fmt.Errorf("ssh: %s: receive: %w (receiver: %s)", r.c, err, t)
	}
	return fmt.Errorf("ssh: %s: receive: %w", r.c, err)
}

// ReceiverFile is one upload: an io.Writer whose bytes go out in frames
// of up to 1 MiB. Commit finishes it, Abort discards it.
type ReceiverFile struct {
	r *ReceiverSession
	f *receive.File
}

// Put asks the receiver for path (relative to its root). The receiver
// checks the path first; a refusal is an error and the session stays
// usable. One file at a time.
func (r *ReceiverSession) Put(path string, overwrite bool) (*ReceiverFile, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, r.wrap(fmt.Errorf("put %s: session closed", path))
	}
	f, err := r.cl.Put(path, overwrite)
	if err != nil {
		return nil, r.wrap(err)
	}
	return &ReceiverFile{r: r, f: f}, nil
}

// BtrfsReceive starts a btrfs send stream to be received into dir under
// the receiver's root; ReceiverFile.Received is the subvolume after Commit.
func (r *ReceiverSession) BtrfsReceive(dir string) (*ReceiverFile, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, r.wrap(fmt.Errorf("btrfs receive %s: session closed", dir))
	}
	f, err := r.cl.BtrfsReceive(dir)
	if err != nil {
		return nil, r.wrap(err)
	}
	return &ReceiverFile{r: r, f: f}, nil
}

// Received is what the receiver reported after Commit.
func (f *ReceiverFile) Received() string { return f.f.Received }

// Path is the path the file was put as.
func (f *ReceiverFile) Path() string { return f.f.Path }

// Written is the number of bytes accepted so far.
func (f *ReceiverFile) Written() int64 { return f.f.Written() }

func (f *ReceiverFile) Write(p []byte) (int, error) {
	n, err := f.f.Write(p)
	if err != nil {
		err = f.r.wrap(err)
	}
	return n, err
}

// Commit sends the end of the data with its size and BLAKE3 hash and
// waits until the receiver has verified, synced and renamed the file. On
// error the file is not there (and a previous file at its path is kept).
func (f *ReceiverFile) Commit() error {
	if err := f.f.Commit(); err != nil {
		return f.r.wrap(err)
	}
	return nil
}

// Abort discards the upload; it is a no-op after Commit.
func (f *ReceiverFile) Abort() error {
	if err := f.f.Abort(); err != nil {
		return f.r.wrap(err)
	}
	return nil
}

// Close aborts an upload still open, ends the session and waits for the
// receiver to exit; a receiver that failed is an *ExitError.
func (r *ReceiverSession) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return r.err
	}
	r.closed = true
	defer r.stop()
	defer r.s.Close()
	_ = r.cl.Quit()
	r.in.Close()
	done := make(chan error, 1)
	go func() { done <- r.s.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(DefaultConnectTimeout):
		r.err = r.wrap(fmt.Errorf("the receiver did not exit within %v of the end of the session", DefaultConnectTimeout))
		return r.err
	}
	var ee *xssh.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		status := ee.ExitStatus()
		if ee.Signal() != "" {
			status = -1
		}
		r.err = &ExitError{Conn: r.c.String(), Cmd: r.cmd, Status: status, Signal: ee.Signal(), Stderr: r.stderr.String()}
	default:
		r.err = r.wrap(err)
	}
	return r.err
}
