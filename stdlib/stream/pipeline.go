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
	// InBuffers bounds blocks being read or encoded (BlockSize each).
	// Default 8.
	InBuffers int
	// OutBlocks bounds encoded blocks waiting to be written in order (at
	// most BlockSize each). Zero blocks take neither: a long run of zeroed
	// space is read ahead while earlier data is still being compressed.
	// Default 24.
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
	out  []byte  // encoded block (may alias the encoder's zero block)
	obuf *[]byte // pooled output buffer, returned after the write
	leaf [32]byte
	err  error
	done chan struct{}
}

// outPool holds encode buffers: only blocks that are really encoded take
// one, so zeroed space costs no memory either.
var outPool = sync.Pool{New: func() any { b := make([]byte, 0, BlockSize+BlockSize/255+64); return &b }}

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
		nIn = 8
	}
	if nOut <= 0 {
		nOut = 24
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
	outTokens := make(chan struct{}, nOut)
	for i := 0; i < nOut; i++ {
		outTokens <- struct{}{}
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
			select {
			case <-outTokens:
			case <-ctx.Done():
				return
			}
			var buf []byte
			select {
			case buf = <-inFree:
			case <-ctx.Done():
				return
			}
			j := &job{off: off, buf: buf, done: make(chan struct{})}
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
					if j.zero {
						outTokens <- struct{}{} // zero blocks are written from the shared encoding
					}
				}
				inFree <- j.buf
				j.buf = nil
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
			st.Size += int64(j.n)
			if j.zero {
				st.ZeroBytes += int64(j.n)
			} else {
				outTokens <- struct{}{}
			}
			if j.hole {
				st.HoleBytes += int64(j.n)
			}
			tree.Add(j.leaf)
			if o.Progress != nil {
				o.Progress(st.Size)
			}
			if j.obuf != nil {
				*j.obuf = j.out[:0]
				outPool.Put(j.obuf)
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

// encodeBlock hashes and encodes one block; all-zero blocks take the
// precomputed encoding and leaf.
func encodeBlock(j *job, enc Encoder) {
	data := j.buf[:j.n]
	if j.hole || disk.IsZero(data) {
		j.zero = true
		data = zeroBlock[:j.n]
		if j.n == BlockSize {
			j.out, j.leaf = enc.Zero(), zeroLeaf()
			return
		}
	}
	j.leaf = Leaf(data)
	j.obuf = outPool.Get().(*[]byte)
	j.out = enc.Encode((*j.obuf)[:0], data)
}
