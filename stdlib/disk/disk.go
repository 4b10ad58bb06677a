// Package disk reads block devices and disk images for whole-disk image
// backups: the native side of `dd if=/dev/sda iflag=direct bs=1M`.
//
// A Source is opened read-only, with O_DIRECT when the kernel allows it, so
// that streaming a 180 GB disk neither fills the page cache nor evicts what
// the machine's services had cached. Reads are positional (pread) and a
// Source is safe for concurrent use: the caller (stream.copy) keeps several
// reads in flight at different offsets, which O_DIRECT needs to keep the
// device busy, because it has no readahead to do that.
//
// Regular files are sparse-aware: a block lying entirely in a hole is
// reported as such without being read, so the zeros of an unallocated
// image cost nothing.
//
// Errors name the operation and the path ("disk.open: /dev/sdz: no such
// file or directory") and wrap the underlying error, so errors.Is(err,
// fs.ErrNotExist) and errno checks keep working.
package disk

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// BlockAlign is the alignment of O_DIRECT buffers, offsets and lengths
// (4096 covers 512e and 4Kn devices).
//
// O_DIRECT transfers go straight between the device and the caller's
// memory, so the kernel requires the buffer address, the file offset and
// the length to be multiples of the device's logical block size (512 or
// 4096) or it fails with EINVAL. 4096 satisfies both kinds.
const BlockAlign = 4096

// Options select what part of a device or image is read, and how.
type Options struct {
	// Offset and Length are an optional byte range inside the device or
	// image (Length 0 = to the end); they let a partition inside an image
	// be read alone. ReadBlock offsets and Size are relative to the range.
	Offset, Length int64
	// NoDirect forces buffered reads.
	NoDirect bool
	// Logger receives debug messages (for example why O_DIRECT is not in
	// use); nil discards them.
	Logger *slog.Logger
}

// Source is an open device or image range. Its methods are safe for
// concurrent use.
type Source struct {
	path   string
	kind   string
	offset int64 // where the range starts on the device or in the file
	size   int64 // bytes in the range
	direct bool
	sparse bool
	log    *slog.Logger

	f *file // O_DIRECT unless NoDirect, refused, or the range is unaligned
	// buf is a second, buffered descriptor, open only in direct mode, for
	// the reads O_DIRECT refuses: the tail of a device whose size is a
	// multiple of 512 but not of 4096 may fail with EINVAL.
	buf *file
	// directPread is f's pread; tests replace it to make the kernel refuse.
	directPread func(p []byte, off int64) (int, error)
	retryOnce   sync.Once // log the first buffered retry only

	mu             sync.Mutex
	readLo, readHi int64 // extent read through the page cache, dropped again at Close

	closeOnce sync.Once
	closeErr  error
}

// file is an open descriptor whose number is only used inside
// RawConn.Control: os.File counts the call as a reference, so a Close from
// another goroutine waits for a pread in flight instead of closing (and
// letting the kernel reuse) the number under it.
type file struct {
	f  *os.File
	rc syscall.RawConn
}

