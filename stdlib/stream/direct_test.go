package stream

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/bkrun/bkrun/internal/testenv"
	"golang.org/x/sys/unix"
)

// directTempDir is a test directory on a file system that takes O_DIRECT
// writes (the test temp dir, else /var/tmp).
func directTempDir(t *testing.T) string {
	t.Helper()
	for _, d := range []string{t.TempDir(), "/var/tmp"} {
		f, err := os.CreateTemp(d, "direct-probe-")
		if err != nil {
			continue
		}
		_, err = unix.FcntlInt(f.Fd(), unix.F_SETFL, unix.O_DIRECT)
		f.Close()
		os.Remove(f.Name())
		if err == nil {
			if d == "/var/tmp" {
				d, _ = os.MkdirTemp(d, "bkrun-stream-test-")
				t.Cleanup(func() { os.RemoveAll(d) })
			}
			return d
		}
	}
	testenv.Need(t, false, "a file system that takes O_DIRECT writes (the temp dir or /var/tmp)")
	return ""
}

// writeInPieces writes data to w in pieces of uneven sizes, as the copy's
// headers and encoded blocks arrive.
func writeInPieces(t *testing.T, w interface{ Write([]byte) (int, error) }, data []byte) {
	t.Helper()
	r := rand.New(rand.NewSource(int64(len(data))))
	for len(data) > 0 {
		n := min(len(data), []int{1, 7, 4096, 4097, 100_000, 1 << 20, 3 << 20}[r.Intn(7)])
		if m, err := w.Write(data[:n]); m != n || err != nil {
			t.Fatalf("Write(%d bytes) = %d, %v", n, m, err)
		}
		data = data[n:]
	}
}

// Sizes around the alignment and the staging buffer round-trip through
// O_DIRECT writes, and the kernel confirms the flag was in effect.
func TestFileSinkWritesWithODirect(t *testing.T) {
	dir := directTempDir(t)
	for _, size := range []int{0, 1, 4095, 4096, 4097, directChunk - 1, directChunk, directChunk + 1, 3*directChunk + 4097} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("out-%d", size))
			data := make([]byte, size)
			rand.New(rand.NewSource(int64(size))).Read(data)
			sink, err := CreateFile(path, false)
			if err != nil {
				t.Fatal(err)
			}
			defer sink.Abort()
			if size > 0 {
				writeInPieces(t, sink, data[:1])
				if sink.direct == nil || testenv.OpenFlags(t, int(sink.f.Fd()))&unix.O_DIRECT == 0 {
					t.Fatalf("O_DIRECT not in effect after the first write (fdinfo flags %#o)", testenv.OpenFlags(t, int(sink.f.Fd())))
				}
				writeInPieces(t, sink, data[1:])
			}
			if err := sink.Commit(nil); err != nil {
				t.Fatal(err)
			}
			if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read back %d bytes (%v), want the %d written", len(got), err, size)
			}
			if m, _ := filepath.Glob(filepath.Join(dir, ".*partial*")); len(m) > 0 {
				t.Fatalf("left behind: %v", m)
			}
		})
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// ramfs refuses O_DIRECT: the sink writes buffered, with the same result.
func TestFileSinkWithoutDirectIO(t *testing.T) {
	testenv.NeedRoot(t)
	dir := t.TempDir()
	err := syscall.Mount("ramfs", dir, "ramfs", 0, "")
	testenv.Need(t, err == nil, fmt.Sprintf("mounting a ramfs: %v", err))
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	path := filepath.Join(dir, "out")
	data := mixed(3, 1234)
	sink, err := CreateFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	writeInPieces(t, sink, data)
	if sink.direct != nil || testenv.OpenFlags(t, int(sink.f.Fd()))&unix.O_DIRECT != 0 {
		t.Fatal("ramfs: the sink claims O_DIRECT")
	}
	if err := sink.Commit(nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
		t.Fatal("content differs")
	}
}

// A file system that accepts the flag but refuses a write with EINVAL:
// that write and all later ones are redone buffered, and the file is whole.
func TestDirectWriterFallsBackOnEINVAL(t *testing.T) {
	dir := directTempDir(t)
	path := filepath.Join(dir, "out")
	sink, err := CreateFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Abort()
	data := mixed(7, 333)
	writeInPieces(t, sink, data[:10])
	w := sink.direct
	if w == nil {
		t.Fatal("no direct writer")
	}
	refused := 0
	w.writeAt = func(p []byte, off int64) (int, error) {
		if testenv.OpenFlags(t, int(sink.f.Fd()))&unix.O_DIRECT != 0 && off >= directChunk {
			refused++
			return 0, &os.PathError{Op: "write", Path: path, Err: unix.EINVAL}
		}
		return sink.f.WriteAt(p, off)
	}
	writeInPieces(t, sink, data[10:])
	if err := sink.Sync(); err != nil {
		t.Fatal(err)
	}
	if refused != 1 || testenv.OpenFlags(t, int(sink.f.Fd()))&unix.O_DIRECT != 0 {
		t.Errorf("refused %d writes, want 1 and buffered writes after it (flags %#o)", refused, testenv.OpenFlags(t, int(sink.f.Fd())))
	}
	if err := sink.Commit(nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
		t.Fatal("content differs after the fallback")
	}
}

// A write error (a full disk) stops the stream at a later Write, not at the
// end of a long copy; Commit fails and removes the temporary file.
func TestDirectWriterErrorStopsTheStream(t *testing.T) {
	dir := directTempDir(t)
	path := filepath.Join(dir, "out")
	sink, err := CreateFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	block := make([]byte, 64<<10)
	sink.Write(block)
	sink.direct.writeAt = func(p []byte, off int64) (int, error) {
		return 0, &os.PathError{Op: "write", Path: sink.tmp, Err: unix.ENOSPC}
	}
	var werr error
	written := 0
	for written < 64*directChunk && werr == nil {
		var n int
		n, werr = sink.Write(block)
		written += n
	}
	if !errors.Is(werr, unix.ENOSPC) {
		t.Fatalf("Write error = %v, want ENOSPC", werr)
	}
	if written > (directBuffers+1)*directChunk {
		t.Errorf("the stream went on for %d bytes after the failed write", written)
	}
	if err := sink.Commit(nil); !errors.Is(err, unix.ENOSPC) {
		t.Errorf("Commit = %v, want ENOSPC", err)
	}
	if names := dirNames(t, dir); len(names) != 0 {
		t.Errorf("left behind: %v", names)
	}
}
