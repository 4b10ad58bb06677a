package stream

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"github.com/bkrun/bkrun/stdlib/disk"
	"golang.org/x/sys/unix"
)

// directWriter appends a stream to a file with O_DIRECT writes.
//
// Why: a buffered write copies every byte into the page cache, which the
// kernel then allocates, writes back and (with writeBehind) drops again;
// for an image backup that is a fifth of the CPU time, and the backup is
// CPU-bound (docs/PERFORMANCE.md). With O_DIRECT the device reads the
// bytes straight from an aligned staging buffer and the page cache is
// left alone, which is also what a backup should do to a server's cache.
//
// The stream is gathered into aligned staging buffers; a full one is
// written by a goroutine of its own while the next fills, so the caller
// does not wait for the device. The unaligned end is written padded to the
// alignment and the file is then truncated to its real size. Any write
// the kernel refuses with EINVAL (a file system that accepts the flag but
// not this alignment) or cuts short (a full disk) is redone with O_DIRECT
// cleared, and everything after it is buffered: the error the caller sees
// is then the ordinary one, such as "no space left on device".
type directWriter struct {
	f       *os.File
	cur     []byte                // staging buffer being filled (len = bytes in it)
	free    chan []byte           // staging buffers not in use
	full    chan stageBuf         // buffers for the write goroutine
	written chan error            // the goroutine's result once full is closed
	off     int64                 // file offset of cur[0]
	failed  atomic.Pointer[error] // first write error: the copy stops at the next Write
	direct  bool                  // O_DIRECT still on (only the write goroutine or Close changes it)
	closed  bool
	// writeAt is f.WriteAt; tests replace it to see how refusals and
	// errors of the kernel are handled.
	writeAt func(p []byte, off int64) (int, error)
}

type stageBuf struct {
	b   []byte
	off int64
}

const (
	directChunk   = 2 << 20 // staging buffer size: large sequential writes
	directBuffers = 2       // one filling, one being written
)

// newDirectWriter switches f, an empty file opened for writing, to
// O_DIRECT and returns a writer for it, or nil if the file system does not
// support direct I/O (the caller writes buffered then).
func newDirectWriter(f *os.File) *directWriter {
	fd := int(f.Fd())
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return nil
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, flags|unix.O_DIRECT); err != nil {
		return nil
	}
	w := &directWriter{
		f:       f,
		free:    make(chan []byte, directBuffers),
		full:    make(chan stageBuf, directBuffers),
		written: make(chan error, 1),
		direct:  true,
		writeAt: f.WriteAt,
	}
	for i := 0; i < directBuffers; i++ {
		w.free <- disk.AlignedBuffer(directChunk)[:0]
	}
	w.cur = <-w.free
	go w.run()
	return w
}

// run writes full staging buffers in order and gives them back.
func (w *directWriter) run() {
	var first error
	for sb := range w.full {
		if first == nil {
			if first = w.write(sb.b, sb.off); first != nil {
				w.failed.Store(&first)
			}
		}
		w.free <- sb.b[:0]
	}
	w.written <- first
}

// write writes p at off, with O_DIRECT if it is still on, else buffered.
func (w *directWriter) write(p []byte, off int64) error {
	n, err := w.writeAt(p, off)
	if err == nil || !w.direct || !errors.Is(err, unix.EINVAL) {
		return err
	}
	// Redo the rest buffered: either direct I/O is refused here, or a
	// write was cut short (a full disk) and the remainder is no longer
	// aligned. The buffered write reports the real cause.
	if err := w.bufferedFromNowOn(); err != nil {
		return err
	}
	_, err = w.writeAt(p[n:], off+int64(n))
	return err
}

func (w *directWriter) bufferedFromNowOn() error {
	fd := uintptr(w.f.Fd())
	flags, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
	if err == nil {
		_, err = unix.FcntlInt(fd, unix.F_SETFL, flags&^unix.O_DIRECT)
	}
	if err != nil {
		return fmt.Errorf("turning off direct I/O: %w", err)
	}
	w.direct = false
	return nil
}

// err is the first error of the write goroutine so far.
func (w *directWriter) err() error {
	if e := w.failed.Load(); e != nil {
		return *e
	}
	return nil
}

// Write gathers p into staging buffers and hands full ones to the writer
// goroutine. An error of an earlier write is returned here.
func (w *directWriter) Write(p []byte) (int, error) {
	if w.closed {
		return 0, os.ErrClosed
	}
	if err := w.err(); err != nil {
		return 0, err
	}
	done := 0
	for len(p) > 0 {
		n := copy(w.cur[len(w.cur):directChunk], p)
		w.cur = w.cur[:len(w.cur)+n]
		p = p[n:]
		done += n
		if len(w.cur) == directChunk {
			w.full <- stageBuf{w.cur, w.off}
			w.off += directChunk
			w.cur = <-w.free
		}
	}
	return done, nil
}

// Close writes what is staged, waits for the writes and truncates the file
// to the length of the stream. It does not sync or close the file.
func (w *directWriter) Close() error {
	if w.closed {
		return w.err()
	}
	err := w.stop()
	if err == nil && len(w.cur) > 0 {
		n := len(w.cur)
		// Pad to the alignment with zeros, write, then cut the padding.
		padded := w.cur[:(n+disk.BlockAlign-1)/disk.BlockAlign*disk.BlockAlign]
		clear(padded[n:])
		err = w.write(padded, w.off)
		if err == nil {
			err = w.f.Truncate(w.off + int64(n))
		}
	}
	if err != nil {
		w.failed.Store(&err)
	}
	return err
}

// abort stops the writer goroutine without writing what is staged.
func (w *directWriter) abort() {
	if !w.closed {
		w.stop()
	}
}

// stop lets the write goroutine finish the buffers handed to it and
// returns its first error.
func (w *directWriter) stop() error {
	w.closed = true
	close(w.full)
	return <-w.written
}