func openFile(path string, direct bool) (*file, error) {
	flags := os.O_RDONLY | unix.O_CLOEXEC
	if direct {
		flags |= unix.O_DIRECT
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &file{f: f, rc: rc}, nil
}

// do runs fn with the descriptor number held open.
func (f *file) do(fn func(fd int) error) error {
	var err error
	if f.rc.Control(func(fd uintptr) { err = fn(int(fd)) }) != nil {
		// Control fails only once the file is closed; its error is
		// internal/poll's, so say it the way os.File.ReadAt would.
		return os.ErrClosed
	}
	return err
}

// pread is one pread(2), retried on EINTR. It does not loop on short
// counts: under O_DIRECT a second read at the unaligned offset a short
// count leaves would fail, so the caller decides.
func (f *file) pread(p []byte, off int64) (n int, err error) {
	err = f.do(func(fd int) error {
		for {
			var e error
			n, e = unix.Pread(fd, p, off)
			if e != unix.EINTR {
				return e
			}
		}
	})
	if n < 0 {
		n = 0
	}
	return n, err
}

// seekData is lseek(SEEK_DATA). The shared file offset it moves is never
// used (reads are pread), so concurrent calls do not disturb each other.
func (f *file) seekData(off int64) (data int64, err error) {
	err = f.do(func(fd int) error {
		var e error
		data, e = unix.Seek(fd, off, unix.SEEK_DATA)
		return e
	})
	return data, err
}

// dontNeed drops [off, off+n) from the page cache.
func (f *file) dontNeed(off, n int64) error {
	return f.do(func(fd int) error { return unix.Fadvise(fd, off, n, unix.FADV_DONTNEED) })
}

// blockSize is ioctl(BLKGETSIZE64): a block device's stat size is 0.
func (f *file) blockSize() (size int64, err error) {
	err = f.do(func(fd int) error {
		var n uint64
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&n))); e != 0 {
			return fmt.Errorf("ioctl BLKGETSIZE64: %w", e)
		}
		size = int64(n)
		return nil
	})
	return size, err
}

// pathErr turns *os.PathError into "path: reason", keeping the errno
// wrapped; the Go op ("open", "stat") is dropped for the caller's own.
func pathErr(op, path string, err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("%s: %s: %w", op, path, err)
}

// kindOf accepts block devices and regular files, the two things a disk
// image backup can read; anything else gets a reason naming what it is.
func kindOf(m os.FileMode) (string, error) {
	what := ""
	switch {
	case m.IsRegular():
		return "file", nil
	case m&os.ModeDevice != 0 && m&os.ModeCharDevice == 0:
		return "device", nil
	case m.IsDir():
		what = "a directory"
	case m&os.ModeCharDevice != 0:
		what = "a character device"
	case m&os.ModeNamedPipe != 0:
		what = "a named pipe"
	case m&os.ModeSocket != 0:
		what = "a socket"
	default:
		what = "not a regular file"
	}
	return "", fmt.Errorf("is %s, not a block device or image file", what)
}

// Open opens a block device or image file read-only.
//
// O_DIRECT is used unless o.NoDirect is set, the file system refuses it
// (EINVAL at open), or o.Offset is not a multiple of BlockAlign (every
// O_DIRECT read would be unaligned); Direct reports the outcome and the
// reason is logged at debug level.
func Open(path string, o Options) (*Source, error) {
	return openAs("disk.open", path, o)
}

// Size returns the size in bytes of a block device or image file.
func Size(path string) (int64, error) {
	s, err := openAs("disk.size", path, Options{NoDirect: true})
	if err != nil {
		return 0, err
	}
	defer s.Close()
	return s.size, nil
}

