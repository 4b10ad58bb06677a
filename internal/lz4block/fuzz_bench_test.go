package lz4block

import (
	"bytes"
	"io"
	"math/rand"
	"os"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// FuzzCompress: every block Compress accepts decodes (pierrec/lz4)
// byte-exact and meets the format's end conditions; a State reused across
// inputs gives the same bytes as a fresh one.
func FuzzCompress(f *testing.F) {
	r := rand.New(rand.NewSource(6))
	f.Add([]byte{})
	f.Add(make([]byte, 16))
	f.Add([]byte("abcabcabcabcabcabcabcabc"))
	f.Add(text(r, 1000))
	f.Add(randomBytes(r, 100))
	f.Add(append(randomBytes(r, 300), make([]byte, 300)...))
	var reused State
	f.Fuzz(func(t *testing.T, src []byte) {
		got := roundTrip(t, &reused, src)
		var fresh State
		a, _ := Compress(nil, src, &reused)
		b, _ := Compress(nil, src, &fresh)
		if !bytes.Equal(a, b) {
			t.Fatalf("reused and fresh State differ")
		}
		// Below 13 bytes no encoding is smaller: nothing is accepted.
		if len(src) < 13 && got != -1 {
			t.Fatalf("len %d accepted", len(src))
		}
	})
}

// Benchmark inputs: 16 MiB each, compressed as 16 independent 1 MiB
// blocks as the image backup does. The same 16 MiB serve `lz4 -b1`:
//
//	dd if=/var/tmp/bkrun-bench/mixed.img of=text16 bs=1M skip=16 count=16
//	dd if=/var/tmp/bkrun-bench/usr.img of=usr16 bs=1M skip=512 count=16
//	lz4 -b1 -B1048576 text16 usr16
const benchSize = 16 << 20

// benchText is the text part of bench/gen's mixed image (bytes 16..32 MiB
// of mixed.img): the generator draws 16 MiB of random bytes first.
func benchText() []byte {
	r := rand.New(rand.NewSource(42))
	r.Read(make([]byte, 16<<20))
	return text(r, benchSize)
}

// benchUsr is 16 MiB from the middle of bench/image.sh's tar of /usr
// (offset 512 MiB; its lz4 ratio is that of the whole image).
func benchUsr(b *testing.B) []byte {
	f, err := os.Open("/var/tmp/bkrun-bench/usr.img")
	if err != nil {
		b.Skip("no /var/tmp/bkrun-bench/usr.img (bash bench/image.sh builds it)")
	}
	defer f.Close()
	buf := make([]byte, benchSize)
	if _, err := io.ReadFull(io.NewSectionReader(f, 512<<20, benchSize), buf); err != nil {
		b.Skip("usr.img shorter than 528 MiB")
	}
	return buf
}

type compressor func(dst, src []byte) []byte

func ours() compressor {
	var s State
	return func(dst, src []byte) []byte {
		out, ok := Compress(dst, src, &s)
		if !ok {
			return append(dst, src...)
		}
		return out
	}
}

func pierrec() compressor {
	var c lz4.Compressor
	return func(dst, src []byte) []byte {
		n, err := c.CompressBlock(src, dst[len(dst):cap(dst)])
		if err != nil || n == 0 || n >= len(src) {
			return append(dst, src...)
		}
		return dst[:len(dst)+n]
	}
}

func benchCompress(b *testing.B, data []byte, c compressor) {
	const block = 1 << 20
	dst := make([]byte, 0, lz4.CompressBlockBound(block))
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	out := 0
	for i := 0; i < b.N; i++ {
		out = 0
		for off := 0; off < len(data); off += block {
			out += len(c(dst[:0], data[off:min(off+block, len(data))]))
		}
	}
	// Compressed size of the 16 MiB, to compare with lz4 -b1 -B1048576.
	b.ReportMetric(float64(out), "out-bytes")
}

func BenchmarkText(b *testing.B) {
	data := benchText()
	b.Run("lz4block", func(b *testing.B) { benchCompress(b, data, ours()) })
	b.Run("pierrec", func(b *testing.B) { benchCompress(b, data, pierrec()) })
}

func BenchmarkUsr(b *testing.B) {
	data := benchUsr(b)
	b.Run("lz4block", func(b *testing.B) { benchCompress(b, data, ours()) })
	b.Run("pierrec", func(b *testing.B) { benchCompress(b, data, pierrec()) })
}
