package disk

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"unsafe"

	"github.com/bkrun/bkrun/internal/testenv"
	"golang.org/x/sys/unix"
)

const (
	KiB = 1 << 10
	MiB = 1 << 20
)

// supportsDirect reports whether files in dir can be opened with O_DIRECT,
// by trying: the answer depends on the file system and the kernel (tmpfs
// gained O_DIRECT in Linux 6.6), so asking statfs for the type would guess.
func supportsDirect(t testing.TB, dir string) bool {
	t.Helper()
	probe := filepath.Join(dir, ".direct-probe")
	if err := os.WriteFile(probe, make([]byte, BlockAlign), 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(probe)
	f, err := os.OpenFile(probe, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// directDir is a fresh directory on a file system that supports O_DIRECT:
// t.TempDir() if it does, otherwise one under /var/tmp, which is on the
// root file system where /tmp may be a tmpfs.
func directDir(t testing.TB) string {
	t.Helper()
	if d := t.TempDir(); supportsDirect(t, d) {
		return d
	}
	d, err := os.MkdirTemp("/var/tmp", "bkrun-disk-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	var st unix.Statfs_t
	_ = unix.Statfs(d, &st)
	testenv.Need(t, supportsDirect(t, d), fmt.Sprintf("a directory on a file system with O_DIRECT (/var/tmp has f_type %#x)", st.Type))
	return d
}

// randomData is n bytes of reproducible noise: no block of it is zero and
// every block differs, so a block read from the wrong offset shows.
func randomData(n int, seed uint64) []byte {
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 1})
	b := make([]byte, n)
	r.Read(b)
	return b
}

func writeImage(t testing.TB, path string, n int, seed uint64) []byte {
	t.Helper()
	data := randomData(n, seed)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return data
}

// debugLog is a logger that keeps debug messages for assertions.
func debugLog() (*slog.Logger, *syncBuffer) {
	var b syncBuffer
	return slog.New(slog.NewTextHandler(&b, &slog.HandlerOptions{Level: slog.LevelDebug})), &b
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func mustOpen(t testing.TB, path string, o Options) *Source {
	t.Helper()
	s, err := Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

// readAll reads the whole range block by block, as zeros where ReadBlock
// reports a hole, checking the counts on the way.
func readAll(t testing.TB, s *Source, block int) []byte {
	t.Helper()
	p := AlignedBuffer(block)
	out := make([]byte, 0, s.Size())
	for off := int64(0); ; off += int64(block) {
		n, hole, err := s.ReadBlock(p, off)
		if err == io.EOF {
			if off < s.Size() {
				t.Fatalf("EOF at %d, before the end of the range (%d)", off, s.Size())
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if wantN := min(int64(block), s.Size()-off); int64(n) != wantN {
			t.Fatalf("ReadBlock(%d bytes, %d) = %d bytes, want %d", block, off, n, wantN)
		}
		if hole {
			out = append(out, make([]byte, n)...)
		} else {
			out = append(out, p[:n]...)
		}
	}
	return out
}

func checkSame(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: read %d bytes, want %d", what, len(got), len(want))
	}
	if !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("%s: first difference at byte %d (block %d)", what, i, i/BlockAlign)
			}
		}
	}
}

func checkODirect(t testing.TB, s *Source, want bool) {
	t.Helper()
	// unix.O_DIRECT is 0o40000 on amd64 (and differs on arm64, hence the constant).
	flags := testenv.OpenFlags(t, s.fd())
	if got := flags&unix.O_DIRECT != 0; got != want {
		t.Errorf("fdinfo flags %#o: O_DIRECT set = %v, want %v", flags, got, want)
	}
	if flags&unix.O_ACCMODE != unix.O_RDONLY || flags&unix.O_CLOEXEC == 0 {
		t.Errorf("fdinfo flags %#o: want O_RDONLY|O_CLOEXEC", flags)
	}
}

func TestDirectIsInEffect(t *testing.T) {
	dir := directDir(t)
	path := filepath.Join(dir, "disk.img")
	data := writeImage(t, path, 4*MiB, 1)

	s := mustOpen(t, path, Options{})
	if !s.Direct() || s.Kind() != "file" || s.Size() != 4*MiB || s.Path() != path || !s.Sparse() {
		t.Errorf("Direct=%v Kind=%q Size=%d Path=%q Sparse=%v", s.Direct(), s.Kind(), s.Size(), s.Path(), s.Sparse())
	}
	checkODirect(t, s, true)
	checkSame(t, "direct", readAll(t, s, MiB), data)

	b := mustOpen(t, path, Options{NoDirect: true})
	if b.Direct() {
		t.Error("NoDirect: Direct() = true")
	}
	checkODirect(t, b, false)
	checkSame(t, "buffered", readAll(t, b, MiB), data)
}

// mount mounts a small file system of type fstype (tmpfs, ramfs) on a new
// directory for the test.
func mount(t *testing.T, fstype string) string {
	t.Helper()
	testenv.NeedRoot(t)
	dir := t.TempDir()
	err := syscall.Mount(fstype, dir, fstype, 0, "size=16m")
	testenv.Need(t, err == nil, fmt.Sprintf("mounting a %s (root or CAP_SYS_ADMIN): %v", fstype, err))
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

func TestFallbackWithoutDirectIO(t *testing.T) {
	// ramfs has no direct I/O on any kernel and refuses O_DIRECT at open
	// with EINVAL. tmpfs did too before Linux 6.6; now it accepts it, so
	// there Direct() must simply agree with the kernel.
	for _, fstype := range []string{"ramfs", "tmpfs"} {
		t.Run(fstype, func(t *testing.T) {
			dir := mount(t, fstype)
			path := filepath.Join(dir, "disk.img")
			data := writeImage(t, path, MiB+1234, 2)
			wantDirect := supportsDirect(t, dir)
			if fstype == "ramfs" && wantDirect {
				t.Fatal("ramfs accepted O_DIRECT: the test needs another file system that refuses it")
			}
			log, logs := debugLog()
			s := mustOpen(t, path, Options{Logger: log})
			if s.Direct() != wantDirect {
				t.Errorf("Direct() = %v, but the kernel's answer on %s is %v", s.Direct(), fstype, wantDirect)
			}
			checkODirect(t, s, wantDirect)
			refused := strings.Contains(logs.String(), "O_DIRECT refused by the filesystem, using buffered reads")
			if refused == wantDirect {
				t.Errorf("debug log (refusal logged: %v):\n%s", refused, logs)
			}
			checkSame(t, fstype, readAll(t, s, 64*KiB), data)
		})
	}
}

func TestReadExact(t *testing.T) {
	dir := directDir(t)
	for _, size := range []int{8 * MiB, 10*MiB + 1234, 3000} {
		path := filepath.Join(dir, fmt.Sprintf("img-%d", size))
		data := writeImage(t, path, size, uint64(size))
		for _, noDirect := range []bool{false, true} {
			s := mustOpen(t, path, Options{NoDirect: noDirect})
			if s.Direct() == noDirect {
				t.Fatalf("size %d NoDirect=%v: Direct()=%v", size, noDirect, s.Direct())
			}
			for _, block := range []int{BlockAlign, 12 * KiB, MiB} {
				checkSame(t, fmt.Sprintf("size %d direct %v block %d", size, !noDirect, block), readAll(t, s, block), data)
			}
			// The block holding the end alone: a short count, then EOF.
			last := int64(size) &^ (BlockAlign - 1)
			if last == int64(size) {
				last -= BlockAlign
			}
			p := AlignedBuffer(MiB)
			n, hole, err := s.ReadBlock(p, last)
			if err != nil || hole || n != size-int(last) || !bytes.Equal(p[:n], data[last:]) {
				t.Errorf("size %d: tail ReadBlock at %d = %d, %v, %v", size, last, n, hole, err)
			}
			if n, _, err := s.ReadBlock(p, last+MiB); n != 0 || err != io.EOF {
				t.Errorf("past the end: %d, %v; want 0, EOF", n, err)
			}
		}
	}
}

func TestRanges(t *testing.T) {
	dir := directDir(t)
	path := filepath.Join(dir, "disk.img")
	data := writeImage(t, path, 10*MiB+1234, 3)

	for _, c := range []struct {
		name           string
		offset, length int64
		direct         bool // expected
		logs           string
	}{
		{"partition", MiB, 3*MiB + 512, true, ""},
		{"to the end", 2 * MiB, 0, true, ""},
		{"last bytes", 10 * MiB, 1234, true, ""},
		{"unaligned", 1000, 0, false, "range offset is not a multiple of 4096, using buffered reads"},
		{"unaligned short", 1000, 5000, false, "not a multiple of 4096"},
		{"empty at the end", 10*MiB + 1234, 0, false, "not a multiple of 4096"},
	} {
		t.Run(c.name, func(t *testing.T) {
			log, logs := debugLog()
			s := mustOpen(t, path, Options{Offset: c.offset, Length: c.length, Logger: log})
			want := data[c.offset:]
			if c.length > 0 {
				want = want[:c.length]
			}
			if s.Size() != int64(len(want)) || s.Offset() != c.offset || s.Direct() != c.direct {
				t.Errorf("Size=%d Offset=%d Direct=%v, want %d %d %v", s.Size(), s.Offset(), s.Direct(), len(want), c.offset, c.direct)
			}
			if !strings.Contains(logs.String(), c.logs) {
				t.Errorf("debug log lacks %q:\n%s", c.logs, logs)
			}
			checkODirect(t, s, c.direct)
			for _, block := range []int{BlockAlign, MiB} {
				checkSame(t, fmt.Sprintf("block %d", block), readAll(t, s, block), want)
			}
		})
	}
}

func TestConcurrentReads(t *testing.T) {
	dir := directDir(t)
	path := filepath.Join(dir, "disk.img")
	data := writeImage(t, path, 10*MiB+1234, 4)
	for _, noDirect := range []bool{false, true} {
		s := mustOpen(t, path, Options{NoDirect: noDirect})
		const block = 64 * KiB
		nblocks := (len(data) + block - 1) / block
		var wg sync.WaitGroup
		var failed atomic.Int32
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := AlignedBuffer(block)
				// Every goroutine reads every block, each in its own
				// order, so reads overlap in time at different offsets.
				for _, i := range rand.New(rand.NewPCG(uint64(g), 9)).Perm(nblocks) {
					off := int64(i) * block
					n, hole, err := s.ReadBlock(p, off)
					end := min(off+block, int64(len(data)))
					if err != nil || hole || !bytes.Equal(p[:n], data[off:end]) {
						t.Errorf("goroutine %d direct %v: block at %d: n=%d hole=%v err=%v (contents differ: %v)",
							g, !noDirect, off, n, hole, err, err == nil && !bytes.Equal(p[:n], data[off:end]))
						if failed.Add(1) > 5 {
							return
						}
					}
				}
			}()
		}
		wg.Wait()
	}
}

// Close while reads are in flight: each read either completes with the
// right bytes or fails with os.ErrClosed, never reads a descriptor number
// the kernel has handed to another file meanwhile.
func TestCloseWhileReading(t *testing.T) {
	dir := directDir(t)
	path := filepath.Join(dir, "disk.img")
	data := writeImage(t, path, 4*MiB, 13)
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var reads atomic.Int64
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := AlignedBuffer(64 * KiB)
			for i := g; ; i++ {
				off := int64(i%64) * 64 * KiB
				n, _, err := s.ReadBlock(p, off)
				if errors.Is(err, os.ErrClosed) {
					return
				}
				if err != nil || !bytes.Equal(p[:n], data[off:off+64*KiB]) {
					t.Errorf("read at %d: %d bytes, %v", off, n, err)
					return
				}
				reads.Add(1)
			}
		}()
	}
	for reads.Load() < 100 {
		goruntime.Gosched()
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Reuse the numbers at once: a read still using one would get zeros.
	for range 8 {
		f, err := os.Open("/dev/zero")
		if err == nil {
			defer f.Close()
		}
	}
	wg.Wait()
}

