package recover

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/bkrun/bkrun/stdlib/catalog"
	"github.com/bkrun/bkrun/stdlib/stream"
)

// DumpHeader is what the first record of a dump(8) archive says about it.
type DumpHeader struct {
	Level int
	Date  time.Time // when the dump was taken (restore -t: "Dump date")
	Base  time.Time // the -T date it was taken against; zero for a full dump ("Dumped from")
}

// dumpMagic is NFS_MAGIC, the magic number of the new (ext2) dump format.
const dumpMagic = 60012

var errHeaderRead = errors.New("header read")

// ReadDumpHeader decodes the first record of a dump backup (1024 bytes,
// struct s_spcl of dumprestore.h, little-endian) without reading further.
func ReadDumpHeader(ctx context.Context, b *catalog.Backup) (DumpHeader, error) {
	var rec []byte
	_, err := stream.Decode(ctx, b.Path, b.Meta, func(block []byte, _ bool) error {
		rec = append(rec, block...)
		if len(rec) >= 1024 {
			return errHeaderRead
		}
		return nil
	}, nil)
	if err != nil && !errors.Is(err, errHeaderRead) {
		return DumpHeader{}, err
	}
	return parseDumpHeader(b.Path, rec)
}

func parseDumpHeader(path string, rec []byte) (DumpHeader, error) {
	if len(rec) < 1024 {
		return DumpHeader{}, fmt.Errorf("%s: not a dump archive: %d bytes, shorter than a header record", path, len(rec))
	}
	le := binary.LittleEndian
	if magic := int32(le.Uint32(rec[24:])); magic != dumpMagic {
		return DumpHeader{}, fmt.Errorf("%s: not a dump archive (magic %d, want %d)", path, magic, dumpMagic)
	}
	h := DumpHeader{
		Level: int(int32(le.Uint32(rec[692:]))),
		Date:  time.Unix(int64(int32(le.Uint32(rec[4:]))), 0).UTC(),
	}
	if d := int32(le.Uint32(rec[8:])); d != 0 {
		h.Base = time.Unix(int64(d), 0).UTC()
	}
	return h, nil
}

// checkDates checks that each incremental of a chain was taken against the
// very dump below it: restore -r refuses otherwise ("Incremental tape too
// high/low"), after the dumps before it were already written.
func checkDates(ctx context.Context, chain []*catalog.Backup) error {
	var prev DumpHeader
	for i, b := range chain {
		h, err := ReadDumpHeader(ctx, b)
		if err != nil {
			return err
		}
		if i > 0 && !h.Base.Equal(prev.Date) {
			return fmt.Errorf("%s (level %d) was dumped against a dump of %s (dump -T), but the dump below it in the chain, %s (level %d), is dated %s: restore -r refuses such a chain; the -T date of an incremental must be the exact \"Dump date\" of the lower dump",
				b.Path, h.Level, h.Base.Format(time.RFC3339), chain[i-1].Path, prev.Level, prev.Date.Format(time.RFC3339))
		}
		prev = h
	}
	return nil
}
