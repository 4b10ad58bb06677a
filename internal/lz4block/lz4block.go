// Package lz4block is a fast LZ4 block compressor: the greedy single-probe
// parser of the reference C LZ4_compress_fast at acceleration 1, written so
// that its hot loop stays in L1 and keeps few bounds checks. It produces the
// LZ4 block format (doc/lz4_Block_format.md of github.com/lz4/lz4) that any
// LZ4 decoder reads; decoding is left to github.com/pierrec/lz4/v4.
//
// It exists because the image backup is CPU-bound on block compression and
// pierrec/lz4's compressor is ~30% slower than C's `lz4 -1` per core: its
// 64 Ki-entry table (256 KiB, outside L1) guarded by an in-use bitmap costs a
// third of its time (docs/PERFORMANCE.md). This one makes the same choices
// as C LZ4, so its output is byte-identical to `lz4 -1 -B1048576`'s blocks
// (about 3% larger than pierrec's), at 1.3-1.7x pierrec's speed.
//
// Bounds checks: the probe loop (search) has none left, nor has any table
// access or candidate probe; the output writes, the literal copy, the
// backward extension, the candidate side of the forward extension and the
// load at the match end keep theirs (one compare each; they never fail). Conditions that always hold are stated
// where that lets the compiler prove a check away for less than the check
// costs. See: go build -gcflags=-d=ssa/check_bce/debug=1.
package lz4block

import (
	"encoding/binary"
	"math/bits"
)

// Format constants (lz4_Block_format.md, "End of block conditions").
const (
	minMatch     = 4
	lastLiterals = 5  // the last 5 bytes of a block are always literals
	mfLimit      = 12 // the last match starts at least 12 bytes before the end
	maxOffset    = 65535
)

// MaxBlockSize is the largest block the lz4 frame format allows (4 MiB).
// Larger inputs are compressed correctly too, up to 2 GiB (positions are
// stored as uint32; Compress declines anything larger), but such blocks
// are not valid in an lz4 frame.
const MaxBlockSize = 4 << 20

const (
	// hashLog: 4 Ki entries of uint32 = 16 KiB, as C LZ4 with its default
	// LZ4_MEMORY_USAGE=14. The table stays in L1 next to the input and
	// output streams; a larger table finds more matches (pierrec's 64 Ki
	// entries: ~3% smaller output) but its cache misses cost more time
	// than the ratio is worth for a backup.
	hashLog   = 12
	tableSize = 1 << hashLog

	// skipTrigger: after 2^skipTrigger probes without a match the search
	// step grows by one byte, and keeps growing, so incompressible stretches
	// are skipped quickly (C LZ4's LZ4_skipTrigger).
	skipTrigger = 6

	// prime5 hashes the low 5 bytes of a little-endian load (C LZ4's
	// LZ4_hash5 on 64-bit): 5 bytes spread text better than 4 in a small
	// table, and one 8-byte load serves both the hash and later compares.
	prime5 = 889523592379
)

// State is the per-goroutine working memory of Compress: the hash table of
// recent positions. The zero value is ready; reuse it across calls to avoid
// allocation. A State must not be used by two goroutines at once.
type State struct {
	table [tableSize]uint32
}

// hash5 maps the low 5 bytes of u to a table index (< tableSize). It
// returns a uint straight from the shift so that the compiler knows the
// range and indexes the table without a mask or a bounds check.
func hash5(u uint64) uint {
	return uint(((u << 24) * prime5) >> (64 - hashLog))
}

// Loads and stores slice [i:i+k] rather than [i:]: the compiler then
// checks i+k against the capacity once, without the pointer masking and
// spilled capacity that an open-ended [i:] costs in the hot loops.
func load32(b []byte, i int) uint32     { return binary.LittleEndian.Uint32(b[i : i+4]) }
func load64(b []byte, i int) uint64     { return binary.LittleEndian.Uint64(b[i : i+8]) }
func store64(b []byte, i int, v uint64) { binary.LittleEndian.PutUint64(b[i:i+8], v) }

// CompressBound is the largest encoding of n bytes (C LZ4's
// LZ4_COMPRESSBOUND). Compress needs that much room after len(dst) to work
// without allocating, even though it declines any encoding that is not
// smaller than n.
func CompressBound(n int) int { return n + n/255 + 16 }

