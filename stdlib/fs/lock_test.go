package fs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	osexec "os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestHelperProcess is not a test: it is the other process of the
// cross-process lock tests, started by lockHolder. It takes the lock named
// by BKRUN_FS_LOCK and then, per BKRUN_FS_HELPER:
//
//	hold     print "locked" and sleep until killed
//	inherit  start `sleep 60` with the lock descriptor, print "locked PID"
//	         (the sleep's pid) and exit without releasing
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv("BKRUN_FS_HELPER")
	if mode == "" {
		return
	}
	l, err := AcquireLock(context.Background(), os.Getenv("BKRUN_FS_LOCK"), 0, "helper "+mode)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	switch mode {
	case "hold":
		fmt.Println("locked")
		time.Sleep(time.Hour)
	case "inherit":
		cmd := osexec.Command("sleep", "60")
		cmd.ExtraFiles = []*os.File{l.File()}
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Println("locked", cmd.Process.Pid)
	}
	os.Exit(0)
}

// lockHolder starts a helper process that takes the lock on path. It
// returns the helper and what it printed after "locked".
func lockHolder(t *testing.T, path, mode string) (*osexec.Cmd, string) {
	t.Helper()
	cmd := osexec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), "BKRUN_FS_HELPER="+mode, "BKRUN_FS_LOCK="+path)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if !strings.HasPrefix(line, "locked") {
		t.Fatalf("helper did not take the lock: %q %v", line, err)
	}
	return cmd, strings.TrimSpace(strings.TrimPrefix(line, "locked"))
}

var rfc3339 = `\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)`

func TestLockSameProcess(t *testing.T) {
	path := t.TempDir() + "/backup.lock"
	l, err := AcquireLock(context.Background(), path, 0, "bkrun xen-backup.lua master")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(fmt.Sprintf(`^pid %d\nsince %s\ncmd bkrun xen-backup.lua master\n$`, os.Getpid(), rfc3339))
	if got := readFile(t, path); !re.MatchString(got) {
		t.Errorf("lock file says %q, want %s", got, re)
	}
	// flock locks are per open file: a second lock in one process conflicts.
	_, err = AcquireLock(context.Background(), path, 0, "again")
	re = regexp.MustCompile(fmt.Sprintf(`^%s: locked by pid %d since %s \(this process: the lock is already held by this run\)$`,
		regexp.QuoteMeta(path), os.Getpid(), rfc3339))
	if err == nil || !re.MatchString(err.Error()) {
		t.Fatalf("second lock: %v, want %s", err, re)
	}
	var le *LockedError
	if !errors.As(err, &le) || le.PID != os.Getpid() || le.Cmd != "bkrun xen-backup.lua master" {
		t.Errorf("LockedError = %+v", le)
	}

	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(); err != nil {
		t.Errorf("second Release: %v", err)
	}
	if l.Held() {
		t.Error("Held after Release")
	}
	if got := readFile(t, path); got != "" {
		t.Errorf("released lock file still says %q", got)
	}
	l2, err := AcquireLock(context.Background(), path, 0, "again")
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	l2.Release()
	if _, err := os.Stat(path); err != nil {
		t.Errorf("lock file was removed: %v", err)
	}
}

