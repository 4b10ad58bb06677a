package stream

import (
	"context"
	"io"
	"os"
	"testing"

	"github.com/bkrun/bkrun/stdlib/disk"
)

// BenchmarkCopyMixed measures the whole pipeline (O_DIRECT reads, zero
// detection, hashing, lz4) on the benchmark's mixed image when present:
// BKRUN_BENCH_IMAGE=/var/tmp/bkrun-bench/mixed.img go test -bench CopyMixed
func BenchmarkCopyMixed(b *testing.B) {
	path := os.Getenv("BKRUN_BENCH_IMAGE")
	if path == "" {
		b.Skip("set BKRUN_BENCH_IMAGE to an image (bench/image.sh builds one)")
	}
	enc, _ := NewEncoder("lz4")
	for i := 0; i < b.N; i++ {
		src, err := disk.Open(path, disk.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(src.Size())
		if _, err := Copy(context.Background(), src, io.Discard, CopyOptions{Encoder: enc}); err != nil {
			b.Fatal(err)
		}
		src.Close()
	}
}

// BenchmarkEncodeText is the lz4 cost of one 1 MiB block of text.
func BenchmarkEncodeText(b *testing.B) {
	data := mixed(2, 0)[BlockSize:]
	enc, _ := NewEncoder("lz4")
	var out []byte
	b.SetBytes(BlockSize)
	for i := 0; i < b.N; i++ {
		out, _ = enc.Encode(out[:0], data)
	}
}

// BenchmarkEncodeRandom is the lz4 cost of an incompressible block.
func BenchmarkEncodeRandom(b *testing.B) {
	data := mixed(1, 0)
	enc, _ := NewEncoder("lz4")
	var out []byte
	b.SetBytes(BlockSize)
	for i := 0; i < b.N; i++ {
		out, _ = enc.Encode(out[:0], data)
	}
}
