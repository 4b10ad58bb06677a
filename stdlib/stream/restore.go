package stream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/bkrun/bkrun/stdlib/disk"
	"golang.org/x/sys/unix"
)

// ErrCorrupt marks a backup whose decoded bytes do not match its catalogue.
var ErrCorrupt = errors.New("backup is corrupt")

// RestoreOptions tune Restore.
type RestoreOptions struct {
	Overwrite bool // replace an existing target file (a device is always written in place)
	Progress  func(done int64)
}

// decode reads image through its codec, checks it against the catalogue
// entry block by block, and hands each block to fn. It fails on a corrupt
// or truncated stream, on a size or hash mismatch.
func decode(ctx context.Context, image string, meta *Meta, fn func(block []byte, zero bool) error, progress func(int64)) (*Meta, Stats, error) {
	st := Stats{Start: time.Now()}
	f, err := os.Open(image)
	if err != nil {
		return nil, st, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, st, err
	}
	if fi.Size() != meta.BytesWritten {
		return meta, st, fmt.Errorf("%s: %w: the file is %d bytes, its catalogue entry says %d (truncated, or not the image the entry describes)", image, ErrCorrupt, fi.Size(), meta.BytesWritten)
	}
	st.Codec = meta.Codec
	if meta.Codec == "lz4" {
		// The lz4 reader treats a frame cut right before its end mark as
		// complete; a backup must not pass for whole when it was cut.
		var tail [4]byte
		if _, err := f.ReadAt(tail[:], fi.Size()-4); err != nil || tail != [4]byte{} {
			return meta, st, fmt.Errorf("%s: %w: truncated: the lz4 frame has no end mark", image, ErrCorrupt)
		}
	}
	dec, err := NewDecoder(meta.Codec, bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		return meta, st, err
	}
	defer dec.Close()
	tree := NewTreeHash()
	buf := disk.AlignedBuffer(BlockSize)
	for {
		if err := ctx.Err(); err != nil {
			return meta, st, context.Cause(ctx)
		}
		n, rerr := io.ReadFull(dec, buf)
		if n > 0 {
			if st.Size+int64(n) > meta.Size {
				return meta, st, fmt.Errorf("%s: %w: decodes to more than the %d bytes in its catalogue entry", image, ErrCorrupt, meta.Size)
			}
			block := buf[:n]
			zero := disk.IsZero(block)
			if zero && n == BlockSize {
				tree.Add(zeroLeaf())
			} else {
				tree.Add(Leaf(block))
			}
			if err := fn(block, zero); err != nil {
				return meta, st, err
			}
			st.Size += int64(n)
			if zero {
				st.ZeroBytes += int64(n)
			}
			if progress != nil {
				progress(st.Size)
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return meta, st, fmt.Errorf("%s: %w: %s stream: %v", image, ErrCorrupt, meta.Codec, rerr)
		}
	}
	if st.Size != meta.Size {
		return meta, st, fmt.Errorf("%s: %w: truncated: decodes to %d bytes, its catalogue entry says %d", image, ErrCorrupt, st.Size, meta.Size)
	}
	st.Hash = tree.Sum()
	if st.Hash != meta.Hash {
		return meta, st, fmt.Errorf("%s: %w: hash mismatch: %s %s, catalogue entry says %s", image, ErrCorrupt, HashAlgo, st.Hash, meta.Hash)
	}
	st.End = time.Now()
	return meta, st, nil
}

// LoadMeta reads the catalogue entry of an image.
func LoadMeta(image string) (*Meta, error) {
	meta, err := ReadMeta(MetaPath(image))
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(image); serr != nil {
			return nil, serr
		}
		return nil, fmt.Errorf("%s: no catalogue entry %s: cannot verify the backup", image, MetaPath(image))
	}
	return meta, err
}

// Verify decodes a backup and checks it against its catalogue entry.
func Verify(ctx context.Context, image string, progress func(int64)) (*Meta, Stats, error) {
	meta, err := LoadMeta(image)
	if err != nil {
		return nil, Stats{}, err
	}
	return VerifyAgainst(ctx, image, meta, progress)
}

// VerifyAgainst decodes image and checks it against meta (used before a
// new backup is renamed into place, when its entry is not yet written).
func VerifyAgainst(ctx context.Context, image string, meta *Meta, progress func(int64)) (*Meta, Stats, error) {
	return decode(ctx, image, meta, func([]byte, bool) error { return nil }, progress)
}

// Restore decodes a backup onto target, verifying it against its catalogue
// entry. A file target is written under a temporary name (sparse: zero
// blocks become holes) and renamed only after verification, so it is never
// left half-written; a block device is written in place and synced.
func Restore(ctx context.Context, image, target string, o RestoreOptions) (Stats, error) {
	tst, err := os.Stat(target)
	device := false
	switch {
	case err == nil && tst.Mode()&fs.ModeDevice != 0 && tst.Mode()&fs.ModeCharDevice == 0:
		device = true
	case err == nil && tst.IsDir():
		return Stats{}, fmt.Errorf("%s: is a directory (give the path of the file or device to restore to)", target)
	case err == nil && !tst.Mode().IsRegular():
		return Stats{}, fmt.Errorf("%s: not a regular file or block device", target)
	case err == nil && !o.Overwrite:
		return Stats{}, fmt.Errorf("%s: already exists (overwrite=true replaces it once the restored image is verified)", target)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return Stats{}, err
	}
	meta, err := LoadMeta(image)
	if err != nil {
		return Stats{}, err
	}
	if device {
		return restoreDevice(ctx, image, meta, target, o)
	}
	sink, err := CreateFile(target, true)
	if err != nil {
		return Stats{}, err
	}
	defer sink.Abort()
	var off int64
	_, st, err := decode(ctx, image, meta, func(block []byte, zero bool) error {
		if !zero {
			if _, err := sink.f.WriteAt(block, off); err != nil {
				return fmt.Errorf("writing %s: %w", target, err)
			}
		}
		off += int64(len(block))
		return nil
	}, o.Progress)
	if err != nil {
		return st, err
	}
	// Trailing zero blocks were skipped: the size comes from truncate.
	if err := sink.f.Truncate(off); err != nil {
		return st, fmt.Errorf("writing %s: %w", target, err)
	}
	if err := sink.Commit(nil); err != nil {
		return st, fmt.Errorf("writing %s: %w", target, err)
	}
	return st, nil
}

func restoreDevice(ctx context.Context, image string, meta *Meta, target string, o RestoreOptions) (Stats, error) {
	f, err := os.OpenFile(target, os.O_WRONLY|unix.O_EXCL, 0)
	if err != nil {
		return Stats{}, fmt.Errorf("%s: %w", target, err)
	}
	defer f.Close()
	if size, err := f.Seek(0, io.SeekEnd); err == nil && size < meta.Size {
		return Stats{}, fmt.Errorf("%s: device is %d bytes, the image needs %d", target, size, meta.Size)
	}
	var off int64
	_, st, err := decode(ctx, image, meta, func(block []byte, zero bool) error {
		// A device keeps whatever it held before: zeros must be written.
		if _, err := f.WriteAt(block, off); err != nil {
			return fmt.Errorf("writing %s: %w", target, err)
		}
		off += int64(len(block))
		return nil
	}, o.Progress)
	if err != nil {
		return st, err
	}
	if err := f.Sync(); err != nil {
		return st, fmt.Errorf("syncing %s: %w", target, err)
	}
	return st, nil
}
