// Package stream moves bytes from a source to a sink in Go: read, hash and
// compress in parallel, write in order, with bounded memory. Lua only wires
// the pieces together; no byte of a backup passes through it.
package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"time"

	"github.com/bkrun/bkrun/stdlib/disk"
)

// BlockReader is a source that can be read at any block-aligned offset by
// several goroutines at once: a disk or an image (disk.Source). Several
// reads in flight matter under O_DIRECT, where the kernel does no readahead.
type BlockReader interface {
	Size() int64
	ReadBlock(p []byte, off int64) (n int, hole bool, err error)
}

// Stats describe one copy or restore.
type Stats struct {
	Size         int64 // logical bytes (the image)
	ZeroBytes    int64 // logical bytes in all-zero blocks, holes included
	HoleBytes    int64 // logical bytes never read because they were holes
	BytesWritten int64 // bytes written to the sink (encoded)
	Hash         string
	Codec        string
	Start, End   time.Time
}

// Duration of the copy.
func (s Stats) Duration() time.Duration { return s.End.Sub(s.Start) }

// Rate is logical bytes per second.
func (s Stats) Rate() float64 {
	d := s.Duration().Seconds()
	if d <= 0 {
		return 0
	}
	return float64(s.Size) / d
}

// CopyOptions tune Copy.
type CopyOptions struct {
	Encoder Encoder
	// Readers is the number of reads kept in flight for a block source:
	// under O_DIRECT the kernel does no readahead, so one outstanding read
	// leaves the disk idle while a block is compressed. Default 4.
	Readers int
	// Workers hash and encode blocks. Default: one per CPU.
	Workers int
	// InBuffers bounds blocks being read or encoded (BlockSize each); a
	// block stored as is (random data, codec none) keeps its input buffer
	// until it is written, instead of an output buffer. Default 12:
	// enough to keep reading the blocks after a stretch of text while it
	// is compressed (8 left the CPUs idle a tenth of the time on the
	// benchmark's mixed image; 16 to 32 gained nothing measurable).
	InBuffers int
	// OutBlocks is the number of output buffers (a little over BlockSize
	// each): blocks encoded or being encoded and not yet written in
	// order. A zero block gives its buffers back as soon as it is read, so
	// a long run of zeroed space is read ahead while earlier data is
	// still being compressed. Default 20.
	OutBlocks int
	// Progress, if set, is called by the writer with the logical bytes done.
	Progress func(done int64)
}

type job struct {
	off  int64
	buf  []byte // input buffer while the block is read and encoded
	n    int
	zero bool
	hole bool
	out  []byte // encoded block (may alias the encoder's zero block), or the prefix of a stored one
	obuf []byte // output buffer, given back after the write
	// stored: the block is written as is after out, from buf, which is
	// then held until the write; the output buffer goes back at once
	// (out points into head).
	stored bool
	head   [8]byte
	leaf   [32]byte
	err    error
	done   chan struct{}
}

// outBufferSize holds the encoding of any block: lz4 stores an
// incompressible block as is behind its 4-byte size, zstd's bound is below
// this too.
const outBufferSize = BlockSize + BlockSize/255 + 64

// ReadError is a failure of the source; Off is the block offset, or -1
// for a streaming source.
type ReadError struct {
	Off int64
	Err error
}

func (e *ReadError) Error() string {
	if e.Off < 0 {
		return "reading: " + e.Err.Error()
	}
	return fmt.Sprintf("reading at offset %d: %v", e.Off, e.Err)
}
func (e *ReadError) Unwrap() error { return e.Err }

// WriteError is a failure of the sink.
type WriteError struct{ Err error }

func (e *WriteError) Error() string { return "writing: " + e.Err.Error() }
func (e *WriteError) Unwrap() error { return e.Err }

// ErrSourceShort reports a block source that ended before its size.
var ErrSourceShort = errors.New("source ended before its size")

// lookahead bounds how far the dispatcher runs ahead of the writer, in
// blocks. A pending zero block holds no buffer, only its small job record.
const lookahead = 1024