// openAs is Open with errors named after op.
func openAs(op, path string, o Options) (*Source, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fail := func(err error) (*Source, error) { return nil, fmt.Errorf("%s: %s: %w", op, path, err) }
	if o.Offset < 0 || o.Length < 0 {
		return fail(fmt.Errorf("negative range (offset %d, length %d)", o.Offset, o.Length))
	}
	// Stat before opening: open(2) of a named pipe would block until a
	// writer appears, and a directory should be named as such.
	fi, err := os.Stat(path)
	if err != nil {
		return nil, pathErr(op, path, err)
	}
	if _, err := kindOf(fi.Mode()); err != nil {
		return fail(err)
	}

	direct := !o.NoDirect
	if direct && o.Offset%BlockAlign != 0 {
		log.Debug("disk: range offset is not a multiple of 4096, using buffered reads", "path", path, "offset", o.Offset)
		direct = false
	}
	f, err := openFile(path, direct)
	if direct && errors.Is(err, unix.EINVAL) {
		// tmpfs before Linux 6.6, ramfs, some FUSE and network file
		// systems have no direct I/O and refuse the flag at open.
		log.Debug("disk: O_DIRECT refused by the filesystem, using buffered reads", "path", path)
		direct = false
		f, err = openFile(path, false)
	}
	if err != nil {
		return nil, pathErr(op, path, err)
	}
	s := &Source{path: path, direct: direct, log: log, f: f}
	s.directPread = f.pread
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()

	// The path may have changed between stat and open: judge what was opened.
	fi, err = f.f.Stat()
	if err != nil {
		return nil, pathErr(op, path, err)
	}
	if s.kind, err = kindOf(fi.Mode()); err != nil {
		return fail(err)
	}
	total := fi.Size()
	if s.kind == "device" {
		if total, err = f.blockSize(); err != nil {
			return fail(err)
		}
	}

	if o.Offset > total {
		return fail(fmt.Errorf("offset %d is beyond the end (size %d)", o.Offset, total))
	}
	s.offset, s.size = o.Offset, total-o.Offset
	if o.Length > 0 {
		if o.Length > s.size {
			return fail(fmt.Errorf("range offset %d length %d ends at %d, beyond the end (size %d)",
				o.Offset, o.Length, o.Offset+o.Length, total))
		}
		s.size = o.Length
	}

	if s.kind == "file" {
		// Probing at 0 tells "unsupported" (EINVAL) from "supported": a
		// file with no data at all answers ENXIO, which is a hole too.
		_, err := f.seekData(0)
		s.sparse = err == nil || errors.Is(err, unix.ENXIO)
		if !s.sparse {
			log.Debug("disk: SEEK_DATA unsupported, holes will be read", "path", path, "err", err)
		}
	}
	if direct {
		if s.buf, err = openFile(path, false); err != nil {
			return nil, pathErr(op, path, err)
		}
	}
	log.Debug("disk: open", "path", path, "kind", s.kind, "offset", s.offset, "size", s.size,
		"direct", s.direct, "sparse", s.sparse)
	ok = true
	return s, nil
}

// Path is the path the source was opened with.
func (s *Source) Path() string { return s.path }

// Kind is "device" (a block device) or "file" (an image file).
func (s *Source) Kind() string { return s.kind }

// Offset is where the range starts on the device or in the file.
func (s *Source) Offset() int64 { return s.offset }

// Size is the number of bytes in the range.
func (s *Source) Size() int64 { return s.size }

// Direct reports whether O_DIRECT is in use.
func (s *Source) Direct() bool { return s.direct }

// Sparse reports whether holes are detected (SEEK_DATA works: regular
// files on a file system that supports it).
func (s *Source) Sparse() bool { return s.sparse }

// fd is the main descriptor's number, for tests that inspect its flags.
func (s *Source) fd() int { return int(s.f.f.Fd()) }

// ReadBlock fills p with the bytes at range offset off (off must be a
// multiple of BlockAlign; p must come from AlignedBuffer and len(p) be a
// multiple of BlockAlign). It returns the number of bytes, short only at
// the end of the range, and io.EOF when off is at or past the end.
//
// It returns hole=true without reading when [off, off+n) lies entirely in a
// hole of a sparse file: p is then NOT filled, the caller treats it as
// zeros.
//
// It is safe for concurrent use by many goroutines (pread). In buffered
// mode it drops what it read from the page cache again
// (posix_fadvise(POSIX_FADV_DONTNEED), see dropCache) so a 180 GB backup
// does not evict what the machine's services had cached.
func (s *Source) ReadBlock(p []byte, off int64) (n int, hole bool, err error) {
	if off < 0 || off%BlockAlign != 0 {
		return 0, false, fmt.Errorf("disk.read: %s: offset %d is not a multiple of %d", s.path, off, BlockAlign)
	}
	if len(p)%BlockAlign != 0 || len(p) > 0 && uintptr(unsafe.Pointer(&p[0]))%BlockAlign != 0 {
		// Checked in buffered mode too, so that a caller tested on a file
		// system without O_DIRECT does not fail first on a real disk.
		return 0, false, fmt.Errorf("disk.read: %s: buffer of %d bytes is not %d-aligned (use disk.AlignedBuffer)", s.path, len(p), BlockAlign)
	}
	if off >= s.size {
		return 0, false, io.EOF
	}
	want := int(min(int64(len(p)), s.size-off))
	if want == 0 {
		return 0, false, nil
	}
	abs := s.offset + off
	if s.sparse {
		data, err := s.f.seekData(abs)
		switch {
		case errors.Is(err, unix.ENXIO): // no data at or after abs
			return want, true, nil
		case err != nil:
			return 0, false, fmt.Errorf("disk.read: %s: offset %d: seek data: %w", s.path, off, err)
		case data >= abs+int64(want):
			return want, true, nil
		}
	}
	if s.direct {
		err = s.readDirect(p, abs, want)
	} else {
		err = s.readBuffered(s.f, p[:want], abs)
	}
	if err != nil {
		return 0, false, fmt.Errorf("disk.read: %s: offset %d: %w", s.path, off, err)
	}
	return want, false, nil
}

