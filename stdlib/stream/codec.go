package stream

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"sync"

	"github.com/bkrun/bkrun/internal/lz4block"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// BlockSize is the unit of the pipeline: read, hash, compress and write in
// 1 MiB blocks. It is also the lz4 frame's block size (lz4 allows 64 KiB,
// 256 KiB, 1 MiB or 4 MiB); 1 MiB keeps a dozen blocks in flight well under
// the pipeline's memory budget.
const BlockSize = 1 << 20

// Codecs lists the supported codecs.
var Codecs = []string{"lz4", "zstd", "none"}

// Encoder encodes independent blocks, so that blocks can be compressed on
// all cores and written in order. The output of Header, the encoded blocks
// in order, and Trailer is a standard stream: an lz4 frame that `lz4 -d`
// decodes, a sequence of zstd frames that `zstd -d` decodes, or raw bytes.
type Encoder interface {
	Name() string
	Ext() string // file name extension, "" for none
	Header() []byte
	Trailer() []byte
	// Encode encodes one block (at most BlockSize bytes): it appends the
	// encoding to dst and returns it, or, for a block best stored as it
	// is, appends only the prefix that goes before the block and reports
	// stored. The pipeline then writes the block from its input buffer
	// instead of copying it (random data; every block of "none").
	// Safe for concurrent use.
	Encode(dst, src []byte) (out []byte, stored bool)
	// Zero is the encoding of a full all-zero block, computed once: a
	// zero-filled disk must not cost a compression per block.
	Zero() []byte
}

// NewEncoder returns the encoder for a codec name.
func NewEncoder(name string) (Encoder, error) {
	var e Encoder
	switch name {
	case "lz4":
		e = newLZ4()
	case "zstd":
		z, err := newZstd()
		if err != nil {
			return nil, err
		}
		e = z
	case "none", "":
		e = rawEncoder{}
	default:
		return nil, fmt.Errorf("unknown codec %q (lz4, zstd, none)", name)
	}
	return e, nil
}

var zeroBlock = make([]byte, BlockSize)

// ---- lz4 ----

// lz4Encoder writes an lz4 frame (format spec v1.6.x) with independent 1 MiB
// blocks and no checksums: integrity is the BLAKE3 tree hash recorded in the
// catalogue, which restore verifies. Each block is prefixed by its 4-byte
// little-endian size; the high bit marks a block stored uncompressed
// (random data), exactly as lz4 itself does.
type lz4Encoder struct {
	header []byte
	zero   []byte
	pool   sync.Pool // *lz4State: the compressor's hash table is not concurrency-safe
}

// Blocks are compressed with internal/lz4block (C LZ4's fast parser, 1.5x
// pierrec/lz4's speed per core with the same output as `lz4 -1`); pierrec
// writes the frame header and does all decoding.
type lz4State struct {
	c       lz4block.State
	sample  []byte
	scratch []byte
}

// Incompressible data (encrypted or already compressed files, random
// fill) is detected on a sample of four 8 KiB pieces before the whole
// block is compressed: compressing 1 MiB of it only to store it raw would
// cost as much as the rest of the pipeline.
const (
	samplePiece  = 8 << 10
	samplePieces = 4
)

var lz4Header = sync.OnceValue(func() []byte {
	// Let the library write the frame descriptor, including its header
	// checksum, rather than re-implementing xxh32 for two bytes.
	var b bytes.Buffer
	w := lz4.NewWriter(&b)
	if err := w.Apply(lz4.BlockSizeOption(lz4.Block1Mb), lz4.ChecksumOption(false)); err != nil {
		panic(err)
	}
	if err := w.Close(); err != nil {
		panic(err)
	}
	h := b.Bytes()[:7]
	// magic, FLG = version 01 + independent blocks, BD = 1 MiB blocks.
	if binary.LittleEndian.Uint32(h) != 0x184D2204 || h[4] != 0x60 || h[5] != 0x60 {
		panic(fmt.Sprintf("unexpected lz4 frame header % x", h))
	}
	return append([]byte(nil), h...)
})

func newLZ4() *lz4Encoder {
	e := &lz4Encoder{header: lz4Header()}
	e.pool.New = func() any {
		return &lz4State{sample: make([]byte, samplePiece*samplePieces), scratch: make([]byte, 0, lz4block.CompressBound(samplePiece*samplePieces))}
	}
	e.zero = encodeWhole(e, zeroBlock)
	return e
}

