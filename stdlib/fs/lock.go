package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// LockPoll is how often Lock retries a held lock while waiting.
var LockPoll = 100 * time.Millisecond

// Lock is an exclusive flock(2) on a lock file. The kernel drops the lock
// when the holder's descriptor is closed, including when the process dies,
// so a lock is never stale: no pid checks are needed to break it. The file
// itself is kept (unlinking a flocked file lets two processes lock two
// different files under one name).
type Lock struct {
	Path string
	mu   sync.Mutex
	f    *os.File
}

// LockedError reports a lock held by someone else, with what the holder
// wrote into the lock file.
type LockedError struct {
	Path   string
	PID    int    // 0 when the file did not say
	Since  string // as written by the holder
	Cmd    string
	Alive  bool // the recorded pid is a running process
	Self   bool // the recorded pid is this process
	Waited time.Duration
}

func (e *LockedError) Error() string {
	var b strings.Builder
	b.WriteString(e.Path)
	if e.PID == 0 {
		b.WriteString(": locked by another process (it recorded no pid)")
	} else {
		fmt.Fprintf(&b, ": locked by pid %d", e.PID)
		if e.Since != "" {
			fmt.Fprintf(&b, " since %s", e.Since)
		}
		switch {
		case e.Self:
			b.WriteString(" (this process: the lock is already held by this run)")
		case !e.Alive:
			fmt.Fprintf(&b, " (pid %d is not running; the lock is held by another process that inherited it)", e.PID)
		}
	}
	if e.Waited > 0 {
		fmt.Fprintf(&b, "; gave up after waiting %v", e.Waited)
	}
	return b.String()
}

// AcquireLock takes an exclusive lock on path, creating the file (mode
// 0644) if needed, and records "pid N\nsince RFC3339\ncmd CMD\n" in it.
// With wait 0 a held lock fails at once with *LockedError; otherwise it is
// retried every LockPoll until wait has passed or ctx is cancelled.
// The lock file must be a regular file with one link and not a symlink, so
// that a planted link cannot make a root-run backup truncate another file.
func AcquireLock(ctx context.Context, path string, wait time.Duration, cmd string) (*Lock, error) {
	start := time.Now()
	for {
		l, err := tryLock(path, cmd)
		if err == nil {
			return l, nil
		}
		var le *LockedError
		if !errors.As(err, &le) {
			return nil, err
		}
		waited := time.Since(start)
		if waited >= wait {
			if wait > 0 {
				le.Waited = wait
			}
			return nil, le
		}
		t := time.NewTimer(min(LockPoll, wait-waited))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%s: while waiting for the lock (%s): %w", path, strings.TrimPrefix(le.Error(), path+": "), ctx.Err())
		case <-t.C:
		}
	}
}

func tryLock(path, cmd string) (*Lock, error) {
	for attempt := 0; ; attempt++ {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0644)
		if err != nil {
			if errors.Is(err, syscall.ELOOP) {
				return nil, fmt.Errorf("%s: is a symlink; refusing to use it as a lock file", path)
			}
			return nil, pathErr(path, err)
		}
		var st syscall.Stat_t
		if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
			f.Close()
			return nil, pathErr(path, err)
		}
		if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
			f.Close()
			return nil, fmt.Errorf("%s: not a regular file; refusing to use it as a lock file", path)
		}
		if st.Nlink > 1 {
			f.Close()
			return nil, fmt.Errorf("%s: has %d hard links; refusing to use it as a lock file", path, st.Nlink)
		}
		if err := flock(f, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, holder(path)
			}
			return nil, fmt.Errorf("%s: flock: %w", path, err)
		}
		// Someone may have removed or replaced the file between our open
		// and our flock; then we hold a lock nobody else will look at.
		var now syscall.Stat_t
		if err := syscall.Stat(path, &now); err != nil || now.Ino != st.Ino || now.Dev != st.Dev {
			f.Close()
			if attempt < 10 {
				continue
			}
			return nil, fmt.Errorf("%s: the lock file keeps being replaced", path)
		}
		info := fmt.Sprintf("pid %d\nsince %s\ncmd %s\n", os.Getpid(), time.Now().Format(time.RFC3339), cmd)
		err = f.Truncate(0)
		if err == nil {
			_, err = f.WriteAt([]byte(info), 0)
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: record holder: %w", path, unwrapPath(err))
		}
		return &Lock{Path: path, f: f}, nil
	}
}

func flock(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if err != syscall.EINTR {
			return err
		}
	}
}

// holder reads who holds path. A new holder truncates the file before
// writing to it, so an empty read is retried briefly.
func holder(path string) *LockedError {
	e := &LockedError{Path: path}
	var data []byte
	for i := 0; i < 5; i++ {
		data, _ = os.ReadFile(path)
		if len(bytes.TrimSpace(data)) > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, _ := strings.Cut(line, " ")
		switch k {
		case "pid":
			e.PID, _ = strconv.Atoi(strings.TrimSpace(v))
		case "since":
			e.Since = strings.TrimSpace(v)
		case "cmd":
			e.Cmd = v
		}
	}
	if e.PID > 0 {
		e.Self = e.PID == os.Getpid()
		err := syscall.Kill(e.PID, 0)
		e.Alive = err == nil || errors.Is(err, syscall.EPERM)
	}
	return e
}

// Release clears the holder record and drops the lock. It is safe to call
// more than once.
func (l *Lock) Release() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	f := l.f
	l.f = nil
	// An empty file says "free" to anyone who looks; a waiter that reads
	// it while we still hold the lock retries the read.
	_ = f.Truncate(0)
	uerr := flock(f, syscall.LOCK_UN)
	cerr := f.Close()
	if uerr != nil {
		return fmt.Errorf("%s: unlock: %w", l.Path, uerr)
	}
	if cerr != nil {
		return fmt.Errorf("%s: close: %w", l.Path, unwrapPath(cerr))
	}
	return nil
}

// Held reports whether the lock has not been released.
func (l *Lock) Held() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f != nil
}

// File is the open lock file (for tests and for handing the lock to a child
// process deliberately). Nil after Release.
func (l *Lock) File() *os.File {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f
}

// ProbeLock reports whether someone holds the lock at path, without
// creating or writing anything (for --dry-run): nil when the file does not
// exist or nobody holds it, a *LockedError when it is held.
func ProbeLock(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return pathErr(path, err)
	}
	defer f.Close()
	if err := flock(f, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return holder(path)
		}
		return fmt.Errorf("%s: flock: %w", path, err)
	}
	return flock(f, syscall.LOCK_UN)
}