// Copy streams src (a BlockReader or an io.Reader) through the encoder into
// dst and returns what it did. Blocks are read by several readers, hashed
// and encoded by one worker per core, and written in order by the calling
// goroutine. Memory is bounded by InBuffers and OutBlocks whatever the
// size. When ctx is cancelled Copy returns promptly with the cause.
//
// Deadlock freedom: the dispatcher takes a block's input buffer and output
// token in offset order, so the block the writer waits for always holds
// what it needs; readers and workers never block on each other.
func Copy(ctx context.Context, src any, dst io.Writer, o CopyOptions) (Stats, error) {
	enc := o.Encoder
	if enc == nil {
		enc = rawEncoder{}
	}
	readers, workers := o.Readers, o.Workers
	if readers <= 0 {
		readers = 4
	}
	if workers <= 0 {
		workers = min(runtime.NumCPU(), runtime.GOMAXPROCS(0))
	}
	nIn, nOut := o.InBuffers, o.OutBlocks
	if nIn <= 0 {
		nIn = 12
	}
	if nOut <= 0 {
		nOut = 20
	}
	var br BlockReader
	var sr io.Reader
	switch s := src.(type) {
	case BlockReader:
		br = s
	case io.Reader:
		sr = s
	default:
		return Stats{}, fmt.Errorf("not a stream source: %T", src)
	}
	st := Stats{Codec: enc.Name(), Start: time.Now()}
	if _, err := dst.Write(enc.Header()); err != nil {
		return st, &WriteError{err}
	}
	st.BytesWritten += int64(len(enc.Header()))

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	inFree := make(chan []byte, nIn)
	for i := 0; i < nIn; i++ {
		inFree <- disk.AlignedBuffer(BlockSize)
	}
	// The buffers are allocated once, not pooled: the memory limit set by
	// bkrun keeps the collector busy, and a sync.Pool emptied by every
	// collection made the copy allocate (and collect) a buffer per block.
	outFree := make(chan []byte, nOut)
	for i := 0; i < nOut; i++ {
		outFree <- make([]byte, 0, outBufferSize)
	}
	order := make(chan *job, lookahead) // every job, in offset order, for the writer
	toRead := make(chan *job, nIn)      // jobs whose block a reader must fetch
	toWork := make(chan *job, nIn)      // jobs with their data, to hash and encode
	var readWG, workWG sync.WaitGroup

	// Dispatcher: hands out offsets in order. A streaming source is read
	// here, sequentially; a block source is read by the readers.
	go func() {
		defer close(toRead)
		defer close(order)
		for off := int64(0); ; off += BlockSize {
			if br != nil && off >= br.Size() {
				return
			}
			var obuf []byte
			select {
			case obuf = <-outFree:
			case <-ctx.Done():
				return
			}
			var buf []byte
			select {
			case buf = <-inFree:
			case <-ctx.Done():
				return
			}
			j := &job{off: off, buf: buf, obuf: obuf, done: make(chan struct{})}
			last := false
			if sr != nil {
				n, err := io.ReadFull(sr, buf[:BlockSize])
				j.n = n
				switch {
				case err == io.EOF || err == io.ErrUnexpectedEOF:
					last = true
					if n == 0 {
						return
					}
				case err != nil:
					j.err = &ReadError{Off: -1, Err: err}
					last = true
				}
			}
			order <- j
			toRead <- j
			if last {
				return
			}
		}
	}()

	for i := 0; i < readers; i++ {
		readWG.Add(1)
		go func() {
			defer readWG.Done()
			for j := range toRead {
				if br != nil && j.err == nil && ctx.Err() == nil {
					readBlock(j, br)
				}
				if j.err == nil && ctx.Err() == nil && zeroBlockFast(j, enc) {
					// Settled here, not by a worker: a run of zeroed space
					// streams through while the workers are busy
					// compressing the data before it, instead of waiting
					// behind it with its buffers held.
					outFree <- j.obuf
					inFree <- j.buf
					j.buf, j.obuf = nil, nil
					close(j.done)
					continue
				}
				toWork <- j
			}
		}()
	}
	go func() { readWG.Wait(); close(toWork) }()

	for i := 0; i < workers; i++ {
		workWG.Add(1)
		go func() {
			defer workWG.Done()
			for j := range toWork {
				if j.err == nil && ctx.Err() == nil {
					encodeBlock(j, enc)
				}
				if j.stored {
					outFree <- j.obuf
					j.obuf = nil
				} else {
					inFree <- j.buf
					j.buf = nil
				}
				close(j.done)
			}
		}()
	}

	tree := NewTreeHash()
	err := func() error {
		for j := range order {
			select {
			case <-j.done:
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			if j.err != nil {
				return j.err
			}
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			if _, err := dst.Write(j.out); err != nil {
				return &WriteError{err}
			}
			st.BytesWritten += int64(len(j.out))
			if j.stored {
				if _, err := dst.Write(j.buf[:j.n]); err != nil {
					return &WriteError{err}
				}
				st.BytesWritten += int64(j.n)
				inFree <- j.buf
				j.buf = nil
			}
			st.Size += int64(j.n)
			if j.zero {
				st.ZeroBytes += int64(j.n)
			}
			if j.hole {
				st.HoleBytes += int64(j.n)
			}
			tree.Add(j.leaf)
			if o.Progress != nil {
				o.Progress(st.Size)
			}
			if j.obuf != nil {
				outFree <- j.obuf
			}
		}
		return nil
	}()
	if err != nil {
		cancel(err)
		// Let the dispatcher, readers and workers run out: they see the
		// cancelled context and skip their work.
		for range order {
		}
	}
	workWG.Wait()
	if err == nil && ctx.Err() != nil {
		err = context.Cause(ctx)
	}
	if err == nil && br != nil && st.Size != br.Size() {
		err = fmt.Errorf("%w: read %d of %d bytes", ErrSourceShort, st.Size, br.Size())
	}
	if err != nil {
		st.End = time.Now()
		return st, err
	}
	if _, err := dst.Write(enc.Trailer()); err != nil {
		return st, &WriteError{err}
	}
	st.BytesWritten += int64(len(enc.Trailer()))
	st.Hash = tree.Sum()
	st.End = time.Now()
	return st, nil
}

// readBlock fetches one block of a block source.
func readBlock(j *job, br BlockReader) {
	n, hole, err := br.ReadBlock(j.buf[:BlockSize], j.off)
	if err != nil {
		j.err = &ReadError{Off: j.off, Err: err}
		return
	}
	if n == 0 {
		j.err = fmt.Errorf("%w: nothing at offset %d", ErrSourceShort, j.off)
		return
	}
	j.n, j.hole = n, hole
}

// zeroBlockFast settles a full all-zero block (or hole) with the
// precomputed encoding and leaf; a short final block of zeros is left to
// encodeBlock.
func zeroBlockFast(j *job, enc Encoder) bool {
	if j.n != BlockSize || !j.hole && !disk.IsZero(j.buf[:j.n]) {
		return false
	}
	j.zero = true
	j.out, j.leaf = enc.Zero(), zeroLeaf()
	return true
}

// encodeBlock hashes and encodes a block that the readers did not settle
// with zeroBlockFast: data, or a short all-zero last block.
func encodeBlock(j *job, enc Encoder) {
	data := j.buf[:j.n]
	if j.hole {
		clear(data) // a hole is not read: its bytes are zeros
	}
	j.zero = j.hole || disk.IsZero(data)
	j.leaf = Leaf(data)
	j.out, j.stored = enc.Encode(j.obuf[:0], data)
	if j.stored {
		if len(j.out) > len(j.head) {
			// A prefix longer than any codec's: write a copy instead.
			j.out, j.stored = append(j.out, data...), false
			return
		}
		j.out = append(j.head[:0], j.out...)
	}
}
