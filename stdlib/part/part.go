// Package part reads MBR and GPT partition tables natively and exposes a
// partition as a byte range of its disk or as a read-only loop device: the
// kpartx replacement of the xen-backup flow (seed 003).
//
// The parser never trusts the table: every offset, size and count is checked
// against the disk before use, GPT headers and entry arrays are checked with
// their CRC32s, and a cyclic chain of extended boot records is refused.
// Malformed input gives an error naming what is wrong, never a panic.
package part

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"unicode/utf16"
)

// SectorSize is the logical sector size assumed for MBR tables. GPT is
// looked for with 512-byte sectors first, then with 4096-byte sectors.
const SectorSize = 512

// Limits that keep a hostile table from making the parser allocate or loop
// without bound.
const (
	maxEntryArray = 4 << 20 // bytes of GPT partition entries
	maxLogical    = 256     // logical partitions in an extended chain
)

// Table is a parsed partition table.
type Table struct {
	Kind string // "gpt" or "mbr"
	// DiskGUID identifies the disk: the GPT disk GUID, or for MBR the
	// 32-bit disk signature as "0x1234abcd" (what sfdisk calls the id).
	DiskGUID   string
	SectorSize int64 // bytes per logical sector the table is written in
	// Partitions are the data partitions in index order. An MBR extended
	// partition is a container, not data: it is in Extended, not here.
	Partitions []Partition
	Extended   *Partition
	// Warnings name problems that were worked around, such as a damaged
	// primary GPT header replaced by the backup.
	Warnings []string
}

// Partition is one partition. Start and Size are in bytes.
type Partition struct {
	Index int // 1-based: GPT entry number; MBR slot 1-4, logical from 5
	Start int64
	Size  int64
	// Type is "0x83" for MBR, the type GUID (upper case) for GPT.
	Type string
	// TypeName is a friendly name for common types ("linux", "swap",
	// "lvm", "efi", "bios-boot", "microsoft-basic-data", ...), else "".
	TypeName string
	Name     string // GPT partition name
	UUID     string // GPT unique partition GUID
	Bootable bool   // MBR boot flag 0x80; GPT attribute bit 2 (legacy BIOS bootable)
}

// End is the byte offset just past the partition.
func (p Partition) End() int64 { return p.Start + p.Size }

// Lookup returns the partition with index i.
func (t *Table) Lookup(i int) (Partition, bool) {
	for _, p := range t.Partitions {
		if p.Index == i {
			return p, true
		}
	}
	return Partition{}, false
}

