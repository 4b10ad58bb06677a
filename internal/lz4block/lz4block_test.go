package lz4block

import (
	"bytes"
	"encoding/binary"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/bkrun/bkrun/internal/testenv"
	"github.com/pierrec/lz4/v4"
)

// roundTrip compresses src, checks the block against the format's end
// conditions and decodes it with pierrec/lz4, byte-exact. It returns the
// compressed size, or -1 when Compress declined (and checks that dst was
// left as it was).
func roundTrip(t testing.TB, s *State, src []byte) int {
	t.Helper()
	prefix := []byte("prefix")
	out, ok := Compress(append([]byte(nil), prefix...), src, s)
	if !bytes.Equal(out[:len(prefix)], prefix) {
		t.Fatalf("len %d: dst prefix clobbered", len(src))
	}
	if !ok {
		if len(out) != len(prefix) {
			t.Fatalf("len %d: declined but dst grew to %d", len(src), len(out))
		}
		return -1
	}
	blk := out[len(prefix):]
	if len(blk) >= len(src) {
		t.Fatalf("len %d: ok with %d bytes, not smaller", len(src), len(blk))
	}
	checkEnd(t, blk, len(src))
	dec := make([]byte, len(src))
	n, err := lz4.UncompressBlock(blk, dec)
	if err != nil {
		t.Fatalf("len %d: decode: %v", len(src), err)
	}
	if n != len(src) || !bytes.Equal(dec[:n], src) {
		t.Fatalf("len %d: round trip differs (decoded %d bytes)", len(src), n)
	}
	return len(blk)
}

// checkEnd walks the sequences of blk and checks what a lenient decoder
// would not: the last 5 bytes are literals, the last match starts at least
// 12 bytes before the end, offsets are in 1..65535.
func checkEnd(t testing.TB, blk []byte, n int) {
	t.Helper()
	pos, i := 0, 0 // decoded position, input index
	length := func(v int) int {
		if v == 15 {
			for {
				b := blk[i]
				i++
				v += int(b)
				if b != 255 {
					break
				}
			}
		}
		return v
	}
	for {
		tok := blk[i]
		i++
		lit := length(int(tok >> 4))
		i += lit
		pos += lit
		if i == len(blk) {
			break
		}
		off := int(binary.LittleEndian.Uint16(blk[i:]))
		i += 2
		if off == 0 || off > pos {
			t.Fatalf("bad offset %d at %d", off, pos)
		}
		if pos > n-mfLimit {
			t.Fatalf("match at %d starts within the last 12 bytes of %d", pos, n)
		}
		pos += length(int(tok&15)) + minMatch
		if pos > n-lastLiterals {
			t.Fatalf("match ends at %d, within the last 5 bytes of %d", pos, n)
		}
	}
	if pos != n {
		t.Fatalf("block decodes to %d bytes, want %d", pos, n)
	}
}

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	r.Read(b)
	return b
}

// text is the benchmark's text (bench/gen): random words in lines.
func text(r *rand.Rand, n int) []byte {
	words := strings.Fields(`the quick brown fox jumps over the lazy dog while a backup of
		the volume group snapshot is written to disk and verified by its hash before rename
		kernel: EXT4-fs (sda1): mounted filesystem with ordered data mode. Opts: (null)
		Nov 21 03:00:01 daisy CRON[4242]: (root) CMD (bkrun -q /etc/bkrun/xen-backup.lua master)`)
	var b strings.Builder
	for b.Len() < n {
		for i := 0; i < 8+r.Intn(8); i++ {
			b.WriteString(words[r.Intn(len(words))])
			b.WriteByte(' ')
		}
		b.WriteByte('\n')
	}
	return []byte(b.String()[:n])
}

func TestSmall(t *testing.T) {
	var s State
	r := rand.New(rand.NewSource(1))
	for n := 0; n <= 64; n++ {
		for _, src := range [][]byte{make([]byte, n), randomBytes(r, n), bytes.Repeat([]byte("ab"), n)[:n], text(r, n)} {
			got := roundTrip(t, &s, src)
			if n < 13 && got != -1 {
				t.Errorf("len %d: compressed to %d, want declined", n, got)
			}
		}
	}
	// 16 zero bytes: literal, match of 10, 5 last literals = 10 bytes.
	if got := roundTrip(t, &s, make([]byte, 16)); got != 10 {
		t.Errorf("16 zeros: %d bytes, want 10", got)
	}
}

