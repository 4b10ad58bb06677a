package exec

import (
	"context"
	"errors"
	"fmt"
	"io"
	osexec "os/exec"
	"sync"
	"syscall"
)

// StreamReader is the standard output of a running command (btrfs send,
// zfs send, dump). When the command exits non-zero, Read returns its
// failure — exit status and stderr tail — instead of io.EOF: a producer
// that dies must never look like a complete, shorter stream.
type StreamReader struct {
	argv   []string
	cmd    *osexec.Cmd
	out    io.ReadCloser
	stderr *tailBuffer
	once   sync.Once
	err    error
}

// Stream starts c with its stdout connected to the returned reader. The
// command runs in its own process group, killed when ctx is cancelled or
// the reader is closed early.
func Stream(ctx context.Context, c Cmd) (*StreamReader, error) {
	if len(c.Argv) == 0 {
		return nil, errors.New("empty command")
	}
	path, err := osexec.LookPath(c.Argv[0])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.Argv[0], unwrapExecErr(err))
	}
	cmd := osexec.CommandContext(ctx, path, c.Argv[1:]...)
	cmd.Args[0] = c.Argv[0]
	cmd.Dir = c.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	s := &StreamReader{argv: c.Argv, cmd: cmd, stderr: &tailBuffer{max: 64 << 10}}
	cmd.Stderr = s.stderr
	if s.out, err = cmd.StdoutPipe(); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", c.Argv[0], unwrapExecErr(err))
	}
	return s, nil
}

func (s *StreamReader) Read(p []byte) (int, error) {
	n, err := s.out.Read(p)
	if err == io.EOF {
		if werr := s.wait(); werr != nil {
			return n, werr
		}
	}
	return n, err
}

// Close stops the command if it is still running and reports its failure.
func (s *StreamReader) Close() error {
	s.out.Close()
	if s.cmd.ProcessState == nil {
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	}
	return s.wait()
}

func (s *StreamReader) wait() error {
	s.once.Do(func() {
		err := s.cmd.Wait()
		var ee *osexec.ExitError
		if errors.As(err, &ee) {
			e := &Error{Argv: s.argv, Status: ee.ExitCode(), Stderr: s.stderr.String()}
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				e.Signal = signalName(ws.Signal())
			}
			s.err = e
		} else if err != nil {
			s.err = fmt.Errorf("%s: %w", s.argv[0], err)
		}
	})
	return s.err
}

// String names the command, for logs and catalogue entries.
func (s *StreamReader) String() string { return Quote(s.argv) }
