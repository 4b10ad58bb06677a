package stream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bkrun/bkrun/internal/testenv"
)

// memSource is an in-memory BlockReader; holes marks block offsets to
// report as holes (their bytes must be zero).
type memSource struct {
	data  []byte
	holes map[int64]bool
	delay time.Duration
	reads atomic.Int64
}

func (m *memSource) Size() int64 { return int64(len(m.data)) }
func (m *memSource) ReadBlock(p []byte, off int64) (int, bool, error) {
	m.reads.Add(1)
	if m.delay > 0 {
		time.Sleep(m.delay)
	}
	n := copy(p, m.data[off:])
	if m.holes[off] {
		return n, true, nil
	}
	return n, false, nil
}

// mixed builds data like the benchmark's "mixed" image: random, text and
// zeros, plus a tail that is not a multiple of the block size.
func mixed(blocks int, tail int) []byte {
	r := rand.New(rand.NewSource(1))
	var b bytes.Buffer
	words := strings.Fields("the quick brown fox jumps over the lazy dog snapshot volume backup")
	for i := 0; i < blocks; i++ {
		switch i % 4 {
		case 0:
			blk := make([]byte, BlockSize)
			r.Read(blk)
			b.Write(blk)
		case 1:
			start := b.Len()
			for b.Len()-start < BlockSize {
				b.WriteString(words[r.Intn(len(words))] + " ")
			}
			b.Truncate(start + BlockSize)
		default:
			b.Write(make([]byte, BlockSize))
		}
	}
	t := make([]byte, tail)
	r.Read(t)
	b.Write(t)
	return b.Bytes()
}

func copyToBuf(t *testing.T, src any, codec string) ([]byte, Stats) {
	t.Helper()
	enc, err := NewEncoder(codec)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	st, err := Copy(context.Background(), src, &out, CopyOptions{Encoder: enc})
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), st
}

