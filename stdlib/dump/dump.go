// Package dump runs dump(8) for a recipe and reads what a dump archive
// says about itself. A dump stream's first record carries the date the
// dump was taken; an incremental must be taken against exactly that date
// (dump -T) for restore -r to accept the chain, so the date a recipe
// records for the next run is read from the archive, never from a clock.
package dump

import (
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"time"
)

// HeaderSize is the size of the record that opens a dump archive
// (TP_BSIZE, struct s_spcl of dumprestore.h).
const HeaderSize = 1024

// magic is NFS_MAGIC, the magic number of the ext2 dump format.
const magic = 60012

// Header is what the first record of a dump archive says about it.
type Header struct {
	Level int
	Date  time.Time // when the dump was taken (restore -t: "Dump date")
	Base  time.Time // the -T date it was taken against; zero for a full dump ("Dumped from")
}

// ParseHeader reads the first record of a dump archive (little-endian, as
// dump(8) writes it on Linux). name is used in errors.
func ParseHeader(name string, rec []byte) (Header, error) {
	if len(rec) < HeaderSize {
		return Header{}, fmt.Errorf("%s: not a dump archive: %d bytes, shorter than a header record", name, len(rec))
	}
	le := binary.LittleEndian
	if m := int32(le.Uint32(rec[24:])); m != magic {
		return Header{}, fmt.Errorf("%s: not a dump archive (magic %d, want %d)", name, m, magic)
	}
	h := Header{
		Level: int(int32(le.Uint32(rec[692:]))),
		Date:  time.Unix(int64(int32(le.Uint32(rec[4:]))), 0).UTC(),
	}
	if d := int32(le.Uint32(rec[8:])); d != 0 {
		h.Base = time.Unix(int64(d), 0).UTC()
	}
	return h, nil
}

// Command is the dump command line for a level and base: the archive to
// standard output, quiet (no operator questions), and for an incremental
// the -T date of the dump it is taken against. dump parses -T as a ctime
// date in local time; seconds matter (see the package comment).
func Command(device string, level int, base time.Time) []string {
	argv := []string{"dump", fmt.Sprintf("-%d", level), "-q", "-f", "-"}
	if level > 0 && !base.IsZero() {
		argv = append(argv, "-T", base.Local().Format("Mon Jan _2 15:04:05 2006"))
	}
	return append(argv, device)
}

// Source passes a dump archive through (from the dump command's standard
// output) and keeps its first record, so that the archive's own date is
// known once the copy has read it.
type Source struct {
	r    io.Reader
	name string
	mu   sync.Mutex
	head []byte
}

// NewSource wraps r, the archive named name (the command line, for logs
// and catalogue entries).
func NewSource(r io.Reader, name string) *Source { return &Source{r: r, name: name} }

func (s *Source) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.mu.Lock()
		if k := HeaderSize - len(s.head); k > 0 {
			s.head = append(s.head, p[:min(n, k)]...)
		}
		s.mu.Unlock()
	}
	return n, err
}

// Header parses the first record read so far; an error until the copy has
// read it.
func (s *Source) Header() (Header, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return ParseHeader(s.name, s.head)
}

// Path names the source in catalogue entries (the command line).
func (s *Source) Path() string { return s.name }

// Kind is the catalogue's source kind.
func (s *Source) Kind() string { return "dump" }

// Close closes the underlying reader when it can be closed (stopping the
// dump command).
func (s *Source) Close() error {
	if c, ok := s.r.(io.Closer); ok {
		return c.Close()
	}
	return nil
}