// Compress appends to dst the LZ4 block encoding of src and reports ok.
// When the encoding would not be smaller than src (incompressible data, or
// fewer than 13 bytes, which LZ4 can only store as literals), it returns
// dst unchanged and false, stopping as soon as that is certain: the caller
// stores src raw, as the lz4 frame format does with the high bit of the
// block size.
//
// Compress does not allocate when cap(dst)-len(dst) >= CompressBound(len(src)).
func Compress(dst, src []byte, s *State) (_ []byte, ok bool) {
	n := len(src)
	if n < mfLimit+1 || uint64(n) >= 1<<31 {
		// Fewer than 13 bytes: a token plus the literals, never smaller.
		return dst, false
	}
	start := len(dst)
	if bound := CompressBound(n); cap(dst)-start < bound {
		nd := make([]byte, start, start+bound)
		copy(nd, dst)
		dst = nd
	}
	d := compress(dst[start:start+CompressBound(n)], src, &s.table)
	if d == 0 || d >= n {
		return dst, false
	}
	return dst[:start+d], true
}

// compress encodes src (at least 13 bytes) into out (CompressBound(len(src))
// bytes) and returns the encoding's length, or 0 once the encoding is sure
// to be at least as long as src.
//
// Only the literal runs are checked against the give-up limit: the output
// buffer is the format's worst case, so no write can overflow it, and the
// bounds checks that remain are a safety net that never fails.
func compress(out, src []byte, t *[tableSize]uint32) int {
	// Clearing 16 KiB costs well under a microsecond, nothing next to a
	// block's compression, and an entry of 0 (position 0) is a valid
	// candidate that the 4-byte compare confirms or rejects like any other.
	*t = [tableSize]uint32{}
	// Capacity = length: the [i:i+k] bounds checks compare with the
	// capacity, and one register then serves both.
	src = src[:len(src):len(src)]
	out = out[:len(out):len(out)]

	var (
		d      = 0 // output length
		anchor = 0 // start of the pending literals
		ip     = 1 // position 0 is in the table already (all zeros)
	)
	// A match may not start at or after len(src)-mfLimit+1: the format
	// needs 12 bytes after its start. Every 8-byte load at a position
	// below that stays within src; so do the 8-byte literal copies, which
	// end before the match.
	mflimitPlusOne := len(src) - mfLimit + 1
	cur := load64(src, ip) // the 8 bytes at ip

	for {
		var match int
		ip, match = search(src, t, ip, cur)
		if ip < 0 {
			goto lastLits
		}

		// Extend the match backwards into the pending literals.
		for ip > anchor && match > 0 && src[ip-1] == src[match-1] {
			ip--
			match--
		}

		// Token, literal length and literals. Give up when the output
		// so far, these literals with their length bytes, the token, the
		// offset and the shortest end of block (token + 5 literals)
		// already reach len(src).
		litLen := ip - anchor
		if d+litLen+int(uint(litLen)/255)+(1+2+1+lastLiterals) >= len(src) {
			return 0
		}
		// The token is written once its match length is known too.
		token, tok := d, byte(litLen<<4)
		d++
		if litLen >= 15 {
			tok = 15 << 4
			d = putLength(out, d, litLen-15)
		}
		// Copy the literals 8 bytes at a time, overshooting by up to 7
		// bytes that the following writes overwrite: the check above left
		// room for them in out (offset and end of block), and src extends
		// at least 12 bytes past ip. A loop rather than copy: a call
		// would make the compiler keep every live value on the stack
		// across it, slowing the whole loop.
		for i := 0; i < litLen; i += 8 {
			store64(out, d+i, load64(src, anchor+i))
		}
		d += litLen

		// The match, and any match that starts right where it ends.
		for {
			binary.LittleEndian.PutUint16(out[d:d+2], uint16(ip-match))
			d += 2

			// Extend the match forwards 8 bytes at a time: the lowest
			// differing bit gives the length in the last word. The match
			// ends 5 bytes before the end of the block at the latest.
			// Written out here: as a function it exceeds the inlining
			// budget, and a call spills the loop's state.
			a, b := ip+minMatch, match+minMatch
			for {
				if a > len(src)-lastLiterals-8 || a < 0 {
					for a < len(src)-lastLiterals && src[a] == src[b] {
						a++
						b++
					}
					break
				}
				if x := load64(src, a) ^ load64(src, b); x != 0 {
					a += bits.TrailingZeros64(x) >> 3
					break
				}
				a += 8
				b += 8
			}
			ml := a - ip - minMatch
			ip = a
			if ml >= 15 {
				tok |= 15
				d = putLength(out, d, ml-15)
			} else {
				tok |= byte(ml)
			}
			out[token] = tok
			anchor = ip
			if ip >= mflimitPlusOne {
				goto lastLits
			}

			// Index a position inside the match (ip-2), as C LZ4 does:
			// it is the likeliest start of a later repeat of this text.
			// The same load serves the match end: cur = bytes ip..ip+5.
			v := load64(src, ip-2)
			t[hash5(v)] = uint32(ip - 2)
			cur = v >> 16

			// Test the match end itself: runs of matches (repeated
			// records, long runs) skip the search loop entirely.
			h := hash5(cur)
			match = int(t[h])
			t[h] = uint32(ip)
			// (match < mflimitPlusOne always holds: stating it proves
			// away the bounds check of the load.)
			if match+maxOffset < ip || match >= mflimitPlusOne || load32(src, match) != uint32(cur) {
				break
			}
			token, tok = d, 0
			d++
		}
		// Search on from the next byte: cur>>8 still holds 5 of its bytes,
		// enough for the 5-byte hash and the 4-byte compare that search
		// makes of its first position.
		ip++
		cur >>= 8
	}

lastLits:
	lastRun := len(src) - anchor
	if d+lastRun+1+int(uint(lastRun+240)/255) >= len(src) {
		return 0
	}
	if lastRun >= 15 {
		out[d] = 15 << 4
		d = putLength(out, d+1, lastRun-15)
	} else {
		out[d] = byte(lastRun << 4)
		d++
	}
	d += copy(out[d:], src[anchor:])
	return d
}

