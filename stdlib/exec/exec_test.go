package exec

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestSplit(t *testing.T) {
	argv, err := Split(`lvcreate -s -n "my snap" 'VG/x'`)
	if err != nil || strings.Join(argv, "|") != "lvcreate|-s|-n|my snap|VG/x" {
		t.Fatalf("Split = %q, %v", argv, err)
	}
	for _, bad := range []string{"a | b", "a > f", "a; b", "a && b", "", "  "} {
		if _, err := Split(bad); err == nil {
			t.Errorf("Split(%q) accepted", bad)
		}
	}
}

func TestStderrTail(t *testing.T) {
	got := StderrTail("noise\n\nline1\nline2\n\nline3\n")
	if got != "line1 / line2 / line3" {
		t.Errorf("tail = %q", got)
	}
	long := StderrTail(strings.Repeat("x", 1000))
	if len(long) != 400 || !strings.HasPrefix(long, "...") {
		t.Errorf("long tail len %d", len(long))
	}
}

// A cancelled context must kill the whole process group: the shell and the
// sleep it forked, which would otherwise keep running as an orphan.
func TestCancelKillsProcessGroup(t *testing.T) {
	dir := t.TempDir()
	pidfile := filepath.Join(dir, "pid")
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for i := 0; i < 100; i++ {
			if b, err := os.ReadFile(pidfile); err == nil && len(b) > 0 && b[len(b)-1] == '\n' {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		cancel()
	}()
	start := time.Now()
	_, err := Run(ctx, Cmd{Argv: []string{"sh", "-c", "sleep 30 & echo $! > " + pidfile + "; wait"}})
	if !errors.Is(err, ErrInterrupted) {
		t.Fatalf("err = %v, want interrupted", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancel took %v", d)
	}
	b, _ := os.ReadFile(pidfile)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid == 0 {
		t.Fatal("no child pid recorded")
	}
	deadline := time.Now().Add(3 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("child sleep %d survived the cancel", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A command that ignores SIGTERM is killed with SIGKILL after KillGrace.
func TestCancelEscalatesToKill(t *testing.T) {
	old := KillGrace
	KillGrace = 200 * time.Millisecond
	defer func() { KillGrace = old }()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Run(ctx, Cmd{Argv: []string{"sh", "-c", "trap '' TERM; sleep 30"}})
	if !errors.Is(err, ErrInterrupted) {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("kill took %v", d)
	}
}

func TestExitError(t *testing.T) {
	res, err := Run(context.Background(), Cmd{Argv: []string{"sh", "-c", "echo bad thing >&2; exit 5"}})
	var ee *Error
	if !errors.As(err, &ee) || ee.Status != 5 || res.Status != 5 {
		t.Fatalf("err = %v res = %+v", err, res)
	}
	if err.Error() != "sh exited 5: bad thing" {
		t.Errorf("message %q", err.Error())
	}
	_, err = Run(context.Background(), Cmd{Argv: []string{"sh", "-c", "kill -9 $$"}})
	if err == nil || err.Error() != "sh killed by signal SIGKILL" {
		t.Errorf("signal message %v", err)
	}
}

func TestCaptureLimit(t *testing.T) {
	_, err := Run(context.Background(), Cmd{Argv: []string{"head", "-c", strconv.Itoa(MaxCapture + 1), "/dev/zero"}, Capture: true})
	if err == nil || !strings.Contains(err.Error(), "stream it instead") {
		t.Errorf("err = %v", err)
	}
}

func TestStdinIsDevNullByDefault(t *testing.T) {
	res, err := Run(context.Background(), Cmd{Argv: []string{"cat"}, Capture: true, Timeout: 5 * time.Second})
	if err != nil || res.Stdout != "" {
		t.Errorf("cat with no stdin: %q %v", res.Stdout, err)
	}
}

func BenchmarkRunTrue(b *testing.B) {
	for i := 0; i < b.N; i++ {
		if _, err := Run(context.Background(), Cmd{Argv: []string{"true"}}); err != nil {
			b.Fatal(err)
		}
	}
}

func TestStreamReportsFailureInsteadOfEOF(t *testing.T) {
	s, err := Stream(context.Background(), Cmd{Argv: []string{"sh", "-c", "printf 'partial data'; echo 'ERROR: send ioctl failed' >&2; exit 1"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(s)
	if string(b) != "partial data" || err == nil || err.Error() != "sh exited 1: ERROR: send ioctl failed" {
		t.Fatalf("read %q, err %v", b, err)
	}
	s, _ = Stream(context.Background(), Cmd{Argv: []string{"printf", "whole"}})
	if b, err := io.ReadAll(s); string(b) != "whole" || err != nil {
		t.Fatalf("read %q, err %v", b, err)
	}
	// Closing early stops a producer that would run forever.
	s, _ = Stream(context.Background(), Cmd{Argv: []string{"yes"}})
	buf := make([]byte, 10)
	s.Read(buf)
	done := make(chan error, 1)
	go func() { done <- s.Close() }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("Close did not stop the producer")
	}
}
