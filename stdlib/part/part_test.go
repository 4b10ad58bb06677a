package part

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bkrun/bkrun/internal/testenv"
)

const MiB = 1 << 20

// mbrScript: 2 primaries, an extended partition holding 3 logicals.
const mbrScript = `label: dos
label-id: 0x1badcafe
start=2048, size=8192, type=83, bootable
start=10240, size=8192, type=82
start=18432, size=40960, type=5
start=20480, size=8192, type=83
start=30720, size=8192, type=8e
start=40960, size=8192, type=83
`

// gptScript: 3 named partitions.
const gptScript = `label: gpt
label-id: 01234567-89AB-CDEF-0123-456789ABCDEF
start=2048, size=8192, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root", uuid=11111111-2222-3333-4444-555555555555
start=10240, size=4096, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name="swap space"
start=14336, size=16384, type=E6D6D379-F507-44C2-A23C-238F2A3DF928, name="données", attrs="LegacyBIOSBootable"
`

// makeImage writes a sparse image of size bytes partitioned by sfdisk
// with script (fed on stdin).
func makeImage(t testing.TB, dir, name string, size int64, script string) string {
	t.Helper()
	testenv.NeedCommand(t, "sfdisk")
	img := filepath.Join(dir, name)
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "never", img)
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk %s: %v\n%s", name, err, out)
	}
	return img
}

func mbrImage(t testing.TB, dir string) string {
	return makeImage(t, dir, "mbr.img", 32*MiB, mbrScript)
}

func gptImage(t testing.TB, dir string) string {
	return makeImage(t, dir, "gpt.img", 16*MiB, gptScript)
}

func readBytes(t *testing.T, b []byte) (*Table, error) {
	t.Helper()
	return Read(bytes.NewReader(b), int64(len(b)))
}

