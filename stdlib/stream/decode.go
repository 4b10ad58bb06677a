package stream

import "context"

// Decode reads a backup through its codec and checks it against meta as
// Restore does (size, BLAKE3 tree hash, lz4 end mark), handing each decoded
// block to fn in order; zero reports an all-zero block. It is for callers
// that feed the bytes to something other than a file (recover pipes a
// dump archive into restore(8)). The check of the whole stream ends only
// after the last block was handed over: a caller must treat what fn
// received as unverified until Decode returns nil.
func Decode(ctx context.Context, image string, meta *Meta, fn func(block []byte, zero bool) error, progress func(int64)) (Stats, error) {
	_, st, err := decode(ctx, image, meta, fn, progress)
	return st, err
}