func decodeAll(t *testing.T, codec string, b []byte) []byte {
	t.Helper()
	d, err := NewDecoder(codec, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(d)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestCopyRoundTripAllCodecs(t *testing.T) {
	data := mixed(9, 12345)
	for _, codec := range Codecs {
		t.Run(codec, func(t *testing.T) {
			out, st := copyToBuf(t, &memSource{data: data}, codec)
			if got := decodeAll(t, codec, out); !bytes.Equal(got, data) {
				t.Fatalf("decoded %d bytes differ from the %d input bytes", len(got), len(data))
			}
			if st.Size != int64(len(data)) || st.BytesWritten != int64(len(out)) {
				t.Errorf("stats %+v, output %d", st, len(out))
			}
			if st.ZeroBytes != 4*BlockSize {
				t.Errorf("zero bytes %d, want %d", st.ZeroBytes, 4*BlockSize)
			}
			if codec != "none" && len(out) > len(data)/2 {
				t.Errorf("%s output %d bytes for %d: not compressing", codec, len(out), len(data))
			}
		})
	}
}

// The output must be a standard stream: the lz4 CLI decodes it byte-exact.
func TestLZ4CLIDecodesOutput(t *testing.T) {
	lz4 := testenv.NeedCommand(t, "lz4")
	data := mixed(7, 999)
	out, _ := copyToBuf(t, &memSource{data: data}, "lz4")
	cmd := exec.Command(lz4, "-d", "-c")
	cmd.Stdin = bytes.NewReader(out)
	got, err := cmd.Output()
	if err != nil {
		t.Fatalf("lz4 -d: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("lz4 -d gave %d bytes, want %d identical", len(got), len(data))
	}
}

func TestZstdCLIDecodesOutput(t *testing.T) {
	zstd := testenv.NeedCommand(t, "zstd")
	data := mixed(5, 77)
	out, _ := copyToBuf(t, &memSource{data: data}, "zstd")
	cmd := exec.Command(zstd, "-d", "-c")
	cmd.Stdin = bytes.NewReader(out)
	got, err := cmd.Output()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("zstd -d: %v, %d bytes", err, len(got))
	}
}

// The documented standard-tool recipe reproduces the image hash.
func TestTreeHashMatchesStandardTools(t *testing.T) {
	testenv.NeedCommand(t, "b3sum")
	testenv.NeedCommand(t, "xxd")
	data := mixed(6, 4321)
	_, st := copyToBuf(t, &memSource{data: data}, "none")
	f := filepath.Join(t.TempDir(), "img")
	os.WriteFile(f, data, 0o644)
	out, err := exec.Command("sh", "-c", "split -b 1M --filter='b3sum --no-names' < "+f+" | xxd -r -p | b3sum --no-names").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != st.Hash {
		t.Fatalf("shell pipeline hash %s, bkrun %s", got, st.Hash)
	}
}

// countingEncoder counts real compressions.
type countingEncoder struct {
	Encoder
	n atomic.Int64
}

func (c *countingEncoder) Encode(dst, src []byte) ([]byte, bool) {
	c.n.Add(1)
	return c.Encoder.Encode(dst, src)
}

func TestZeroBlocksAndHolesCostNoCompression(t *testing.T) {
	data := make([]byte, 10*BlockSize+100)
	copy(data[3*BlockSize:], "not zero")
	src := &memSource{data: data, holes: map[int64]bool{5 * BlockSize: true, 6 * BlockSize: true}}
	lz, _ := NewEncoder("lz4")
	enc := &countingEncoder{Encoder: lz}
	var out bytes.Buffer
	st, err := Copy(context.Background(), src, &out, CopyOptions{Encoder: enc})
	if err != nil {
		t.Fatal(err)
	}
	// One real block plus the short zero tail; nine full zero blocks are free.
	if enc.n.Load() != 2 {
		t.Errorf("%d compressions, want 2", enc.n.Load())
	}
	if st.HoleBytes != 2*BlockSize || st.ZeroBytes != 9*BlockSize+100 {
		t.Errorf("holes %d zero %d", st.HoleBytes, st.ZeroBytes)
	}
	if got := decodeAll(t, "lz4", out.Bytes()); !bytes.Equal(got, data) {
		t.Error("round trip with holes differs")
	}
}

func TestStreamingSource(t *testing.T) {
	data := mixed(5, 3)
	out, st := copyToBuf(t, io.MultiReader(bytes.NewReader(data[:100]), bytes.NewReader(data[100:])), "lz4")
	if !bytes.Equal(decodeAll(t, "lz4", out), data) || st.Size != int64(len(data)) {
		t.Fatal("streaming round trip differs")
	}
	_, st = copyToBuf(t, bytes.NewReader(nil), "lz4")
	if st.Size != 0 {
		t.Fatal("empty stream")
	}
}

func TestCopyCancelsPromptly(t *testing.T) {
	src := &memSource{data: make([]byte, 4000*BlockSize/4), delay: 20 * time.Millisecond}
	ctx, cancel := context.WithCancelCause(context.Background())
	time.AfterFunc(100*time.Millisecond, func() { cancel(errors.New("interrupted by test")) })
	start := time.Now()
	_, err := Copy(ctx, src, io.Discard, CopyOptions{})
	if err == nil || err.Error() != "interrupted by test" {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("cancel took %v", d)
	}
}

type failingWriter struct{ after int }

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.after <= 0 {
		return 0, syscall.ENOSPC
	}
	f.after--
	return len(p), nil
}

func TestWriteAndReadErrorsStopTheCopy(t *testing.T) {
	_, err := Copy(context.Background(), &memSource{data: mixed(8, 0)}, &failingWriter{after: 3}, CopyOptions{})
	if !errors.Is(err, syscall.ENOSPC) || !strings.HasPrefix(err.Error(), "writing: ") {
		t.Errorf("err = %v", err)
	}
	_, err = Copy(context.Background(), &errSource{memSource{data: mixed(8, 0)}}, io.Discard, CopyOptions{})
	if !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "reading at offset 4194304") {
		t.Errorf("err = %v", err)
	}
}

type errSource struct{ memSource }

func (e *errSource) ReadBlock(p []byte, off int64) (int, bool, error) {
	if off == 4*BlockSize {
		return 0, false, syscall.EIO
	}
	return e.memSource.ReadBlock(p, off)
}

// patternSource produces a large image cheaply: every block is filled with
// a byte pattern derived from its offset (compressible, never zero).
type patternSource struct{ size int64 }

func (p patternSource) Size() int64 { return p.size }
func (p patternSource) ReadBlock(b []byte, off int64) (int, bool, error) {
	n := int(min(int64(len(b)), p.size-off))
	for i := 0; i < n; i += 4096 {
		b[i] = byte(off>>20) | 1
		copy(b[i+1:min(i+4096, n)], "bkrun pattern block")
	}
	return n, false, nil
}

// Memory stays bounded whatever the size: copy 2 GiB and check the heap.
func TestMemoryIsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	runtime.GC()
	var peak uint64
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		var ms runtime.MemStats
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > peak {
					peak = ms.HeapInuse
				}
			}
		}
	}()
	enc, _ := NewEncoder("lz4")
	st, err := Copy(context.Background(), patternSource{size: 2 << 30}, io.Discard, CopyOptions{Encoder: enc})
	close(done)
	<-stopped
	if err != nil || st.Size != 2<<30 {
		t.Fatal(err, st.Size)
	}
	if peak > 48<<20 && !raceEnabled {
		t.Errorf("heap in use peaked at %d MiB copying 2 GiB", peak>>20)
	}
	t.Logf("heap peak %d MiB", peak>>20)
}