func load(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type sfdiskJSON struct {
	PartitionTable struct {
		Label      string `json:"label"`
		ID         string `json:"id"`
		SectorSize int64  `json:"sectorsize"`
		Partitions []struct {
			Node     string `json:"node"`
			Start    int64  `json:"start"`
			Size     int64  `json:"size"`
			Type     string `json:"type"`
			UUID     string `json:"uuid"`
			Name     string `json:"name"`
			Bootable bool   `json:"bootable"`
			Attrs    string `json:"attrs"`
		} `json:"partitions"`
	} `json:"partitiontable"`
}

var trailingDigits = regexp.MustCompile(`(\d+)$`)

// crossCheck compares ReadFile against sfdisk --json field by field.
func crossCheck(t *testing.T, img string) *Table {
	t.Helper()
	out, err := exec.Command("sfdisk", "--json", img).Output()
	if err != nil {
		t.Fatalf("sfdisk --json: %v", err)
	}
	var sj sfdiskJSON
	if err := json.Unmarshal(out, &sj); err != nil {
		t.Fatalf("sfdisk --json: %v\n%s", err, out)
	}
	tab, err := ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	st := sj.PartitionTable
	kind := map[string]string{"dos": "mbr", "gpt": "gpt"}[st.Label]
	if tab.Kind != kind || !strings.EqualFold(tab.DiskGUID, st.ID) || tab.SectorSize != st.SectorSize {
		t.Errorf("table: got kind %s id %s sector %d; sfdisk says %s %s %d", tab.Kind, tab.DiskGUID, tab.SectorSize, st.Label, st.ID, st.SectorSize)
	}
	n := 0
	for _, sp := range st.Partitions {
		if kind == "mbr" && (sp.Type == "5" || sp.Type == "f" || sp.Type == "85") {
			if tab.Extended == nil || tab.Extended.Start != sp.Start*512 || tab.Extended.Size != sp.Size*512 {
				t.Errorf("extended: got %+v, sfdisk %+v", tab.Extended, sp)
			}
			continue
		}
		n++
		idx, _ := strconv.Atoi(trailingDigits.FindString(sp.Node))
		p, ok := tab.Lookup(idx)
		if !ok {
			t.Errorf("partition %d (%s) missing; have %s", idx, sp.Node, tab.Indexes())
			continue
		}
		wantType := sp.Type
		if kind == "mbr" {
			v, _ := strconv.ParseUint(sp.Type, 16, 8)
			wantType = fmt.Sprintf("0x%02x", v)
		}
		wantBoot := sp.Bootable || strings.Contains(sp.Attrs, "LegacyBIOSBootable")
		if p.Start != sp.Start*st.SectorSize || p.Size != sp.Size*st.SectorSize || p.Type != wantType ||
			p.UUID != sp.UUID || p.Name != sp.Name || p.Bootable != wantBoot {
			t.Errorf("partition %d:\n got   start=%d size=%d type=%s uuid=%s name=%q boot=%v\n sfdisk start=%d size=%d type=%s uuid=%s name=%q boot=%v",
				idx, p.Start, p.Size, p.Type, p.UUID, p.Name, p.Bootable,
				sp.Start*st.SectorSize, sp.Size*st.SectorSize, wantType, sp.UUID, sp.Name, wantBoot)
		}
	}
	if n != len(tab.Partitions) {
		t.Errorf("%d partitions, sfdisk lists %d data partitions", len(tab.Partitions), n)
	}
	if len(tab.Warnings) != 0 {
		t.Errorf("warnings on a clean image: %q", tab.Warnings)
	}
	return tab
}

func TestMBRAgainstSfdisk(t *testing.T) {
	tab := crossCheck(t, mbrImage(t, t.TempDir()))
	var idx []int
	var names []string
	for _, p := range tab.Partitions {
		idx = append(idx, p.Index)
		names = append(names, p.TypeName)
	}
	if got := fmt.Sprint(idx, names); got != "[1 2 5 6 7] [linux swap linux lvm linux]" {
		t.Errorf("got %s", got)
	}
	if tab.DiskGUID != "0x1badcafe" || !tab.Partitions[0].Bootable || tab.Partitions[1].Bootable {
		t.Errorf("id %s, boot flags %+v", tab.DiskGUID, tab.Partitions)
	}
	// EBRs packed right after one another (the fuzz seed's layout).
	if tab := crossCheck(t, makeImage(t, t.TempDir(), "small.img", 96*1024, smallMBRScript)); len(tab.Partitions) != 4 {
		t.Errorf("small image: %+v", tab.Partitions)
	}
}

func TestGPTAgainstSfdisk(t *testing.T) {
	tab := crossCheck(t, gptImage(t, t.TempDir()))
	got := fmt.Sprintf("%s %s %s %q %s", tab.Partitions[0].TypeName, tab.Partitions[1].TypeName, tab.Partitions[2].TypeName,
		tab.Partitions[2].Name, tab.Partitions[0].UUID)
	if want := `linux swap lvm "données" 11111111-2222-3333-4444-555555555555`; got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if tab.DiskGUID != "01234567-89AB-CDEF-0123-456789ABCDEF" || !tab.Partitions[2].Bootable {
		t.Errorf("disk guid %s, %+v", tab.DiskGUID, tab.Partitions[2])
	}
}

// TestGPT4096 moves a 512-byte-sector GPT to 4096-byte sectors by hand:
// the header must be found at byte 4096.
func TestGPT4096(t *testing.T) {
	b := load(t, gptImage(t, t.TempDir()))
	size := int64(len(b))
	out := make([]byte, size)
	copy(out, b[:512]) // protective MBR
	le := binary.LittleEndian
	sectors := size / 4096
	hdr := func(lba, alt, entries int64) []byte {
		h := make([]byte, 4096)
		copy(h, b[512:512+92])
		le.PutUint64(h[24:], uint64(lba))
		le.PutUint64(h[32:], uint64(alt))
		le.PutUint64(h[40:], 6)
		le.PutUint64(h[48:], uint64(sectors-7))
		le.PutUint64(h[72:], uint64(entries))
		clear(h[16:20])
		le.PutUint32(h[16:], crcOf(h[:92]))
		return h
	}
	arr := make([]byte, 128*128)
	copy(arr, b[1024:1024+128*128])
	for i := 0; i < 3; i++ { // LBA values: 512-byte sectors / 8
		e := arr[i*128:]
		le.PutUint64(e[32:], le.Uint64(e[32:])/8)
		le.PutUint64(e[40:], (le.Uint64(e[40:])+1)/8-1)
	}
	h := hdr(1, sectors-1, 2)
	le.PutUint32(h[88:], crcOf(arr))
	clear(h[16:20])
	le.PutUint32(h[16:], crcOf(h[:92]))
	copy(out[4096:], h)
	copy(out[2*4096:], arr)
	tab, err := readBytes(t, out)
	if err != nil {
		t.Fatal(err)
	}
	if tab.SectorSize != 4096 || len(tab.Partitions) != 3 || tab.Partitions[0].Start != 2048*512 || tab.Partitions[2].Size != 16384*512 {
		t.Errorf("got %+v", tab)
	}
	// No backup header was written: that is a warning, not an error.
	if len(tab.Warnings) != 1 || !strings.Contains(tab.Warnings[0], "backup GPT header") {
		t.Errorf("warnings %q", tab.Warnings)
	}
}

func TestCorrupt(t *testing.T) {
	dir := t.TempDir()
	mbr := load(t, mbrImage(t, dir))
	gpt := load(t, gptImage(t, dir))
	good, err := readBytes(t, gpt)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	mod := func(b []byte, f func(b []byte)) []byte {
		c := bytes.Clone(b)
		f(c)
		return c
	}
	lastLBA := int64(len(gpt))/512 - 1

	for _, tc := range []struct {
		name string
		img  []byte
		err  string // "" means it must parse, then warn contains warn
		warn string
	}{
		{"tiny", mbr[:300], "disk is too small for a partition table (300 bytes", ""},
		{"no signature", make([]byte, 4096), "no partition table (no 0x55AA signature", ""},
		{"truncated mbr", mbr[:20*MiB], "MBR partition 3 ends beyond the disk (sectors 18432-59391 end at byte 30408704, the disk has 20971520 bytes)", ""},
		{"truncated gpt", gpt[:8*MiB], "GPT partition 3 ends beyond the disk", ""},
		{"truncated gpt in the entries", gpt[:3000], "", ""},
		{"gpt header crc", mod(gpt, func(b []byte) { b[512+16] ^= 0xff }), "",
			"using the backup GPT header at the last LBA: primary GPT header (LBA 1): GPT header CRC mismatch"},
		{"gpt entry crc", mod(gpt, func(b []byte) { b[1024+56] ^= 1 }), "",
			"primary GPT header (LBA 1): GPT partition entry array CRC mismatch"},
		{"gpt backup broken", mod(gpt, func(b []byte) { b[lastLBA*512+20] ^= 1 }), "",
			fmt.Sprintf("backup GPT header (LBA %d) is damaged or missing: GPT header CRC mismatch", lastLBA)},
		{"gpt both headers", mod(gpt, func(b []byte) { b[512+16] ^= 0xff; b[lastLBA*512+16] ^= 0xff }),
			fmt.Sprintf("part: protective MBR (type 0xEE) but no valid GPT: primary GPT header (LBA 1): GPT header CRC mismatch (stored 0x%08x", le.Uint32(gpt[512+16:])^0xff), ""},
		{"gpt no signatures", mod(gpt, func(b []byte) { b[512] = 'X'; b[lastLBA*512] = 'X' }),
			"primary GPT header (LBA 1): no GPT signature \"EFI PART\"; backup GPT header (LBA 32767): no GPT signature", ""},
		{"ebr loop", mod(mbr, func(b []byte) {
			// the first EBR (sector 18432) links to itself: start 0 relative to the extended partition
			le.PutUint32(b[18432*512+446+16+8:], 0)
		}), "the extended partition's chain of boot records loops back to the EBR at sector 18432", ""},
		{"ebr loop later", mod(mbr, func(b []byte) {
			// the third EBR links back to the second
			b[38912*512+446+16+4] = 5
			le.PutUint32(b[38912*512+446+16+8:], 28672-18432)
			le.PutUint32(b[38912*512+446+16+12:], 100)
		}), "loops back to the EBR at sector 28672", ""},
		{"ebr no signature", mod(mbr, func(b []byte) { b[28672*512+510] = 0 }),
			"EBR at sector 28672 has no 0x55AA signature (found 0x00AA): the extended partition's chain is broken", ""},
		{"ebr outside extended", mod(mbr, func(b []byte) { le.PutUint32(b[18432*512+446+16+8:], 50000) }),
			"EBR at sector 68432 lies outside the extended partition (sectors 18432-59391)", ""},
		{"logical beyond disk", mod(mbr, func(b []byte) { le.PutUint32(b[28672*512+446+12:], 1<<30) }),
			"logical partition 6 (EBR at sector 28672) ends beyond the disk", ""},
		{"primary beyond disk", mod(mbr, func(b []byte) { le.PutUint32(b[446+16+12:], 0xffffffff) }),
			"part: MBR partition 2 ends beyond the disk (sectors 10240-4294977534", ""},
		{"primary at sector 0", mod(mbr, func(b []byte) { le.PutUint32(b[446+8:], 0) }),
			"part: MBR partition 1 starts at sector 0, on top of the MBR", ""},
		{"two extended", mod(mbr, func(b []byte) { b[446+16+4] = 0x0f }),
			"MBR partitions 2 and 3 are both extended partitions", ""},
		{"gpt entries beyond disk", mod(gpt, func(b []byte) {
			le.PutUint64(b[512+72:], 1<<40)
			fixHeader(b[512:])
			b[lastLBA*512+16] ^= 1
		}), "GPT partition entries at LBA 1099511627776 lie beyond the disk", ""},
		{"gpt huge entry count", mod(gpt, func(b []byte) {
			le.PutUint32(b[512+80:], 1<<31)
			fixHeader(b[512:])
			b[lastLBA*512+16] ^= 1
		}), "GPT header claims 2147483648 partition entries of 128 bytes", ""},
		{"gpt partition reversed", mod(gpt, func(b []byte) {
			le.PutUint64(b[1024+128+40:], 5)
			fixEntries(b, 512, 1024)
			fixEntries(b, lastLBA*512, (lastLBA-32)*512)
		}), "GPT partition 2 ends (LBA 5) before it starts (LBA 10240)", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab, err := readBytes(t, tc.img)
			switch {
			case tc.name == "truncated gpt in the entries":
				if err == nil || !strings.Contains(err.Error(), "no valid GPT") {
					t.Errorf("err %v", err)
				}
			case tc.err != "":
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("error\n got  %v\n want …%s…", err, tc.err)
				}
				if err != nil && !strings.HasPrefix(err.Error(), "part: ") {
					t.Errorf("error does not start with part: %v", err)
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				if fmt.Sprint(tab.Partitions) != fmt.Sprint(good.Partitions) {
					t.Errorf("partitions differ:\n%+v\n%+v", tab.Partitions, good.Partitions)
				}
				if w := strings.Join(tab.Warnings, "\n"); !strings.Contains(w, tc.warn) || w == "" {
					t.Errorf("warnings\n got  %s\n want …%s…", w, tc.warn)
				}
			}
		})
	}
}