func TestShapes(t *testing.T) {
	var s State
	r := rand.New(rand.NewSource(2))
	rnd := randomBytes(r, 200000)
	cases := map[string][]byte{
		"zeros 1MiB":  make([]byte, 1<<20),
		"zeros 4MiB":  make([]byte, MaxBlockSize),
		"text 1MiB":   text(r, 1<<20),
		"text 4MiB":   text(r, MaxBlockSize),
		"abc repeat":  bytes.Repeat([]byte("abc"), 100000),
		"random 64k":  rnd[:65536],
		"random 1MiB": randomBytes(r, 1<<20),
	}
	// Long literal runs on both sides of the 15+255k length boundaries,
	// then a match.
	for _, k := range []int{0, 1, 2, 10} {
		for _, d := range []int{-1, 0, 1} {
			lit := 15 + 255*k + d
			b := append(append([]byte(nil), rnd[:lit]...), make([]byte, 300)...)
			b = append(b, rnd[:40]...)
			cases["literals "+strconv.Itoa(lit)] = b
			// A match whose length is on the boundary.
			m := append(append([]byte(nil), rnd[1000:1100]...), rnd[1000:1100+lit]...)
			m = append(m, rnd[5000:5040]...)
			cases["match "+strconv.Itoa(lit)] = m
		}
	}
	// Repeats at offsets around the 65535 limit: only those ≤ 65535 may
	// be used, and the data stays round-trippable either way.
	for _, off := range []int{65533, 65534, 65535, 65536, 65537, 70000} {
		b := append([]byte(nil), rnd[:off]...)
		b = append(b, rnd[:5000]...)
		cases["offset "+strconv.Itoa(off)] = b
	}
	// Random data with rare repeats: mostly literals, long runs.
	mostly := append([]byte(nil), rnd...)
	copy(mostly[150000:], rnd[100:200])
	cases["mostly random"] = mostly
	// Compressible then random: must decline part-way or succeed.
	half := append(make([]byte, 100000), rnd[:100000]...)
	cases["half zeros, half random"] = half

	for name, src := range cases {
		got := roundTrip(t, &s, src)
		t.Logf("%-20s %8d -> %8d", name, len(src), got)
		if strings.HasPrefix(name, "random") && got != -1 {
			t.Errorf("%s: compressed to %d, want declined", name, got)
		}
		if strings.HasPrefix(name, "zeros") || strings.HasPrefix(name, "text") || strings.HasPrefix(name, "abc") {
			if got == -1 || got > len(src)/2 {
				t.Errorf("%s: %d bytes, want a good ratio", name, got)
			}
		}
	}
	// Offsets: a 5000-byte repeat at 65535 must be found, at 65536 not.
	if a, b := roundTrip(t, &s, cases["offset 65535"]), roundTrip(t, &s, cases["offset 65536"]); a == -1 || a > 65535+1000 || b != -1 {
		t.Errorf("offset 65535: %d bytes, offset 65536: %d (want a match, then declined)", a, b)
	}
}

// TestStateReuse: a State that compressed one block must not leak
// positions into the next (the table is per block).
func TestStateReuse(t *testing.T) {
	var s State
	r := rand.New(rand.NewSource(3))
	a := text(r, 1<<20)
	b := text(r, 300000)
	c := randomBytes(r, 100000)
	fresh := func(src []byte) int { var f State; return roundTrip(t, &f, src) }
	for _, src := range [][]byte{a, b, c, b[:1000], a} {
		if got, want := roundTrip(t, &s, src), fresh(src); got != want {
			t.Fatalf("reused state: %d bytes, fresh state: %d", got, want)
		}
	}
}

func TestNoAlloc(t *testing.T) {
	var s State
	src := text(rand.New(rand.NewSource(4)), 1<<20)
	dst := make([]byte, 0, CompressBound(len(src)))
	if n := testing.AllocsPerRun(5, func() { Compress(dst, src, &s) }); n != 0 {
		t.Errorf("%v allocations per Compress", n)
	}
}