func TestSparse(t *testing.T) {
	dir := directDir(t)
	path := filepath.Join(dir, "sparse.img")
	const size = 64 * MiB
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	mid, tail := randomData(100*KiB, 5), randomData(5000, 6)
	midAt, tailAt := int64(10*MiB+100), int64(size-5000)
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(mid, midAt); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(tail, tailAt); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, size)
	copy(want[midAt:], mid)
	copy(want[tailAt:], tail)
	hasData := func(off, end int64) bool {
		return off < midAt+int64(len(mid)) && end > midAt || end > tailAt
	}

	for _, noDirect := range []bool{false, true} {
		s := mustOpen(t, path, Options{NoDirect: noDirect})
		if !s.Sparse() {
			t.Fatalf("Sparse() = false on %s", dir)
		}
		for _, block := range []int64{MiB, 4 * KiB} {
			p := AlignedBuffer(int(block))
			holes := 0
			for off := int64(0); off < size; off += block {
				for i := range p {
					p[i] = 0xAA
				}
				n, hole, err := s.ReadBlock(p, off)
				if err != nil || int64(n) != block {
					t.Fatalf("ReadBlock(%d, %d) = %d, %v", block, off, n, err)
				}
				end := off + block
				switch {
				case hole && hasData(off, end):
					t.Fatalf("block %d at %d holds data but was reported as a hole", block, off)
				case hole && !IsZero(want[off:end]):
					t.Fatalf("block %d at %d: hole over non-zero bytes", block, off)
				case hole && bytes.Count(p, []byte{0xAA}) != len(p):
					t.Fatalf("block %d at %d: a hole filled the buffer", block, off)
				case !hole && !bytes.Equal(p, want[off:end]):
					t.Fatalf("block %d at %d: wrong contents", block, off)
				case !hole && block == MiB:
					// With 1 MiB blocks, exactly the two holding data are read.
					if !hasData(off, end) {
						t.Errorf("1 MiB block at %d lies in a hole but was read", off)
					}
				}
				if hole {
					holes++
				}
			}
			// 4 KiB blocks: all but the 26 around the middle data and the
			// two at the end are holes (a file system may allocate a few
			// more around written data, so allow some slack).
			if wantHoles := map[int64]int{MiB: 62, 4 * KiB: 16384 - 28}[block]; holes < wantHoles-64 || holes > wantHoles {
				t.Errorf("direct %v, %d-byte blocks: %d holes, want %d", !noDirect, block, holes, wantHoles)
			}
		}
	}

	// A file with no data at all: SEEK_DATA answers ENXIO everywhere.
	empty := filepath.Join(dir, "empty.img")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(empty, 8*MiB); err != nil {
		t.Fatal(err)
	}
	s := mustOpen(t, empty, Options{Offset: 4 * MiB})
	p := AlignedBuffer(MiB)
	for off := int64(0); off < 4*MiB; off += MiB {
		if n, hole, err := s.ReadBlock(p, off); n != MiB || !hole || err != nil {
			t.Errorf("empty sparse file, block at %d: %d, %v, %v; want a hole", off, n, hole, err)
		}
	}
}