// search looks for a 4-byte match from ip on, cur holding the 8 bytes at
// ip, and returns the position and its earlier occurrence, or ip < 0 when
// there is none before the end of the block. It probes one position per
// step; the step grows by one every 2^skipTrigger misses. This is C LZ4's
// loop with its step sequence (1, 1, ..., 2, ...), so the output is
// byte-identical to LZ4_compress_fast's.
//
// It is a function of its own, not inlined, so that its few values stay in
// registers: within compress, the register allocator spills and shuffles
// the output state on every probe.
//
//go:noinline
func search(src []byte, t *[tableSize]uint32, ip int, cur uint64) (int, int) {
	limit := len(src) - mfLimit + 1
	_ = t[0] // one nil check here rather than one per probe
	forwardIP := ip + 1
	searchMatchNb := 1 << skipTrigger
	for {
		// forwardIP >= 0 always holds; stating it lets the compiler drop
		// the bounds checks of the load below.
		if forwardIP > limit || forwardIP < 0 {
			return -1, 0
		}
		next := load64(src, forwardIP)
		h := hash5(cur)
		match := int(t[h])
		t[h] = uint32(ip)
		// Entries are earlier positions, so match < ip. (match+maxOffset
		// rather than ip-match: it keeps ip, saving a register copy.)
		// match <= limit always holds too; it is stated because it is
		// cheaper than the bounds check it proves away.
		if match+maxOffset >= ip && match <= limit && load32(src, match) == uint32(cur) {
			return ip, match
		}
		// The same probe again, unrolled: the roles of cur and next
		// swap instead of values moving between registers every probe.
		ip2 := forwardIP
		forwardIP += searchMatchNb >> skipTrigger
		searchMatchNb++
		if forwardIP > limit || forwardIP < 0 {
			return -1, 0
		}
		cur = load64(src, forwardIP)
		h = hash5(next)
		match = int(t[h])
		t[h] = uint32(ip2)
		if match+maxOffset >= ip2 && match <= limit && load32(src, match) == uint32(next) {
			return ip2, match
		}
		ip = forwardIP
		forwardIP += searchMatchNb >> skipTrigger
		searchMatchNb++
	}
}

// putLength writes the extension bytes of a literal or match length whose
// token nibble is 15: v-... as 255s and a final byte below 255.
func putLength(out []byte, d, v int) int {
	for v >= 255 {
		out[d] = 255
		d++
		v -= 255
	}
	out[d] = byte(v)
	return d + 1
}