// TestLZ4CLI builds an lz4 frame from Compress blocks (1 MiB and 4 MiB
// block sizes, raw blocks for incompressible data) and has the reference
// `lz4 -d` decode it byte-exact.
func TestLZ4CLI(t *testing.T) {
	lz4cmd := testenv.NeedCommand(t, "lz4")
	r := rand.New(rand.NewSource(5))
	var data []byte
	data = append(data, text(r, 3<<20+12345)...)
	data = append(data, randomBytes(r, 1<<20)...)
	data = append(data, make([]byte, 2<<20)...)
	data = append(data, text(r, 777)...)
	for _, bs := range []struct{ size int }{{1 << 20}, {4 << 20}} {
		frame := frameHeader(t, bs.size)
		var s State
		for off := 0; off < len(data); off += bs.size {
			blk := data[off:min(off+bs.size, len(data))]
			hdr := len(frame)
			frame = append(frame, 0, 0, 0, 0)
			out, ok := Compress(frame, blk, &s)
			if ok {
				frame = out
				binary.LittleEndian.PutUint32(frame[hdr:], uint32(len(frame)-hdr-4))
			} else {
				frame = append(frame, blk...)
				binary.LittleEndian.PutUint32(frame[hdr:], uint32(len(blk))|1<<31)
			}
		}
		frame = append(frame, 0, 0, 0, 0)
		p := filepath.Join(t.TempDir(), "f.lz4")
		if err := os.WriteFile(p, frame, 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := exec.Command(lz4cmd, "-dc", p).Output()
		if err != nil {
			t.Fatalf("lz4 -d (block size %d): %v", bs.size, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("lz4 -d (block size %d): output differs (%d bytes, want %d)", bs.size, len(got), len(data))
		}
		t.Logf("block size %d: %d -> %d bytes, lz4 -d byte-exact", bs.size, len(data), len(frame))
	}
}

// frameHeader has pierrec/lz4 write an lz4 frame descriptor (independent
// blocks, no checksums) for the block size, header checksum included.
func frameHeader(t *testing.T, size int) []byte {
	var b bytes.Buffer
	w := lz4.NewWriter(&b)
	bs := lz4.Block1Mb
	if size == 4<<20 {
		bs = lz4.Block4Mb
	}
	if err := w.Apply(lz4.BlockSizeOption(bs), lz4.ChecksumOption(false)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), b.Bytes()[:7]...)
}

// TestSameAsLZ4CLI compresses the benchmark's text with `lz4 -1` in 1 MiB
// independent blocks and compares block by block: the ratio must be
// within 2% of C LZ4's (it is the same parser, so the blocks are normally
// byte-identical; that is logged, not required, as C LZ4 may change).
func TestSameAsLZ4CLI(t *testing.T) {
	lz4cmd := testenv.NeedCommand(t, "lz4")
	data := benchText()[:4<<20]
	p := filepath.Join(t.TempDir(), "text")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	frame, err := exec.Command(lz4cmd, "-1", "-B1048576", "-BI", "--no-frame-crc", "-c", p).Output()
	if err != nil {
		t.Fatalf("lz4 -1: %v", err)
	}
	// Frame: magic, FLG, BD, HC, then blocks (4-byte size, high bit =
	// stored raw), end mark.
	i := 7
	var s State
	theirs, ours, identical := 0, 0, true
	for off := 0; off < len(data); off += 1 << 20 {
		size := binary.LittleEndian.Uint32(frame[i:])
		blk := frame[i+4 : i+4+int(size&^(1<<31))]
		i += 4 + len(blk)
		mine, ok := Compress(nil, data[off:off+1<<20], &s)
		if !ok {
			mine = data[off : off+1<<20]
		}
		theirs += len(blk)
		ours += len(mine)
		identical = identical && bytes.Equal(mine, blk)
	}
	t.Logf("4 MiB of text: lz4 -1 %d bytes, lz4block %d bytes, byte-identical blocks: %v", theirs, ours, identical)
	if d := ours - theirs; d*50 > theirs {
		t.Errorf("lz4block output %d bytes, more than 2%% over lz4 -1's %d", ours, theirs)
	}
}
