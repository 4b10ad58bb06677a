package part

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"testing"
)

// virtualDisk is a disk of size bytes whose first bytes are head, whose
// last bytes are tail, and zeros in between: a fuzz input stays small
// while its tables can point anywhere on a large disk.
type virtualDisk struct {
	head, tail []byte
	size       int64
}

func (v *virtualDisk) ReadAt(p []byte, off int64) (int, error) {
	if off >= v.size {
		return 0, io.EOF
	}
	n := len(p)
	if int64(n) > v.size-off {
		n = int(v.size - off)
	}
	clear(p[:n])
	if off < int64(len(v.head)) {
		copy(p[:n], v.head[off:])
	}
	if ts := v.size - int64(len(v.tail)); off+int64(n) > ts {
		for i := max(off, ts); i < off+int64(n); i++ {
			p[i-off] = v.tail[i-ts]
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// FuzzRead feeds Read first and last MiBs of disks of any size: it must
// never panic, and what it returns must lie within the disk.
func FuzzRead(f *testing.F) {
	if _, err := exec.LookPath("sfdisk"); err == nil {
		dir := f.TempDir()
		for _, img := range []string{mbrImage(f, dir), gptImage(f, dir),
			makeImage(f, dir, "small.img", 96*1024, smallMBRScript)} {
			b, err := os.ReadFile(img)
			if err != nil {
				f.Fatal(err)
			}
			// The first and last MiB; zeros at the inner ends are
			// dropped (the virtual disk reads zeros there anyway) so
			// that mutations hit the sectors that matter.
			n := min(len(b), MiB)
			f.Add(bytes.TrimRight(b[:n], "\x00"), bytes.TrimLeft(b[len(b)-n:], "\x00"), int64(len(b)))
		}
	}
	mbr := make([]byte, 512)
	mbr[510], mbr[511] = 0x55, 0xaa
	mbr[446+4] = 0xee
	binary.LittleEndian.PutUint32(mbr[446+8:], 1)
	f.Add(mbr, []byte(nil), int64(1<<20))

	f.Fuzz(func(t *testing.T, head, tail []byte, size int64) {
		if size < int64(len(head)+len(tail)) {
			size = int64(len(head) + len(tail))
		}
		if size > 1<<50 {
			size = 1 << 50
		}
		tab, err := Read(&virtualDisk{head: head, tail: tail, size: size}, size)
		if err != nil {
			if tab != nil {
				t.Fatalf("table and error: %v", err)
			}
			return
		}
		seen := map[int]bool{}
		for _, p := range tab.Partitions {
			if p.Start <= 0 || p.Size <= 0 || p.End() > size || p.End() < p.Start {
				t.Fatalf("partition %d out of the disk (%d bytes): %+v", p.Index, size, p)
			}
			if p.Index < 1 || seen[p.Index] {
				t.Fatalf("bad or duplicate index %d", p.Index)
			}
			seen[p.Index] = true
		}
	})
}

// smallMBRScript packs an extended chain into 96 KiB so a fuzz input holds
// every EBR.
const smallMBRScript = `label: dos
start=8, size=24, type=83
start=40, size=140, type=5
start=48, size=20, type=83
start=80, size=20, type=82
start=120, size=40, type=83
`
