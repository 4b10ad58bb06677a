package stream

import (
	"encoding/hex"
	"sync"

	"github.com/zeebo/blake3"
)

// HashAlgo names the image hash recorded in the catalogue.
//
// The hash of an image is a two-level BLAKE3 tree over 1 MiB blocks:
//
//	leaf_i = BLAKE3-256(block_i)            blocks of BlockSize bytes, the last one shorter
//	hash   = BLAKE3-256(leaf_0 || leaf_1 || ...)
//
// Leaves are computed in parallel with compression, and the leaf of an
// all-zero block is a constant, so hashing costs nothing on zeroed space
// and scales with cores — a plain BLAKE3 of the stream would be one
// sequential pass over every byte. It is reproducible with standard tools:
//
//	lz4 -dc IMAGE.lz4 | split -b 1M --filter='b3sum --no-names' | xxd -r -p | b3sum --no-names
const HashAlgo = "blake3-tree-1MiB"

// zeroLeaf is the leaf hash of a full zero block, computed on first use
// (not at start-up: bkrun -e ” must stay fast).
var zeroLeaf = sync.OnceValue(func() [32]byte { return blake3.Sum256(zeroBlock) })

// Leaf hashes one block.
func Leaf(block []byte) [32]byte { return blake3.Sum256(block) }

// TreeHash accumulates leaves in order.
type TreeHash struct{ h *blake3.Hasher }

// NewTreeHash starts an image hash.
func NewTreeHash() *TreeHash { return &TreeHash{h: blake3.New()} }

// Add appends the next leaf.
func (t *TreeHash) Add(leaf [32]byte) { t.h.Write(leaf[:]) }

// Sum returns the hex hash of the leaves added so far.
func (t *TreeHash) Sum() string { return hex.EncodeToString(t.h.Sum(nil)) }