func crcOf(b []byte) uint32 {
	return crc32.ChecksumIEEE(b)
}

// fixHeader recomputes the CRC of a GPT header after an edit.
func fixHeader(h []byte) {
	clear(h[16:20])
	binary.LittleEndian.PutUint32(h[16:], crcOf(h[:92]))
}

// fixEntries recomputes the entry array CRC of the header at hdr (array at arr).
func fixEntries(b []byte, hdr, arr int64) {
	binary.LittleEndian.PutUint32(b[hdr+88:], crcOf(b[arr:arr+128*128]))
	fixHeader(b[hdr:])
}

// TestAttach makes an ext4 file system in a partition through a writable
// attach, then attaches it read-only and checks the tools see it.
func TestAttach(t *testing.T) {
	testenv.NeedRoot(t)
	for _, c := range []string{"losetup", "mkfs.ext4", "blkid", "dumpe2fs"} {
		testenv.NeedCommand(t, c)
	}
	img := gptImage(t, t.TempDir())
	tab, err := ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := tab.Lookup(3)
	ctx := context.Background()

	dev, detach, err := AttachWith(ctx, img, p, AttachOptions{Writable: true})
	testenv.Need(t, err == nil, fmt.Sprintf("a free loop device: %v", err))
	defer detach()
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "bkrun-part", dev).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 %s: %v\n%s", dev, err, out)
	}
	if err := detach(); err != nil {
		t.Fatal(err)
	}
	if err := detach(); err != nil { // twice is harmless
		t.Fatal(err)
	}

	dev, detach, err = Attach(ctx, img, p)
	if err != nil {
		t.Fatal(err)
	}
	defer detach()
	if ro, err := os.ReadFile("/sys/block/" + filepath.Base(dev) + "/ro"); err != nil || strings.TrimSpace(string(ro)) != "1" {
		t.Errorf("%s: ro=%q %v, want read-only", dev, ro, err)
	}
	if out, err := exec.Command("blkid", "-p", "-o", "export", dev).Output(); err != nil || !strings.Contains(string(out), "TYPE=ext4") || !strings.Contains(string(out), "LABEL=bkrun-part") {
		t.Errorf("blkid %s: %v\n%s", dev, err, out)
	}
	out, err := exec.Command("dumpe2fs", "-h", dev).CombinedOutput()
	if err != nil || !regexp.MustCompile(`Block count:\s+2048\b`).Match(out) {
		t.Errorf("dumpe2fs -h %s: %v\n%s", dev, err, out)
	}
	if err := detach(); err != nil {
		t.Fatal(err)
	}
	assertNoLoop(t, img)

	// A failing losetup is an error naming the command.
	if _, _, err := Attach(ctx, filepath.Join(t.TempDir(), "missing.img"), p); err == nil || !strings.Contains(err.Error(), "part.attach: ") || !strings.Contains(err.Error(), "losetup exited") {
		t.Errorf("attach of a missing image: %v", err)
	}
}

// assertNoLoop fails unless no loop device is backed by img.
func assertNoLoop(t *testing.T, img string) {
	t.Helper()
	var out []byte
	for i := 0; i < 50; i++ {
		var err error
		out, err = exec.Command("losetup", "-a").Output()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), img) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("loop device left behind for %s:\n%s", img, out)
}