// Indexes lists the partition indexes, for error messages.
func (t *Table) Indexes() string {
	var s []string
	for _, p := range t.Partitions {
		s = append(s, fmt.Sprint(p.Index))
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

var gptTypes = map[string]string{
	"0FC63DAF-8483-4772-8E79-3D69D8477DE4": "linux",
	"0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "swap",
	"E6D6D379-F507-44C2-A23C-238F2A3DF928": "lvm",
	"C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "efi",
	"21686148-6449-6E6F-744E-656564454649": "bios-boot",
	"EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "microsoft-basic-data",
	"A19D880F-05FC-4D3B-A006-743F0F84911E": "linux-raid",
	"933AC7E1-2EB4-4F13-B844-0E14E2AEF915": "linux-home",
	"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "linux-root-x86-64",
	"BC13C2FF-59E6-4262-A352-B275FD6F7172": "linux-extended-boot",
	"E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "microsoft-reserved",
}

var mbrTypes = map[byte]string{
	0x01: "fat12", 0x04: "fat16", 0x06: "fat16", 0x07: "ntfs", 0x0b: "fat32", 0x0c: "fat32",
	0x0e: "fat16", 0x82: "swap", 0x83: "linux", 0x8e: "lvm", 0xef: "efi", 0xfd: "linux-raid",
}

func isExtended(t byte) bool { return t == 0x05 || t == 0x0f || t == 0x85 }

// Read parses the partition table of a disk of size bytes read through r.
func Read(r io.ReaderAt, size int64) (*Table, error) {
	if size < SectorSize {
		return nil, fmt.Errorf("part: disk is too small for a partition table (%d bytes, the MBR alone is %d)", size, SectorSize)
	}
	d := &tableReader{r: r, size: size}
	mbr, err := d.read(0, SectorSize, "MBR")
	if err != nil {
		return nil, err
	}
	if mbr[510] != 0x55 || mbr[511] != 0xaa {
		return nil, fmt.Errorf("part: no partition table (no 0x55AA signature at byte 510 of the MBR, found 0x%02X%02X)", mbr[510], mbr[511])
	}
	for i := 0; i < 4; i++ {
		if mbr[446+16*i+4] == 0xee {
			return d.gpt()
		}
	}
	return d.mbr(mbr)
}

type tableReader struct {
	r    io.ReaderAt
	size int64
}

// read reads n bytes at off, which the caller has bounds-checked or which
// is checked here.
func (d *tableReader) read(off, n int64, what string) ([]byte, error) {
	if off < 0 || n < 0 || off > d.size || n > d.size-off {
		return nil, fmt.Errorf("part: %s (bytes %d-%d) lies beyond the end of the disk (%d bytes)", what, off, off+n, d.size)
	}
	b := make([]byte, n)
	m, err := d.r.ReadAt(b, off)
	if m == len(b) {
		return b, nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return nil, fmt.Errorf("part: reading %s at byte %d: %w", what, off, err)
}

// ---- MBR ----

type mbrEntry struct {
	boot        byte
	typ         byte
	start, size uint32 // sectors
}

func mbrEntries(sec []byte) [4]mbrEntry {
	var e [4]mbrEntry
	for i := range e {
		b := sec[446+16*i:]
		e[i] = mbrEntry{boot: b[0], typ: b[4], start: binary.LittleEndian.Uint32(b[8:]), size: binary.LittleEndian.Uint32(b[12:])}
	}
	return e
}

func (d *tableReader) mbrPart(what string, index int, lba, sectors int64, e mbrEntry) (Partition, error) {
	p := Partition{
		Index:    index,
		Start:    lba * SectorSize,
		Size:     sectors * SectorSize,
		Type:     fmt.Sprintf("0x%02x", e.typ),
		TypeName: mbrTypes[e.typ],
		Bootable: e.boot&0x80 != 0,
	}
	if isExtended(e.typ) {
		p.TypeName = "extended"
	}
	if lba == 0 {
		return p, fmt.Errorf("part: %s starts at sector 0, on top of the MBR", what)
	}
	if p.End() > d.size {
		return p, fmt.Errorf("part: %s ends beyond the disk (sectors %d-%d end at byte %d, the disk has %d bytes)", what, lba, lba+sectors-1, p.End(), d.size)
	}
	return p, nil
}

func (d *tableReader) mbr(sec []byte) (*Table, error) {
	t := &Table{Kind: "mbr", SectorSize: SectorSize, DiskGUID: fmt.Sprintf("0x%08x", binary.LittleEndian.Uint32(sec[440:]))}
	for i, e := range mbrEntries(sec) {
		if e.typ == 0 || e.size == 0 {
			continue
		}
		if e.boot != 0 && e.boot != 0x80 {
			t.Warnings = append(t.Warnings, fmt.Sprintf("MBR partition %d has an invalid boot flag 0x%02x", i+1, e.boot))
		}
		p, err := d.mbrPart(fmt.Sprintf("MBR partition %d", i+1), i+1, int64(e.start), int64(e.size), e)
		if err != nil {
			return nil, err
		}
		if isExtended(e.typ) {
			if t.Extended != nil {
				return nil, fmt.Errorf("part: MBR partitions %d and %d are both extended partitions", t.Extended.Index, i+1)
			}
			ext := p
			t.Extended = &ext
			continue
		}
		t.Partitions = append(t.Partitions, p)
	}
	if t.Extended != nil {
		if err := d.logicals(t); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// logicals follows the chain of extended boot records. Each EBR holds the
// logical partition (relative to the EBR) and a link to the next EBR
// (relative to the start of the extended partition).
func (d *tableReader) logicals(t *Table) error {
	ext := t.Extended
	extLBA, extEnd := ext.Start/SectorSize, ext.End()/SectorSize
	seen := map[int64]bool{}
	index := 5
	for ebr, n := extLBA, 0; ; n++ {
		if seen[ebr] {
			return fmt.Errorf("part: the extended partition's chain of boot records loops back to the EBR at sector %d", ebr)
		}
		if n >= maxLogical {
			return fmt.Errorf("part: the extended partition's chain has more than %d boot records", maxLogical)
		}
		seen[ebr] = true
		if ebr < extLBA || ebr >= extEnd {
			return fmt.Errorf("part: EBR at sector %d lies outside the extended partition (sectors %d-%d)", ebr, extLBA, extEnd-1)
		}
		what := fmt.Sprintf("EBR at sector %d", ebr)
		sec, err := d.read(ebr*SectorSize, SectorSize, what)
		if err != nil {
			return err
		}
		if sec[510] != 0x55 || sec[511] != 0xaa {
			return fmt.Errorf("part: %s has no 0x55AA signature (found 0x%02X%02X): the extended partition's chain is broken", what, sec[510], sec[511])
		}
		es := mbrEntries(sec)
		if l := es[0]; l.typ != 0 && l.size != 0 {
			if isExtended(l.typ) {
				return fmt.Errorf("part: %s: its first entry is another extended partition (type 0x%02x)", what, l.typ)
			}
			p, err := d.mbrPart(fmt.Sprintf("logical partition %d (%s)", index, what), index, ebr+int64(l.start), int64(l.size), l)
			if err != nil {
				return err
			}
			if p.Start < ext.Start || p.End() > ext.End() {
				t.Warnings = append(t.Warnings, fmt.Sprintf("logical partition %d (bytes %d-%d) extends outside the extended partition (bytes %d-%d)", index, p.Start, p.End(), ext.Start, ext.End()))
			}
			t.Partitions = append(t.Partitions, p)
			index++
		}
		next := es[1]
		if next.typ == 0 || next.size == 0 || !isExtended(next.typ) {
			return nil
		}
		ebr = extLBA + int64(next.start)
	}
}

// ---- GPT ----

type gptHeader struct {
	lba, alternate     int64
	firstUse, lastUse  int64
	diskGUID           string
	entryLBA           int64
	entries, entrySize int64
	entryCRC           uint32
}

func guid(b []byte) string {
	return strings.ToUpper(fmt.Sprintf("%08x-%04x-%04x-%x-%x",
		binary.LittleEndian.Uint32(b[0:]), binary.LittleEndian.Uint16(b[4:]), binary.LittleEndian.Uint16(b[6:]), b[8:10], b[10:16]))
}

var gptSig = []byte("EFI PART")

// header reads and checks the GPT header at lba with sector size ss.
func (d *tableReader) header(lba, ss int64) (*gptHeader, error) {
	sec, err := d.read(lba*ss, ss, fmt.Sprintf("GPT header at LBA %d", lba))
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(sec[:8], gptSig) {
		return nil, errors.New("no GPT signature \"EFI PART\"")
	}
	le := binary.LittleEndian
	hsize := int64(le.Uint32(sec[12:]))
	if hsize < 92 || hsize > ss {
		return nil, fmt.Errorf("GPT header size %d is outside 92-%d", hsize, ss)
	}
	stored := le.Uint32(sec[16:])
	h := make([]byte, hsize)
	copy(h, sec)
	clear(h[16:20])
	if got := crc32.ChecksumIEEE(h); got != stored {
		return nil, fmt.Errorf("GPT header CRC mismatch (stored 0x%08x, computed 0x%08x)", stored, got)
	}
	g := &gptHeader{
		lba:       int64(le.Uint64(sec[24:])),
		alternate: int64(le.Uint64(sec[32:])),
		firstUse:  int64(le.Uint64(sec[40:])),
		lastUse:   int64(le.Uint64(sec[48:])),
		diskGUID:  guid(sec[56:]),
		entryLBA:  int64(le.Uint64(sec[72:])),
		entries:   int64(le.Uint32(sec[80:])),
		entrySize: int64(le.Uint32(sec[84:])),
		entryCRC:  le.Uint32(sec[88:]),
	}
	if g.lba != lba {
		return nil, fmt.Errorf("GPT header at LBA %d says it is at LBA %d", lba, g.lba)
	}
	if g.entrySize < 128 || g.entrySize%8 != 0 || g.entrySize > 4096 {
		return nil, fmt.Errorf("GPT partition entry size %d is invalid (want 128, 256, ...)", g.entrySize)
	}
	if g.entries*g.entrySize > maxEntryArray {
		return nil, fmt.Errorf("GPT header claims %d partition entries of %d bytes, more than %d bytes", g.entries, g.entrySize, maxEntryArray)
	}
	if g.entryLBA < 0 || g.entryLBA > d.size/ss {
		return nil, fmt.Errorf("GPT partition entries at LBA %d lie beyond the disk (%d sectors of %d bytes)", g.entryLBA, d.size/ss, ss)
	}
	return g, nil
}

// array reads the entry array of g and checks its CRC.
func (d *tableReader) array(g *gptHeader, ss int64) ([]byte, error) {
	b, err := d.read(g.entryLBA*ss, g.entries*g.entrySize, fmt.Sprintf("GPT partition entries at LBA %d", g.entryLBA))
	if err != nil {
		return nil, errors.New(strings.TrimPrefix(err.Error(), "part: "))
	}
	if got := crc32.ChecksumIEEE(b); got != g.entryCRC {
		return nil, fmt.Errorf("GPT partition entry array CRC mismatch (stored 0x%08x, computed 0x%08x)", g.entryCRC, got)
	}
	return b, nil
}

// sectorSize guesses the GPT sector size: the one whose primary header,
// else backup header, carries the "EFI PART" signature; 512 if none does.
func (d *tableReader) sectorSize() int64 {
	for _, at := range []func(ss int64) int64{
		func(int64) int64 { return 1 },
		func(ss int64) int64 { return d.size/ss - 1 },
	} {
		for _, ss := range []int64{512, 4096} {
			if d.size/ss < 3 {
				continue
			}
			if b, err := d.read(at(ss)*ss, 8, "GPT signature"); err == nil && bytes.Equal(b, gptSig) {
				return ss
			}
		}
	}
	return 512
}

// gpt finds a valid GPT header and entry array: the primary at LBA 1, else
// the backup at the last LBA.
func (d *tableReader) gpt() (*Table, error) {
	ss := d.sectorSize()
	if d.size/ss < 3 {
		return nil, fmt.Errorf("part: protective MBR (type 0xEE) but the disk is too small for a GPT (%d bytes)", d.size)
	}
	var problems []string
	for _, lba := range []int64{1, d.size/ss - 1} {
		where := "primary"
		if lba != 1 {
			where = "backup"
		}
		g, err := d.header(lba, ss)
		var arr []byte
		if err == nil {
			arr, err = d.array(g, ss)
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s GPT header (LBA %d): %s", where, lba, strings.TrimPrefix(err.Error(), "part: ")))
			continue
		}
		t, err := d.gptTable(g, arr, ss)
		if err != nil {
			return nil, err
		}
		if where == "backup" {
			t.Warnings = append(t.Warnings, "using the backup GPT header at the last LBA: "+strings.Join(problems, "; "))
		} else if _, err := d.header(g.alternate, ss); err != nil {
			t.Warnings = append(t.Warnings, fmt.Sprintf("backup GPT header (LBA %d) is damaged or missing: %s", g.alternate, strings.TrimPrefix(err.Error(), "part: ")))
		}
		return t, nil
	}
	return nil, fmt.Errorf("part: protective MBR (type 0xEE) but no valid GPT: %s", strings.Join(problems, "; "))
}

func (d *tableReader) gptTable(g *gptHeader, arr []byte, ss int64) (*Table, error) {
	t := &Table{Kind: "gpt", DiskGUID: g.diskGUID, SectorSize: ss}
	sectors := d.size / ss
	le := binary.LittleEndian
	var zero [16]byte
	for i := int64(0); i < g.entries; i++ {
		e := arr[i*g.entrySize : (i+1)*g.entrySize]
		if bytes.Equal(e[:16], zero[:]) {
			continue
		}
		first, last := le.Uint64(e[32:]), le.Uint64(e[40:])
		idx := int(i + 1)
		if first > last {
			return nil, fmt.Errorf("part: GPT partition %d ends (LBA %d) before it starts (LBA %d)", idx, last, first)
		}
		if last >= uint64(sectors) {
			return nil, fmt.Errorf("part: GPT partition %d ends beyond the disk (LBA %d-%d, the disk has %d sectors of %d bytes)", idx, first, last, sectors, ss)
		}
		if first == 0 {
			return nil, fmt.Errorf("part: GPT partition %d starts at LBA 0, on top of the protective MBR", idx)
		}
		if int64(first) < g.firstUse || int64(last) > g.lastUse {
			t.Warnings = append(t.Warnings, fmt.Sprintf("GPT partition %d (LBA %d-%d) lies outside the usable area (LBA %d-%d)", idx, first, last, g.firstUse, g.lastUse))
		}
		u16 := make([]uint16, 0, 36)
		for j := 56; j+1 < 128; j += 2 {
			c := le.Uint16(e[j:])
			if c == 0 {
				break
			}
			u16 = append(u16, c)
		}
		typ := guid(e[0:])
		t.Partitions = append(t.Partitions, Partition{
			Index:    idx,
			Start:    int64(first) * ss,
			Size:     int64(last-first+1) * ss,
			Type:     typ,
			TypeName: gptTypes[typ],
			UUID:     guid(e[16:]),
			Name:     string(utf16.Decode(u16)),
			Bootable: le.Uint64(e[48:])&(1<<2) != 0,
		})
	}
	return t, nil
}