// readDirect reads want bytes at abs into p with O_DIRECT. The length
// asked of the kernel is rounded up to BlockAlign (p is long enough: its
// length is a multiple); at the end of a file the kernel returns a short,
// unaligned count, and for a range ending mid-block the bytes past the
// range are read and ignored.
func (s *Source) readDirect(p []byte, abs int64, want int) error {
	end := alignUp(want)
	for got := 0; got < want; {
		m, err := s.directPread(p[got:end], abs+int64(got))
		if errors.Is(err, unix.EINVAL) {
			// A device whose size is a multiple of 512 but not 4096 may
			// refuse an aligned read that crosses its end, where others
			// return a short count: read what is left through the page
			// cache.
			s.retryOnce.Do(func() {
				s.log.Debug("disk: O_DIRECT read refused, retrying it buffered", "path", s.path, "offset", abs+int64(got), "length", end-got)
			})
			return s.readBuffered(s.buf, p[got:want], abs+int64(got))
		}
		if err != nil {
			return err
		}
		if m == 0 {
			return shrank()
		}
		got += m
		if got < want && got%BlockAlign != 0 {
			// A short count in mid-range leaves an unaligned offset that
			// O_DIRECT would refuse; continue buffered (it will most
			// likely find the end too).
			return s.readBuffered(s.buf, p[got:want], abs+int64(got))
		}
	}
	return nil
}

// readBuffered fills p from f at abs through the page cache, then lets
// the pages go (dropCache): each block is read once, and keeping it would
// only push out pages that other processes use.
func (s *Source) readBuffered(f *file, p []byte, abs int64) error {
	for got := 0; got < len(p); {
		m, err := f.pread(p[got:], abs+int64(got))
		if err != nil {
			return err
		}
		if m == 0 {
			return shrank()
		}
		got += m
	}
	s.dropCache(f, abs, int64(len(p)))
	return nil
}

const (
	// maxFolio is the largest page-cache folio expected: the PMD size
	// on x86-64. Drop-behind ranges are aligned to it.
	maxFolio = 2 << 20
	// dropLag is how far behind a read the drop-behind works: far enough
	// that no concurrent reader still wants those pages (readahead it
	// has not consumed yet), near enough to bound what stays cached.
	dropLag = 32 << 20
)

// dropCache is posix_fadvise(POSIX_FADV_DONTNEED) for a range just read.
//
// The kernel only drops folios lying entirely inside the range it is
// given, and recent kernels cache block devices and ext4/xfs files in
// folios of up to 2 MiB: one straddling two 1 MiB blocks survives both
// calls. (Measured on Linux 6.18: exact-range drops alone left a third of
// a device cached with 1 MiB blocks and nearly all of it with 64 KiB
// blocks.) So each read also drops everything between dropLag and
// dropLag+its length behind it, in maxFolio-aligned pieces, which no folio
// straddles; successive reads tile the range. This assumes reads advance
// roughly in order, as a backup's do; out of order they are still correct,
// some pages are just read twice. Close drops what remains.
func (s *Source) dropCache(f *file, abs, n int64) {
	drop := func(lo, hi int64) {
		if hi <= lo {
			return
		}
		if err := f.dontNeed(lo, hi-lo); err != nil {
			s.log.Debug("disk: fadvise DONTNEED failed", "path", s.path, "err", err)
		}
	}
	drop(abs, abs+n) // enough on kernels with small folios
	// In direct mode only a device's tail is read through the cache: the
	// pages behind it were never cached by this source, so leave them.
	if !s.direct {
		drop(max(alignDown(abs-dropLag, maxFolio), s.offset), alignDown(abs+n-dropLag, maxFolio))
	}

	s.mu.Lock()
	if s.readHi == 0 {
		s.readLo, s.readHi = abs, abs+n
	}
	s.readLo, s.readHi = min(s.readLo, abs), max(s.readHi, abs+n)
	s.mu.Unlock()
}