func TestLockWait(t *testing.T) {
	path := t.TempDir() + "/lock"
	l, err := AcquireLock(context.Background(), path, 0, "first")
	if err != nil {
		t.Fatal(err)
	}
	// Released while we wait: we get it.
	go func() {
		time.Sleep(300 * time.Millisecond)
		l.Release()
	}()
	start := time.Now()
	l2, err := AcquireLock(context.Background(), path, 10*time.Second, "second")
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 5*time.Second {
		t.Errorf("waited %v", d)
	}
	// Not released in time: we give up and say so.
	start = time.Now()
	_, err = AcquireLock(context.Background(), path, 300*time.Millisecond, "third")
	if err == nil || !strings.HasSuffix(err.Error(), "; gave up after waiting 300ms") {
		t.Errorf("timed-out wait: %v", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("gave up after %v, before the deadline", d)
	}
	// Cancelled while waiting: the error says why and wraps the cause.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err = AcquireLock(ctx, path, time.Minute, "fourth")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
	re := regexp.MustCompile(fmt.Sprintf(`^%s: while waiting for the lock \(locked by pid %d since %s \(this process: [^)]*\)\): context canceled$`,
		regexp.QuoteMeta(path), os.Getpid(), rfc3339))
	if !re.MatchString(err.Error()) {
		t.Errorf("cancelled wait: %v, want %s", err, re)
	}
	l2.Release()
}

func TestLockRefusesOddFiles(t *testing.T) {
	d := t.TempDir()
	writeFile(t, d+"/precious", "do not truncate")
	if err := os.Symlink(d+"/precious", d+"/symlink.lock"); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(d+"/precious", d+"/hardlink.lock"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(d+"/fifo.lock", 0600); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"symlink.lock":  "is a symlink; refusing to use it as a lock file",
		"hardlink.lock": "has 2 hard links; refusing to use it as a lock file",
		"fifo.lock":     "not a regular file; refusing to use it as a lock file",
		"missing/lock":  "no such file or directory",
	} {
		_, err := AcquireLock(context.Background(), d+"/"+name, 0, "x")
		wantErr(t, err, d+"/"+name+": "+want)
	}
	if got := readFile(t, d+"/precious"); got != "do not truncate" {
		t.Errorf("precious = %q", got)
	}
}

func TestLockAcrossProcesses(t *testing.T) {
	path := t.TempDir() + "/lock"
	holder, _ := lockHolder(t, path, "hold")
	pid := holder.Process.Pid

	_, err := AcquireLock(context.Background(), path, 0, "parent")
	re := regexp.MustCompile(fmt.Sprintf(`^%s: locked by pid %d since %s$`, regexp.QuoteMeta(path), pid, rfc3339))
	if err == nil || !re.MatchString(err.Error()) {
		t.Fatalf("lock held by pid %d: %v, want %s", pid, err, re)
	}
	var le *LockedError
	if !errors.As(err, &le) || !le.Alive || le.Cmd != "helper hold" {
		t.Errorf("LockedError = %+v", le)
	}

	// The holder dies without releasing: the kernel frees the lock.
	holder.Process.Kill()
	holder.Wait()
	l, err := AcquireLock(context.Background(), path, 0, "parent")
	if err != nil {
		t.Fatalf("lock of a killed holder is not free: %v", err)
	}
	defer l.Release()
	if got := readFile(t, path); !strings.HasPrefix(got, fmt.Sprintf("pid %d\n", os.Getpid())) {
		t.Errorf("lock file says %q", got)
	}
}

func TestLockInheritedByChild(t *testing.T) {
	if _, err := osexec.LookPath("sleep"); err != nil {
		t.Skip("no sleep command")
	}
	path := t.TempDir() + "/lock"
	helper, rest := lockHolder(t, path, "inherit")
	helper.Wait() // the helper exits; its child keeps the descriptor
	sleepPid, err := strconv.Atoi(rest)
	if err != nil {
		t.Fatalf("helper printed %q", rest)
	}
	defer syscall.Kill(sleepPid, syscall.SIGKILL)

	_, err = AcquireLock(context.Background(), path, 0, "parent")
	hp := helper.Process.Pid
	re := regexp.MustCompile(fmt.Sprintf(`^%s: locked by pid %d since %s \(pid %d is not running; the lock is held by another process that inherited it\)$`,
		regexp.QuoteMeta(path), hp, rfc3339, hp))
	if err == nil || !re.MatchString(err.Error()) {
		t.Fatalf("inherited lock: %v, want %s", err, re)
	}

	syscall.Kill(sleepPid, syscall.SIGKILL)
	l, err := AcquireLock(context.Background(), path, 5*time.Second, "parent")
	if err != nil {
		t.Fatalf("after the inheritor died: %v", err)
	}
	l.Release()
}

func TestLockedErrorWithoutRecord(t *testing.T) {
	e := &LockedError{Path: "/run/x.lock"}
	if got := e.Error(); got != "/run/x.lock: locked by another process (it recorded no pid)" {
		t.Errorf("got %q", got)
	}
}