// losetup attaches file read-only to a free loop device for the test,
// limited to sizelimit bytes when it is not 0.
func losetup(t *testing.T, file string, sizelimit int64) string {
	t.Helper()
	testenv.NeedRoot(t)
	testenv.NeedCommand(t, "losetup")
	args := []string{"--find", "--show", "--read-only"}
	if sizelimit > 0 {
		args = append(args, "--sizelimit", strconv.FormatInt(sizelimit, 10))
	}
	out, err := exec.Command("losetup", append(args, file)...).CombinedOutput()
	testenv.Need(t, err == nil, fmt.Sprintf("a free loop device (losetup: %v: %s)", err, bytes.TrimSpace(out)))
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

func TestBlockDevice(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	data := writeImage(t, img, 32*MiB+4096, 7)

	t.Run("32MiB", func(t *testing.T) {
		dev := losetup(t, img, 32*MiB)
		s := mustOpen(t, dev, Options{})
		if s.Kind() != "device" || s.Size() != 32*MiB || !s.Direct() || s.Sparse() {
			t.Errorf("Kind=%q Size=%d Direct=%v Sparse=%v", s.Kind(), s.Size(), s.Direct(), s.Sparse())
		}
		checkODirect(t, s, true)
		checkSame(t, dev, readAll(t, s, MiB), data[:32*MiB])
		if n, err := Size(dev); n != 32*MiB || err != nil {
			t.Errorf("Size(%s) = %d, %v", dev, n, err)
		}
		r := mustOpen(t, dev, Options{Offset: 5 * MiB, Length: 1234})
		checkSame(t, "range", readAll(t, r, MiB), data[5*MiB:5*MiB+1234])
	})

	// A device size that is a multiple of 512 but not of 4096: the last
	// aligned read crosses the end of the device.
	t.Run("32MiB+512", func(t *testing.T) {
		dev := losetup(t, img, 32*MiB+512)
		want := data[:32*MiB+512]
		s := mustOpen(t, dev, Options{})
		if s.Size() != 32*MiB+512 || !s.Direct() {
			t.Fatalf("Size=%d Direct=%v", s.Size(), s.Direct())
		}
		checkSame(t, dev, readAll(t, s, MiB), want)
		checkSame(t, dev+" 4K", readAll(t, s, BlockAlign), want)

		// Some kernels and drivers refuse that read with EINVAL instead of
		// returning a short count; this one does not, so make it.
		log, logs := debugLog()
		e := mustOpen(t, dev, Options{Logger: log})
		var refused atomic.Int32
		direct := e.directPread
		e.directPread = func(p []byte, off int64) (int, error) {
			if off+int64(len(p)) > e.Size() {
				refused.Add(1)
				return 0, unix.EINVAL
			}
			return direct(p, off)
		}
		checkSame(t, dev+" EINVAL at the tail", readAll(t, e, MiB), want)
		if refused.Load() != 1 || !strings.Contains(logs.String(), "O_DIRECT read refused, retrying it buffered") {
			t.Errorf("refused %d reads; debug log:\n%s", refused.Load(), logs)
		}
	})
}

// residentPages counts the pages of path that are in the page cache (mincore).
func residentPages(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size, err := Size(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (len(m)+os.Getpagesize()-1)/os.Getpagesize())
	// x/sys/unix has no Mincore wrapper.
	_, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0])))
	if e != 0 {
		t.Fatalf("mincore: %v", e)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// TestBufferedReadsLeaveNoPageCache reads 128 MiB files and devices cold
// through the page cache and checks, with mincore, that at most the
// drop-behind lag stays cached while reading and nothing after Close.
func TestBufferedReadsLeaveNoPageCache(t *testing.T) {
	dir := directDir(t)
	img := filepath.Join(dir, "disk.img")
	data := writeImage(t, img, 128*MiB, 12)
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil { // DONTNEED drops clean pages only
		t.Fatal(err)
	}
	// The test can see cached pages: the file was just written.
	if n := residentPages(t, img); n < 1024 {
		t.Fatalf("only %d pages of a file just written are cached: mincore does not see them", n)
	}

	check := func(t *testing.T, path string) {
		for _, block := range []int{MiB, 64 * KiB} {
			if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
				t.Fatal(err)
			}
			s, err := Open(path, Options{NoDirect: true})
			if err != nil {
				t.Fatal(err)
			}
			checkSame(t, path, readAll(t, s, block), data)
			// The lag, plus a folio and readahead the drop-behind has
			// not reached: without it, this is most of the 32768 pages.
			if n := residentPages(t, path); n*4096 > dropLag+8*MiB {
				t.Errorf("%d-byte blocks: %d pages (%d MiB) cached before Close", block, n, n*4096/MiB)
			}
			s.Close()
			if n := residentPages(t, path); n != 0 {
				t.Errorf("%d-byte blocks: %d pages cached after Close", block, n)
			}
		}
	}
	t.Run("file", func(t *testing.T) { check(t, img) })
	t.Run("device", func(t *testing.T) {
		dev := losetup(t, img, 0)
		check(t, dev)
	})
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	writeImage(t, img, 10000, 8)
	for _, c := range []struct {
		path string
		o    Options
		want string
		is   error
	}{
		{dir + "/missing", Options{}, "disk.open: " + dir + "/missing: no such file or directory", iofs.ErrNotExist},
		{dir, Options{}, "disk.open: " + dir + ": is a directory, not a block device or image file", nil},
		{"/dev/null", Options{}, "disk.open: /dev/null: is a character device, not a block device or image file", nil},
		{img, Options{Offset: 20000}, "disk.open: " + img + ": offset 20000 is beyond the end (size 10000)", nil},
		{img, Options{Offset: 4096, Length: 8192}, "disk.open: " + img + ": range offset 4096 length 8192 ends at 12288, beyond the end (size 10000)", nil},
		{img, Options{Offset: -1}, "disk.open: " + img + ": negative range (offset -1, length 0)", nil},
		{img + "/x", Options{}, "disk.open: " + img + "/x: not a directory", syscall.ENOTDIR},
	} {
		s, err := Open(c.path, c.o)
		if err == nil {
			s.Close()
			t.Errorf("Open(%s, %+v): no error", c.path, c.o)
			continue
		}
		if err.Error() != c.want || c.is != nil && !errors.Is(err, c.is) {
			t.Errorf("Open(%s, %+v):\n got: %v\nwant: %s", c.path, c.o, err, c.want)
		}
	}
	if _, err := Size(dir); err == nil || err.Error() != "disk.size: "+dir+": is a directory, not a block device or image file" {
		t.Errorf("Size(dir): %v", err)
	}

	s := mustOpen(t, img, Options{})
	p := AlignedBuffer(2 * BlockAlign)
	for _, c := range []struct {
		p    []byte
		off  int64
		want string
	}{
		{p, 100, "offset 100 is not a multiple of 4096"},
		{p, -4096, "offset -4096 is not a multiple of 4096"},
		{p[:100], 0, "buffer of 100 bytes is not 4096-aligned"},
		{p[1 : BlockAlign+1], 0, "buffer of 4096 bytes is not 4096-aligned"},
		{p[BlockAlign-512 : 2*BlockAlign-512], 0, "buffer of 4096 bytes is not 4096-aligned (use disk.AlignedBuffer)"},
	} {
		if _, _, err := s.ReadBlock(c.p, c.off); err == nil || !strings.Contains(err.Error(), "disk.read: "+img+": "+c.want) {
			t.Errorf("ReadBlock(len %d, %d): %v, want %q", len(c.p), c.off, err, c.want)
		}
	}
	if n, hole, err := s.ReadBlock(p[:0], 0); n != 0 || hole || err != nil {
		t.Errorf("empty buffer: %d, %v, %v", n, hole, err)
	}
	if n, _, err := s.ReadBlock(p, 12288); n != 0 || err != io.EOF {
		t.Errorf("past the end: %d, %v", n, err)
	}

	// After Close, reads fail cleanly and Close stays quiet.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.ReadBlock(p, 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("read after close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

func TestFileShrank(t *testing.T) {
	dir := directDir(t)
	path := filepath.Join(dir, "disk.img")
	writeImage(t, path, 4*MiB, 9)
	for _, noDirect := range []bool{false, true} {
		s := mustOpen(t, path, Options{NoDirect: noDirect})
		if err := os.Truncate(path, MiB+100); err != nil {
			t.Fatal(err)
		}
		_, _, err := s.ReadBlock(AlignedBuffer(MiB), MiB)
		if !errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(err.Error(), "disk.read: "+path+": offset 1048576: unexpected end of data") {
			t.Errorf("direct %v: %v", !noDirect, err)
		}
		writeImage(t, path, 4*MiB, 9)
	}
}

func TestAlignedBuffer(t *testing.T) {
	for _, n := range []int{1, 512, 4095, 4096, 4097, MiB, MiB + 1} {
		b := AlignedBuffer(n)
		if len(b) != alignUp(n) || cap(b) != len(b) || len(b)%BlockAlign != 0 {
			t.Errorf("AlignedBuffer(%d): len %d cap %d", n, len(b), cap(b))
		}
		if a := uintptr(unsafe.Pointer(unsafe.SliceData(b))) % BlockAlign; a != 0 {
			t.Errorf("AlignedBuffer(%d) starts %d bytes past an aligned address", n, a)
		}
	}
	if b := AlignedBuffer(0); len(b) != 0 {
		t.Errorf("AlignedBuffer(0): len %d", len(b))
	}
}

func TestIsZero(t *testing.T) {
	for _, n := range []int{0, 1, 7, 4095, 4096, 4097, 64 * KiB, MiB + 3} {
		b := make([]byte, n)
		if !IsZero(b) {
			t.Errorf("IsZero(%d zero bytes) = false", n)
		}
		for _, i := range []int{0, n / 2, 4096, n - 1} {
			if i < 0 || i >= n {
				continue
			}
			b[i] = 1
			if IsZero(b) {
				t.Errorf("IsZero(%d bytes, byte %d set) = true", n, i)
			}
			b[i] = 0
		}
	}
}

// benchFile is a 256 MiB file of noise under /var/tmp (on the root file
// system, where O_DIRECT works), made once for all ReadBlock benchmarks.
func benchFile(b *testing.B) string {
	d, err := os.MkdirTemp("/var/tmp", "bkrun-disk-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(d) })
	path := filepath.Join(d, "disk.img")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	chunk := randomData(16*MiB, 10)
	for i := range 16 {
		chunk[0] = byte(i) // no two chunks alike
		if _, err := f.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	f.Close()
	return path
}

// BenchmarkReadBlock reads 1 MiB blocks from a 256 MiB file, round and
// round, with 1 and 4 goroutines, direct and buffered. Buffered runs start
// with the file dropped from the page cache, and ReadBlock drops what it
// reads, so both measure the disk, not memory.
func BenchmarkReadBlock(b *testing.B) {
	path := benchFile(b)
	const block = MiB
	for _, mode := range []string{"direct", "buffered"} {
		for _, g := range []int{1, 4} {
			b.Run(fmt.Sprintf("%s/goroutines=%d", mode, g), func(b *testing.B) {
				s, err := Open(path, Options{NoDirect: mode == "buffered"})
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				if s.Direct() != (mode == "direct") {
					b.Fatalf("Direct() = %v", s.Direct())
				}
				s.f.dontNeed(0, 0)
				nblocks := s.Size() / block
				var next atomic.Int64
				b.SetBytes(block)
				b.ResetTimer()
				var wg sync.WaitGroup
				for range g {
					wg.Add(1)
					go func() {
						defer wg.Done()
						p := AlignedBuffer(block)
						for {
							i := next.Add(1) - 1
							if i >= int64(b.N) {
								return
							}
							if _, _, err := s.ReadBlock(p, i%nblocks*block); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
			})
		}
	}
}

func BenchmarkIsZero(b *testing.B) {
	zero := make([]byte, MiB)
	b.Run("zero-1MiB", func(b *testing.B) {
		b.SetBytes(MiB)
		for b.Loop() {
			if !IsZero(zero) {
				b.Fatal("not zero")
			}
		}
	})
	// The naive loop, for comparison.
	b.Run("loop-1MiB", func(b *testing.B) {
		b.SetBytes(MiB)
		for b.Loop() {
			for _, c := range zero {
				if c != 0 {
					b.Fatal("not zero")
				}
			}
		}
	})
	// The worst case: a block that is zero but for its last byte.
	last := make([]byte, MiB)
	last[MiB-1] = 1
	b.Run("lastbyte-1MiB", func(b *testing.B) {
		b.SetBytes(MiB)
		for b.Loop() {
			if IsZero(last) {
				b.Fatal("zero")
			}
		}
	})
	// The common case for data: the first page differs (no SetBytes:
	// the rest is never looked at).
	data := randomData(MiB, 11)
	b.Run("data-1MiB", func(b *testing.B) {
		for b.Loop() {
			if IsZero(data) {
				b.Fatal("zero")
			}
		}
	})
}