// alignDown rounds x down to a multiple of a (a power of two); on two's
// complement that is also right for negative x.
func alignDown(x, a int64) int64 { return x &^ (a - 1) }

func shrank() error {
	return fmt.Errorf("unexpected end of data (did the image shrink after it was opened?): %w", io.ErrUnexpectedEOF)
}

// Close closes the source. Reads in flight finish first; later reads fail.
// Closing again returns the first result.
func (s *Source) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		lo, hi := s.readLo, s.readHi
		s.mu.Unlock()
		if hi > lo {
			// The last dropLag bytes read, and folios the drop-behind
			// has not reached yet. (fadvise acts on the device's or
			// file's page cache, whichever descriptor asks.)
			_ = s.f.dontNeed(lo, hi-lo)
		}
		err := s.f.f.Close()
		if s.buf != nil {
			err = errors.Join(err, s.buf.f.Close())
		}
		if err != nil {
			s.closeErr = fmt.Errorf("disk.close: %s: %w", s.path, err)
		}
	})
	return s.closeErr
}

func alignUp(n int) int { return (n + BlockAlign - 1) &^ (BlockAlign - 1) }

// AlignedBuffer returns a buffer of n bytes rounded up to BlockAlign whose
// start address is aligned to BlockAlign, as O_DIRECT requires. (Go's
// garbage collector does not move heap objects, so the alignment holds.)
func AlignedBuffer(n int) []byte {
	if n <= 0 {
		return []byte{}
	}
	size := alignUp(n)
	b := make([]byte, size+BlockAlign)
	skip := 0
	if r := int(uintptr(unsafe.Pointer(&b[0])) % BlockAlign); r != 0 {
		skip = BlockAlign - r
	}
	// Cap the slice so an append cannot spill into the padding.
	return b[skip : skip+size : skip+size]
}

// zeroPage is what IsZero compares against: one page stays in L1 cache,
// and a larger chunk measured no faster.
var zeroPage [4096]byte

// IsZero reports whether p is all zero bytes. It compares p against a
// shared zero page with bytes.Equal, which runs at memcmp speed (vector
// instructions; some 35 GB/s here, twice an unrolled uint64 loop), and
// stops at the first page that differs.
func IsZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeroPage))
		if !bytes.Equal(p[:n], zeroPage[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

// NewReader reads the source from start to end as a plain stream (for
// consumers that take an io.Reader, such as a remote command's stdin).
// Holes read as zeros. Reads go block by block with an aligned buffer, so
// O_DIRECT still applies.
func (s *Source) NewReader() io.Reader { return &seqReader{s: s, buf: AlignedBuffer(seqBlock)} }

const seqBlock = 1 << 20

type seqReader struct {
	s        *Source
	buf      []byte
	off      int64 // next block offset
	pending  []byte
	finished bool
}

func (r *seqReader) Read(p []byte) (int, error) {
	for len(r.pending) == 0 {
		if r.finished || r.off >= r.s.Size() {
			return 0, io.EOF
		}
		n, hole, err := r.s.ReadBlock(r.buf, r.off)
		if err != nil {
			return 0, err
		}
		if hole {
			clear(r.buf[:n])
		}
		r.pending = r.buf[:n]
		r.off += int64(n)
		if n < len(r.buf) {
			r.finished = true
		}
	}
	n := copy(p, r.pending)
	r.pending = r.pending[n:]
	return n, nil
}