// encodeWhole is the complete encoding of src, stored or not.
func encodeWhole(e Encoder, src []byte) []byte {
	out, stored := e.Encode(nil, src)
	if stored {
		out = append(out, src...)
	}
	return out
}

func (e *lz4Encoder) Name() string    { return "lz4" }
func (e *lz4Encoder) Ext() string     { return ".lz4" }
func (e *lz4Encoder) Header() []byte  { return e.header }
func (e *lz4Encoder) Trailer() []byte { return []byte{0, 0, 0, 0} } // end mark
func (e *lz4Encoder) Zero() []byte    { return e.zero }

func (e *lz4Encoder) Encode(dst, src []byte) ([]byte, bool) {
	start := len(dst)
	need := 4 + lz4block.CompressBound(len(src))
	if cap(dst)-start < need {
		nd := make([]byte, start, start+need)
		copy(nd, dst)
		dst = nd
	}
	s := e.pool.Get().(*lz4State)
	out, ok := dst, false
	if compressible(s, src) {
		// Compress appends after the 4 bytes of the block size.
		out, ok = lz4block.Compress(dst[:start+4], src, &s.c)
	}
	e.pool.Put(s)
	if !ok {
		// Incompressible: the block goes as is after its size, whose
		// high bit says "stored".
		return binary.LittleEndian.AppendUint32(dst[:start], uint32(len(src))|0x80000000), true
	}
	binary.LittleEndian.PutUint32(out[start:], uint32(len(out)-start-4))
	return out, false
}

// compressible compresses a sample of src and reports whether it shrank
// by more than 1/32.
func compressible(s *lz4State, src []byte) bool {
	if len(src) < 8*samplePiece*samplePieces {
		return true
	}
	step := len(src) / samplePieces
	for i := 0; i < samplePieces; i++ {
		copy(s.sample[i*samplePiece:(i+1)*samplePiece], src[i*step:])
	}
	out, ok := lz4block.Compress(s.scratch[:0], s.sample, &s.c)
	return ok && len(out) < len(s.sample)-len(s.sample)/32
}

// ---- zstd ----

// zstdEncoder writes each block as its own zstd frame (with content size and
// checksum); `zstd -d` decodes a concatenation of frames as one stream.
type zstdEncoder struct {
	enc  *zstd.Encoder
	zero []byte
}

func newZstd() (*zstdEncoder, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(true))
	if err != nil {
		return nil, err
	}
	e := &zstdEncoder{enc: enc}
	e.zero = encodeWhole(e, zeroBlock)
	return e, nil
}

func (e *zstdEncoder) Name() string    { return "zstd" }
func (e *zstdEncoder) Ext() string     { return ".zst" }
func (e *zstdEncoder) Header() []byte  { return nil }
func (e *zstdEncoder) Trailer() []byte { return nil }
func (e *zstdEncoder) Zero() []byte    { return e.zero }
func (e *zstdEncoder) Encode(dst, src []byte) ([]byte, bool) {
	return e.enc.EncodeAll(src, dst), false
}

// ---- none ----

type rawEncoder struct{}

func (rawEncoder) Name() string                          { return "none" }
func (rawEncoder) Ext() string                           { return "" }
func (rawEncoder) Header() []byte                        { return nil }
func (rawEncoder) Trailer() []byte                       { return nil }
func (rawEncoder) Zero() []byte                          { return zeroBlock }
func (rawEncoder) Encode(dst, src []byte) ([]byte, bool) { return dst, true }

// NewDecoder returns a reader of the logical bytes of an encoded stream.
// Corrupt or truncated input makes Read fail; it never yields silently
// short data for a truncated lz4 frame (the end mark is required).
func NewDecoder(codec string, r io.Reader) (io.ReadCloser, error) {
	switch codec {
	case "lz4":
		zr := lz4.NewReader(r)
		if err := zr.Apply(lz4.ConcurrencyOption(-1)); err != nil {
			return nil, err
		}
		return io.NopCloser(zr), nil
	case "zstd":
		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(0), zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, err
		}
		return d.IOReadCloser(), nil
	case "none":
		return io.NopCloser(r), nil
	}
	return nil, fmt.Errorf("unknown codec %q", codec)
}
