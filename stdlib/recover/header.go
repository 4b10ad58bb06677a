package recover

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bkrun/bkrun/stdlib/catalog"
	"github.com/bkrun/bkrun/stdlib/dump"
	"github.com/bkrun/bkrun/stdlib/stream"
)

// DumpHeader is what the first record of a dump(8) archive says about it.
type DumpHeader = dump.Header

var errHeaderRead = errors.New("header read")

// ReadDumpHeader decodes the first record of a dump backup (1024 bytes,
// struct s_spcl of dumprestore.h, little-endian) without reading further.
func ReadDumpHeader(ctx context.Context, b *catalog.Backup) (DumpHeader, error) {
	var rec []byte
	_, err := stream.Decode(ctx, b.Path, b.Meta, func(block []byte, _ bool) error {
		rec = append(rec, block...)
		if len(rec) >= dump.HeaderSize {
			return errHeaderRead
		}
		return nil
	}, nil)
	if err != nil && !errors.Is(err, errHeaderRead) {
		return DumpHeader{}, err
	}
	return dump.ParseHeader(b.Path, rec)
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
