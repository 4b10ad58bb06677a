// Package testenv decides what an integration test does when the machine
// lacks something it needs (root, loop devices, btrfs, sshd, a tool).
// Locally it skips with a message naming what is missing; under
// BKRUN_INTEGRATION=1 (set by .ci/run) it fails, because a skipped
// integration test in CI is a test that did not run.
package testenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Integration reports whether missing prerequisites must fail tests.
func Integration() bool { return os.Getenv("BKRUN_INTEGRATION") == "1" }

// Need skips or fails t unless ok; what names the prerequisite.
func Need(t testing.TB, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if Integration() {
		t.Fatalf("integration prerequisite missing: %s (BKRUN_INTEGRATION=1 makes this a failure; .ci/run installs it)", what)
	}
	t.Skipf("skipping: %s (set up by .ci/run; BKRUN_INTEGRATION=1 makes this fail instead)", what)
}

// NeedRoot requires uid 0.
func NeedRoot(t testing.TB) { t.Helper(); Need(t, os.Geteuid() == 0, "root privileges") }

// NeedCommand requires an executable in $PATH and returns its path.
func NeedCommand(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	Need(t, err == nil, "command "+name+" in $PATH")
	return p
}

// SyncBuffer is a bytes.Buffer safe for a writer goroutine (a logger, a
// child process) and a test reading it at the same time.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Shims puts the recorded fakes in shimDir (relative to the test's package
// directory) first on PATH for the rest of the test and points them at a
// fresh call log and state directory (SHIM_LOG, SHIM_STATE). calls reads
// the command lines the shims recorded so far.
func Shims(t testing.TB, shimDir string) (calls func() string, state string) {
	t.Helper()
	abs, err := filepath.Abs(shimDir)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	state = filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o755); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(dir, "calls")
	t.Setenv("PATH", abs+":"+os.Getenv("PATH"))
	t.Setenv("SHIM_LOG", log)
	t.Setenv("SHIM_STATE", state)
	return func() string { b, _ := os.ReadFile(log); return string(b) }, state
}

// BtrfsMount makes a 256 MiB btrfs filesystem in a sparse file under
// /var/tmp, mounts it (a loop device the kernel frees on unmount) and
// returns the mount point. When the test ends it is unmounted, checked to
// have left no loop device, and removed.
func BtrfsMount(t testing.TB) string {
	t.Helper()
	NeedRoot(t)
	for _, c := range []string{"mkfs.btrfs", "btrfs", "mount", "umount", "losetup"} {
		NeedCommand(t, c)
	}
	_, err := os.Stat("/dev/loop-control")
	Need(t, err == nil, "loop devices (/dev/loop-control)")
	dir, err := os.MkdirTemp("/var/tmp", "bkrun-btrfs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	img, mnt := filepath.Join(dir, "fs.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 256<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.btrfs", "-q", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.btrfs: %v\n%s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount -o loop %s: %v\n%s", img, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", mnt, err, out)
			return
		}
		if out, _ := exec.Command("losetup", "-j", img).Output(); len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("loop device left attached: %s", out)
		}
	})
	return mnt
}

// OpenFlags reads the open flags of one of this process's descriptors from
// /proc/self/fdinfo: the kernel's word on whether O_DIRECT is in effect.
func OpenFlags(t testing.TB, fd int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			flags, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
			if err != nil {
				t.Fatalf("fdinfo flags %q: %v", v, err)
			}
			return int(flags)
		}
	}
	t.Fatalf("no flags line in fdinfo:\n%s", b)
	return 0
}
