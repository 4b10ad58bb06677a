package main

// End-to-end tests of whole-disk image backup and restore (seed 002):
// the real bkrun binary runs scripts/disk-image.lua and
// scripts/disk-restore.lua on ext4 images made with mkfs.ext4, on loop
// devices, on a full tmpfs, on damaged backups, under SIGINT, and under a
// memory bound.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bkrun/bkrun/internal/testenv"
)

const mib = 1 << 20

// ---- fixtures and helpers ----

// scratchDir is a directory under /var/tmp, removed when the test ends:
// t.TempDir may be on a tmpfs, which has no O_DIRECT before Linux 6.6.
func scratchDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/var/tmp", "bkrun-image-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func mkdir(t *testing.T, elem ...string) string {
	t.Helper()
	p := filepath.Join(elem...)
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// runCmd runs an external command and returns its output; failure is fatal.
func runCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// needLoop requires root and loop devices with mount and losetup.
func needLoop(t *testing.T) {
	t.Helper()
	testenv.NeedRoot(t)
	testenv.NeedCommand(t, "mount")
	testenv.NeedCommand(t, "umount")
	testenv.NeedCommand(t, "losetup")
	_, err := os.Stat("/dev/loop-control")
	testenv.Need(t, err == nil, "loop devices (/dev/loop-control)")
}

// mount mounts src on dir with the given options and unmounts it when the
// test ends, even on failure; the returned function unmounts it earlier.
// With -o loop, mount sets up the loop device with autoclear: it is
// detached by the unmount.
func mount(t *testing.T, src, dir string, args ...string) (unmount func()) {
	t.Helper()
	runCmd(t, "mount", append(args, src, dir)...)
	var once sync.Once
	unmount = func() {
		once.Do(func() {
			if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v\n%s", dir, err, out)
				exec.Command("umount", "-l", dir).Run()
			}
		})
	}
	t.Cleanup(unmount)
	return unmount
}

// loopDevice attaches img to a free loop device and detaches it when the
// test ends.
func loopDevice(t *testing.T, img string, readOnly bool) string {
	t.Helper()
	args := []string{"--find", "--show"}
	if readOnly {
		args = append(args, "--read-only")
	}
	dev := strings.TrimSpace(runCmd(t, "losetup", append(args, img)...))
	if !strings.HasPrefix(dev, "/dev/loop") {
		t.Fatalf("losetup said %q", dev)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v\n%s", dev, err, out)
		}
	})
	return dev
}

func seedBytes(seed uint64) (s [32]byte) {
	binary.LittleEndian.PutUint64(s[:], seed)
	return s
}

// textBlock is 1 MiB of log-like lines of random words: compressible, but
// slow to compress compared with zeros or incompressible data.
func textBlock(seed uint64) []byte {
	words := strings.Fields(`the quick brown fox jumps over the lazy dog backup volume group
		snapshot written to disk verified by its hash before rename kernel EXT4-fs sda1
		mounted filesystem with ordered data mode daisy CRON root CMD bkrun xen-backup master`)
	r := rand.New(rand.NewPCG(seed, 1))
	var b bytes.Buffer
	b.Grow(mib + 256)
	for b.Len() < mib {
		for i := 5 + r.IntN(8); i > 0; i-- {
			b.WriteString(words[r.IntN(len(words))])
			b.WriteByte(' ')
		}
		b.WriteByte('\n')
	}
	return b.Bytes()[:mib]
}

// span is a run of MiB in a generated image: 'r' random, 't' text, 'z'
// written zeros, 'h' a hole.
type span struct {
	kind byte
	mib  int
}

// writeImage writes a deterministic image made of spans, 1 MiB at a time.
func writeImage(t *testing.T, path string, seed uint64, spans ...span) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rnd := rand.NewChaCha8(seedBytes(seed))
	text := textBlock(seed)
	zero := make([]byte, mib)
	buf := make([]byte, mib)
	var off int64
	for _, sp := range spans {
		for i := 0; i < sp.mib; i++ {
			var b []byte
			switch sp.kind {
			case 'r':
				rnd.Read(buf)
				b = buf
			case 't':
				b = text
			case 'z':
				b = zero
			case 'h':
				off += mib
				continue
			default:
				t.Fatalf("span kind %q", sp.kind)
			}
			if _, err := f.WriteAt(b, off); err != nil {
				t.Fatal(err)
			}
			off += mib
		}
	}
	if err := f.Truncate(off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	rand.NewChaCha8(seedBytes(seed)).Read(b)
	return b
}

// diffReaders compares two streams and describes the first difference.
func diffReaders(a, b io.Reader) error {
	ba, bb := make([]byte, mib), make([]byte, mib)
	for off := int64(0); ; off += mib {
		na, ea := io.ReadFull(a, ba)
		nb, eb := io.ReadFull(b, bb)
		for _, e := range []error{ea, eb} {
			if e != nil && e != io.EOF && e != io.ErrUnexpectedEOF {
				return e
			}
		}
		n := min(na, nb)
		if !bytes.Equal(ba[:n], bb[:n]) {
			i := 0
			for ba[i] == bb[i] {
				i++
			}
			return fmt.Errorf("first difference at offset %d", off+int64(i))
		}
		if na != nb {
			return fmt.Errorf("lengths differ: one ends at offset %d, the other goes on", off+int64(n))
		}
		if ea != nil {
			return nil
		}
	}
}

// sameFile fails unless the two files (or block devices) hold the same bytes.
func sameFile(t *testing.T, got, want string) {
	t.Helper()
	fg, err := os.Open(got)
	if err != nil {
		t.Fatal(err)
	}
	defer fg.Close()
	fw, err := os.Open(want)
	if err != nil {
		t.Fatal(err)
	}
	defer fw.Close()
	if err := diffReaders(fg, fw); err != nil {
		t.Errorf("%s is not byte-identical to %s: %v", got, want, err)
	}
}

// sameAsDecoded fails unless the output of a standard tool (lz4 -d -c,
// zstd -d -c) is byte-identical to want.
func sameAsDecoded(t *testing.T, want string, name string, args ...string) {
	t.Helper()
	testenv.NeedCommand(t, name)
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	fw, err := os.Open(want)
	if err != nil {
		t.Fatal(err)
	}
	defer fw.Close()
	derr := diffReaders(out, fw)
	io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		t.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	if derr != nil {
		t.Errorf("%s %s is not byte-identical to %s: %v", name, strings.Join(args, " "), want, derr)
	}
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// catalogue is the on-disk catalogue entry (OUT.json), decoded here with
// its own field names rather than stream.Meta: the file is the contract.
type catalogue struct {
	Format       string `json:"format"`
	Source       string `json:"source"`
	SourceKind   string `json:"source_kind"`
	Size         int64  `json:"size"`
	Codec        string `json:"codec"`
	BlockSize    int64  `json:"block_size"`
	HashAlgo     string `json:"hash_algo"`
	Hash         string `json:"hash"`
	ZeroBytes    int64  `json:"zero_bytes"`
	HoleBytes    int64  `json:"hole_bytes"`
	BytesWritten int64  `json:"bytes_written"`
}

var hexHash = regexp.MustCompile(`^[0-9a-f]{64}$`)

// readCatalogue loads OUT.json and checks what holds for every backup.
func readCatalogue(t *testing.T, out string) catalogue {
	t.Helper()
	b, err := os.ReadFile(out + ".json")
	if err != nil {
		t.Fatalf("catalogue entry: %v", err)
	}
	var c catalogue
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("%s.json: %v\n%s", out, err, b)
	}
	fi, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if c.Format != "bkrun-image/1" || c.BlockSize != mib || c.HashAlgo != "blake3-tree-1MiB" ||
		!hexHash.MatchString(c.Hash) || c.BytesWritten != fi.Size() {
		t.Errorf("%s.json: %+v (file is %d bytes)", out, c, fi.Size())
	}
	return c
}

// entries lists the names in dir.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// onlyEntries fails unless dir holds exactly want (sorted): no output, no
// catalogue entry and no .partial-* file beyond them.
func onlyEntries(t *testing.T, dir string, want ...string) {
	t.Helper()
	if got := entries(t, dir); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("%s holds %q, want %q", dir, got, want)
	}
}

// oneLineError checks a failed run: its exit status, and a single line
// "bkrun: ..." on stderr that contains each of wants.
func oneLineError(t *testing.T, r result, code int, wants ...string) {
	t.Helper()
	if r.code != code {
		t.Errorf("exit status %d, want %d; stderr %q", r.code, code, r.stderr)
	}
	if !strings.HasPrefix(r.stderr, "bkrun: ") || strings.Count(r.stderr, "\n") != 1 || !strings.HasSuffix(r.stderr, "\n") {
		t.Errorf("stderr is not one line \"bkrun: ...\": %q", r.stderr)
	}
	for _, w := range wants {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("stderr %q lacks %q", r.stderr, w)
		}
	}
}

func mustSucceed(t *testing.T, r result, what string) {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("%s: exit %d\nstdout %s\nstderr %s", what, r.code, r.stdout, r.stderr)
	}
}

// checkImageOutput checks the two lines disk-image.lua prints.
func checkImageOutput(t *testing.T, r result, out, size string, c catalogue) {
	t.Helper()
	want := fmt.Sprintf("hash %s (blake3-tree-1MiB), catalogue %s.json\n", c.Hash, out)
	if !strings.HasPrefix(r.stdout, out+": "+size+" in ") || !strings.HasSuffix(r.stdout, want) || strings.Count(r.stdout, "\n") != 2 {
		t.Errorf("stdout %q, want %q then %q", r.stdout, out+": "+size+" in ...", want)
	}
}

// checkRestoreOutput checks that disk-restore.lua printed the catalogue hash.
func checkRestoreOutput(t *testing.T, r result, target, backup, size string, c catalogue) {
	t.Helper()
	want := fmt.Sprintf("verified: hash %s matches %s.json\n", c.Hash, backup)
	if !strings.HasPrefix(r.stdout, target+": "+size+" in ") || !strings.HasSuffix(r.stdout, want) {
		t.Errorf("stdout %q, want %q then %q", r.stdout, target+": "+size+" in ...", want)
	}
}

// ---- 1. ext4 round trip ----

// makeExt4Image builds a 64 MiB ext4 image with a few files, its free
// space zero-filled (as seed 002 did before imaging), and returns what to
// expect in it.
func makeExt4Image(t *testing.T, dir, img string) (random []byte) {
	t.Helper()
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 * mib)
	f.Close()
	runCmd(t, "mkfs.ext4", "-q", "-F", img)
	mnt := mkdir(t, dir, "mnt")
	unmount := mount(t, img, mnt, "-o", "loop")
	random = randomBytes(5*mib, 7)
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(mnt, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("hello.txt", []byte(strings.Repeat("hello from the bkrun image test\n", 100)))
	write("random.bin", random)
	mkdir(t, mnt, "sub", "dir")
	write("sub/dir/notes.txt", []byte("nested\n"))
	if err := os.Symlink("sub/dir/notes.txt", filepath.Join(mnt, "link")); err != nil {
		t.Fatal(err)
	}
	// Zero-fill the free space, then delete the fill: freed blocks hold
	// zeros, which the backup neither compresses nor stores.
	zf, err := os.Create(filepath.Join(mnt, "zero"))
	if err != nil {
		t.Fatal(err)
	}
	zero := make([]byte, mib)
	for {
		if _, err = zf.Write(zero); err != nil {
			break
		}
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("zero-fill ended with %v, want ENOSPC", err)
	}
	zf.Close()
	if err := os.Remove(filepath.Join(mnt, "zero")); err != nil {
		t.Fatal(err)
	}
	syscall.Sync()
	unmount()
	return random
}

// checkExt4Files mounts a restored image read-only and compares its files.
func checkExt4Files(t *testing.T, img, mnt string, random []byte) {
	t.Helper()
	defer mount(t, img, mnt, "-o", "loop,ro")()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil {
			t.Error(err)
		}
		return b
	}
	if got := string(read("hello.txt")); got != strings.Repeat("hello from the bkrun image test\n", 100) {
		t.Errorf("hello.txt: %.60q...", got)
	}
	if !bytes.Equal(read("random.bin"), random) {
		t.Error("random.bin differs")
	}
	if got := string(read("sub/dir/notes.txt")); got != "nested\n" {
		t.Errorf("sub/dir/notes.txt: %q", got)
	}
	if target, err := os.Readlink(filepath.Join(mnt, "link")); err != nil || target != "sub/dir/notes.txt" {
		t.Errorf("link -> %q, %v", target, err)
	}
	if got := string(read("link")); got != "nested\n" {
		t.Errorf("link reads %q", got)
	}
	if _, err := os.Lstat(filepath.Join(mnt, "zero")); err == nil {
		t.Error("the deleted zero-fill file is back")
	}
}

// The "done when": an ext4 image backed up with each codec decodes
// with the standard tool to the very same bytes, restores byte-identical
// and verified, and the restored file system mounts with its files.
func TestDiskImageExt4RoundTrip(t *testing.T) {
	needLoop(t)
	testenv.NeedCommand(t, "mkfs.ext4")
	dir := scratchDir(t)
	img := filepath.Join(dir, "disk.img")
	random := makeExt4Image(t, dir, img)

	for _, c := range []struct{ codec, ext, tool string }{
		{"lz4", ".lz4", "lz4"}, {"zstd", ".zst", "zstd"}, {"none", ".raw", ""},
	} {
		t.Run(c.codec, func(t *testing.T) {
			if c.tool != "" {
				testenv.NeedCommand(t, c.tool)
			}
			outDir := mkdir(t, dir, "out-"+c.codec)
			out := filepath.Join(outDir, "disk.img"+c.ext)
			args := []string{"scripts/disk-image.lua", img, out}
			if c.codec != "lz4" {
				args = append(args, "--codec", c.codec)
			}
			r := bkrun(t, "", args...)
			mustSucceed(t, r, "disk-image.lua")
			cat := readCatalogue(t, out)
			checkImageOutput(t, r, out, "64.0 MiB", cat)
			if cat.Size != 64*mib || cat.Codec != c.codec || cat.Source != img || cat.SourceKind != "file" {
				t.Errorf("catalogue %+v", cat)
			}
			// The zero-filled free space is recognised as zeros; only the
			// 5 MiB of random data and the metadata are really stored.
			if cat.ZeroBytes < 40*mib {
				t.Errorf("zero_bytes %d: the zero-filled free space was not seen as zeros", cat.ZeroBytes)
			}
			if c.codec != "none" && cat.BytesWritten > 12*mib {
				t.Errorf("bytes_written %d for 5 MiB of data in a zero-filled 64 MiB image", cat.BytesWritten)
			}
			onlyEntries(t, outDir, filepath.Base(out), filepath.Base(out)+".json")

			switch c.tool {
			case "":
				sameFile(t, out, img) // codec none: the backup is the image
			default:
				sameAsDecoded(t, img, c.tool, "-d", "-c", out)
			}

			restored := filepath.Join(dir, "restored-"+c.codec)
			r = bkrun(t, "", "scripts/disk-restore.lua", out, restored)
			mustSucceed(t, r, "disk-restore.lua")
			checkRestoreOutput(t, r, restored, out, "64.0 MiB", cat)
			sameFile(t, restored, img)
			// Zero blocks are restored as holes.
			var st syscall.Stat_t
			if err := syscall.Stat(restored, &st); err == nil && st.Blocks*512 > 64*mib-cat.ZeroBytes+4*mib {
				t.Errorf("restored image allocates %d bytes; %d of its 64 MiB are zeros and should be holes", st.Blocks*512, cat.ZeroBytes)
			}
			if c.codec == "lz4" {
				checkExt4Files(t, restored, mkdir(t, dir, "mnt-restored"), random)
			}
			os.Remove(restored)
		})
	}
}

// ---- 2. --verify and --verify-only ----

// damageWhileWriting flips a byte near the start of the temporary output
// once the copy has written past it, as a bad disk or a stray writer
// would. It reports whether it did before stop is closed.
func damageWhileWriting(dir, name string, stop <-chan struct{}) <-chan error {
	res := make(chan error, 1)
	go func() {
		prefix := "." + name + ".partial-"
		for {
			select {
			case <-stop:
				res <- errors.New("the copy ended before the test could damage its output")
				return
			default:
			}
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if !strings.HasPrefix(e.Name(), prefix) {
					continue
				}
				p := filepath.Join(dir, e.Name())
				if fi, err := os.Stat(p); err != nil || fi.Size() < 4*mib {
					continue
				}
				f, err := os.OpenFile(p, os.O_RDWR, 0)
				if err != nil {
					continue
				}
				var b [1]byte
				_, err = f.ReadAt(b[:], 1000)
				if err == nil {
					b[0] ^= 0xff
					_, err = f.WriteAt(b[:], 1000)
				}
				f.Close()
				res <- err
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	return res
}

// --verify decodes the new backup before it is renamed into place: a
// backup damaged after it was written is refused and leaves nothing
// behind, where a run without --verify commits it and --verify-only
// finds the damage later.
func TestDiskImageVerify(t *testing.T) {
	testenv.NeedCommand(t, "lz4")
	dir := scratchDir(t)
	img := filepath.Join(dir, "disk.img")
	writeImage(t, img, 2, span{'r', 96}, span{'t', 16}, span{'z', 16})
	outDir := mkdir(t, dir, "out")
	out := filepath.Join(outDir, "disk.img.lz4")

	r := bkrun(t, "", "scripts/disk-image.lua", "--verify", img, out)
	mustSucceed(t, r, "disk-image.lua --verify")
	cat := readCatalogue(t, out)
	checkImageOutput(t, r, out, "128.0 MiB", cat)
	sameAsDecoded(t, img, "lz4", "-d", "-c", out)
	r = bkrun(t, "", "scripts/disk-restore.lua", "--verify-only", out)
	mustSucceed(t, r, "disk-restore.lua --verify-only")
	if !regexp.MustCompile(`^` + regexp.QuoteMeta(out) + `: 128\.0 MiB in [0-9.]+ s \([0-9.]+ [KMG]iB/s\), 16\.0 MiB zero: OK\n$`).MatchString(r.stdout) {
		t.Errorf("--verify-only printed %q", r.stdout)
	}

	// Damaged while written, with --verify: refused, nothing left.
	badDir := mkdir(t, dir, "bad")
	bad := filepath.Join(badDir, "disk.img.lz4")
	stop := make(chan struct{})
	damaged := damageWhileWriting(badDir, "disk.img.lz4", stop)
	r = bkrun(t, "", "scripts/disk-image.lua", "--verify", img, bad)
	close(stop)
	if err := <-damaged; err != nil {
		t.Fatal(err)
	}
	oneLineError(t, r, 1, "stream.copy: "+bad+": verification of the new backup failed: ", "backup is corrupt: hash mismatch")
	onlyEntries(t, badDir)

	// The same damage without --verify is committed...
	stop = make(chan struct{})
	damaged = damageWhileWriting(badDir, "disk.img.lz4", stop)
	r = bkrun(t, "", "scripts/disk-image.lua", img, bad)
	close(stop)
	if err := <-damaged; err != nil {
		t.Fatal(err)
	}
	mustSucceed(t, r, "disk-image.lua without --verify")
	// ...and --verify-only finds it.
	r = bkrun(t, "", "scripts/disk-restore.lua", "--verify-only", bad)
	oneLineError(t, r, 1, "stream.verify: "+bad+": backup is corrupt: hash mismatch")
	if strings.Contains(r.stdout, "OK") {
		t.Errorf("--verify-only printed %q for a damaged backup", r.stdout)
	}
}

// ---- 3. and 4. block devices ----

// A loop device is read as a device: same logical image and hash as the
// file behind it, no holes, restored byte-identical.
func TestDiskImageFromBlockDevice(t *testing.T) {
	testenv.NeedCommand(t, "lz4")
	needLoop(t)
	dir := scratchDir(t)
	img := filepath.Join(dir, "disk.img")
	writeImage(t, img, 3, span{'r', 16}, span{'t', 16}, span{'z', 16}, span{'h', 16})
	dev := loopDevice(t, img, true)
	outDir := mkdir(t, dir, "out")

	out := filepath.Join(outDir, "dev.img.lz4")
	r := bkrun(t, "", "scripts/disk-image.lua", dev, out)
	mustSucceed(t, r, "disk-image.lua "+dev)
	cat := readCatalogue(t, out)
	checkImageOutput(t, r, out, "64.0 MiB", cat)
	if cat.SourceKind != "device" || cat.Source != dev || cat.Size != 64*mib || cat.ZeroBytes != 32*mib || cat.HoleBytes != 0 {
		t.Errorf("catalogue of a device backup: %+v", cat)
	}

	fileOut := filepath.Join(outDir, "file.img.lz4")
	mustSucceed(t, bkrun(t, "", "scripts/disk-image.lua", img, fileOut), "disk-image.lua "+img)
	if fc := readCatalogue(t, fileOut); fc.Hash != cat.Hash || fc.SourceKind != "file" || fc.ZeroBytes != 32*mib {
		t.Errorf("the file behind %s backs up differently: %+v vs %+v", dev, fc, cat)
	}

	restored := filepath.Join(dir, "restored")
	r = bkrun(t, "", "scripts/disk-restore.lua", out, restored)
	mustSucceed(t, r, "disk-restore.lua")
	checkRestoreOutput(t, r, restored, out, "64.0 MiB", cat)
	sameFile(t, restored, img)

	// A device whose size is a multiple of 512 but not of 4096: the last
	// O_DIRECT read crosses its end.
	odd := filepath.Join(dir, "odd.img")
	writeImage(t, odd, 3, span{'r', 4})
	f, err := os.OpenFile(odd, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(randomBytes(1536, 3))
	f.Close()
	oddDev := loopDevice(t, odd, true)
	oddOut := filepath.Join(outDir, "odd.img.lz4")
	mustSucceed(t, bkrun(t, "", "scripts/disk-image.lua", oddDev, oddOut), "disk-image.lua "+oddDev)
	if c := readCatalogue(t, oddOut); c.Size != 4*mib+1536 || c.SourceKind != "device" {
		t.Errorf("catalogue of %s: %+v", oddDev, c)
	}
	sameAsDecoded(t, odd, "lz4", "-d", "-c", oddOut)
}

// Restoring onto a device writes every block, zeros included (the device
// held other data), and refuses a device too small for the image.
func TestDiskRestoreOntoBlockDevice(t *testing.T) {
	needLoop(t)
	dir := scratchDir(t)
	img := filepath.Join(dir, "disk.img")
	writeImage(t, img, 4, span{'r', 8}, span{'z', 16}, span{'t', 8}, span{'h', 24}, span{'r', 8})
	out := filepath.Join(dir, "disk.img.lz4")
	mustSucceed(t, bkrun(t, "", "scripts/disk-image.lua", img, out), "disk-image.lua")
	cat := readCatalogue(t, out)

	// Backing files full of 0xa5: zero blocks must overwrite them.
	backing := func(name string, size int) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, bytes.Repeat([]byte{0xa5}, size), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	target := backing("target.img", 64*mib)
	dev := loopDevice(t, target, false)
	r := bkrun(t, "", "scripts/disk-restore.lua", out, dev)
	mustSucceed(t, r, "disk-restore.lua onto "+dev)
	checkRestoreOutput(t, r, dev, out, "64.0 MiB", cat)
	sameFile(t, dev, img)
	sameFile(t, target, img)

	small := backing("small.img", 32*mib)
	smallDev := loopDevice(t, small, false)
	before := fileSum(t, small)
	r = bkrun(t, "", "scripts/disk-restore.lua", out, smallDev)
	oneLineError(t, r, 1, fmt.Sprintf("stream.restore: %s: device is %d bytes, the image needs %d", smallDev, 32*mib, 64*mib))
	if fileSum(t, small) != before {
		t.Error("a refused restore wrote to the device")
	}
}

// ---- 5. bad input ----

func TestDiskImageBadSource(t *testing.T) {
	dir := scratchDir(t)
	outDir := mkdir(t, dir, "out")
	out := filepath.Join(outDir, "disk.img.lz4")
	missing := filepath.Join(dir, "no-such.img")
	for _, c := range []struct{ name, src, want string }{
		{"missing", missing, "disk.open: " + missing + ": no such file or directory"},
		{"directory", dir, "disk.open: " + dir + ": is a directory, not a block device or image file"},
		{"char device", "/dev/null", "disk.open: /dev/null: is a character device, not a block device or image file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := bkrun(t, "", "scripts/disk-image.lua", c.src, out)
			oneLineError(t, r, 1, "scripts/disk-image.lua:", c.want)
			onlyEntries(t, outDir)
		})
	}
	t.Run("missing argument", func(t *testing.T) {
		r := bkrun(t, "", "scripts/disk-image.lua", missing)
		oneLineError(t, r, 2, "scripts/disk-image.lua: missing argument DEST")
		r = bkrun(t, "", "scripts/disk-restore.lua")
		oneLineError(t, r, 2, "scripts/disk-restore.lua: missing argument BACKUP")
		r = bkrun(t, "", "scripts/disk-image.lua", missing, out, "--codec", "lzop")
		oneLineError(t, r, 2, "scripts/disk-image.lua: argument codec", "lzop")
		onlyEntries(t, outDir)
	})
}

func TestDiskImageBadDestination(t *testing.T) {
	testenv.NeedCommand(t, "lz4")
	dir := scratchDir(t)
	img := filepath.Join(dir, "disk.img")
	writeImage(t, img, 5, span{'r', 4}, span{'t', 4})
	other := filepath.Join(dir, "other.img")
	writeImage(t, other, 6, span{'t', 4}, span{'r', 4})

	t.Run("no such directory", func(t *testing.T) {
		out := filepath.Join(dir, "nodir", "disk.img.lz4")
		r := bkrun(t, "", "scripts/disk-image.lua", img, out)
		oneLineError(t, r, 1, "stream.copy: "+out+": directory "+filepath.Join(dir, "nodir")+" does not exist")
		if _, err := os.Stat(filepath.Dir(out)); err == nil {
			t.Error("the missing directory was created")
		}
	})

	t.Run("existing", func(t *testing.T) {
		outDir := mkdir(t, dir, "existing")
		out := filepath.Join(outDir, "disk.img.lz4")
		mustSucceed(t, bkrun(t, "", "scripts/disk-image.lua", img, out), "first backup")
		old, oldCat := fileSum(t, out), fileSum(t, out+".json")

		r := bkrun(t, "", "scripts/disk-image.lua", other, out)
		oneLineError(t, r, 1, "stream.copy: "+out+": already exists")
		if fileSum(t, out) != old || fileSum(t, out+".json") != oldCat {
			t.Error("the existing backup was changed without --overwrite")
		}
		onlyEntries(t, outDir, "disk.img.lz4", "disk.img.lz4.json")

		r = bkrun(t, "", "scripts/disk-image.lua", other, out, "--overwrite")
		mustSucceed(t, r, "--overwrite")
		cat := readCatalogue(t, out)
		if cat.Source != other {
			t.Errorf("the catalogue entry was not replaced: %+v", cat)
		}
		sameAsDecoded(t, other, "lz4", "-d", "-c", out)
		onlyEntries(t, outDir, "disk.img.lz4", "disk.img.lz4.json")
	})

	t.Run("symlink", func(t *testing.T) {
		outDir := mkdir(t, dir, "symlink")
		victim := filepath.Join(dir, "victim")
		os.WriteFile(victim, []byte("not a backup\n"), 0o644)
		out := filepath.Join(outDir, "disk.img.lz4")
		os.Symlink(victim, out)
		r := bkrun(t, "", "scripts/disk-image.lua", img, out, "--overwrite")
		oneLineError(t, r, 1, "stream.copy: "+out+": exists and is not a regular file")
		if b, _ := os.ReadFile(victim); string(b) != "not a backup\n" {
			t.Error("the backup was written through a symlink")
		}
		if fi, err := os.Lstat(out); err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Error("the symlink was replaced")
		}
		onlyEntries(t, outDir, "disk.img.lz4")
	})
}

// A full file system: the error says so, the partial output is removed and
// a previous backup in the same directory is untouched.
func TestDiskImageFullDisk(t *testing.T) {
	testenv.NeedCommand(t, "lz4")
	testenv.NeedRoot(t)
	testenv.NeedCommand(t, "mount")
	testenv.NeedCommand(t, "umount")
	dir := scratchDir(t)
	img := filepath.Join(dir, "disk.img")
	writeImage(t, img, 8, span{'r', 64})
	small := filepath.Join(dir, "small.img")
	writeImage(t, small, 9, span{'r', 1})
	full := mkdir(t, dir, "full")
	mount(t, "tmpfs", full, "-t", "tmpfs", "-o", "size=8m")

	prev := filepath.Join(full, "prev.img.lz4")
	mustSucceed(t, bkrun(t, "", "scripts/disk-image.lua", small, prev), "previous backup")
	sum, catSum := fileSum(t, prev), fileSum(t, prev+".json")

	for _, c := range []struct {
		name string
		args []string
	}{
		{"new name", []string{filepath.Join(full, "new.img.lz4")}},
		{"overwrite", []string{prev, "--overwrite"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := bkrun(t, "", append([]string{"scripts/disk-image.lua", img}, c.args...)...)
			oneLineError(t, r, 1, "stream.copy: "+c.args[0]+": ", "no space left on device")
			onlyEntries(t, full, "prev.img.lz4", "prev.img.lz4.json")
			if fileSum(t, prev) != sum || fileSum(t, prev+".json") != catSum {
				t.Error("the previous backup was changed")
			}
		})
	}
	sameAsDecoded(t, small, "lz4", "-d", "-c", prev)

	// Restoring onto the full file system fails the same way.
	backup := filepath.Join(dir, "disk.img.lz4")
	mustSucceed(t, bkrun(t, "", "scripts/disk-image.lua", img, backup), "backup on a roomy file system")
	target := filepath.Join(full, "restored.img")
	r := bkrun(t, "", "scripts/disk-restore.lua", backup, target)
	oneLineError(t, r, 1, "stream.restore: writing "+target+": ", "no space left on device")
	onlyEntries(t, full, "prev.img.lz4", "prev.img.lz4.json")
}

// An image whose size is not a multiple of the 1 MiB block, nor of the
// 4096 bytes O_DIRECT reads in, ending in a short zero block: every codec
// decodes with its standard tool and restores to the exact bytes and size.
func TestDiskImageOddSize(t *testing.T) {
	dir := scratchDir(t)
	img := filepath.Join(dir, "odd.img")
	writeImage(t, img, 13, span{'r', 2}, span{'t', 1}, span{'z', 1})
	f, err := os.OpenFile(img, os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(textBlock(13)[:5000])
	f.Write(make([]byte, 3001)) // the last, short block is all zeros
	f.Close()
	for _, c := range []struct{ codec, ext, tool string }{
		{"lz4", ".lz4", "lz4"}, {"zstd", ".zst", "zstd"}, {"none", ".raw", ""},
	} {
		t.Run(c.codec, func(t *testing.T) {
			if c.tool != "" {
				testenv.NeedCommand(t, c.tool)
			}
			out := filepath.Join(dir, "odd.img"+c.ext)
			r := bkrun(t, "", "scripts/disk-image.lua", img, out, "--codec", c.codec, "--verify")
			mustSucceed(t, r, "disk-image.lua")
			cat := readCatalogue(t, out)
			if cat.Size != 4*mib+8001 {
				t.Errorf("catalogue size %d, want %d", cat.Size, 4*mib+8001)
			}
			if c.tool == "" {
				sameFile(t, out, img)
			} else {
				sameAsDecoded(t, img, c.tool, "-d", "-c", out)
			}
			restored := filepath.Join(dir, "restored-"+c.codec)
			r = bkrun(t, "", "scripts/disk-restore.lua", out, restored)
			mustSucceed(t, r, "disk-restore.lua")
			checkRestoreOutput(t, r, restored, out, "4.0 MiB", cat)
			sameFile(t, restored, img)
		})
	}
}

// Damaged backups: restore and --verify-only fail with a message naming the
// backup, and leave no target, no partial file, and an existing target
// untouched.
func TestDiskRestoreBadBackup(t *testing.T) {
	dir := scratchDir(t)
	img := filepath.Join(dir, "a.img")
	writeImage(t, img, 10, span{'r', 16}, span{'t', 16})
	// b.img differs from a.img in one byte of its random part: its backup
	// has the same size, only the hash tells them apart.
	imgB := filepath.Join(dir, "b.img")
	writeImage(t, imgB, 10, span{'r', 16}, span{'t', 16})
	f, _ := os.OpenFile(imgB, os.O_RDWR, 0)
	f.WriteAt([]byte{0x55}, 100)
	f.Close()
	a, b := filepath.Join(dir, "a.img.lz4"), filepath.Join(dir, "b.img.lz4")
	mustSucceed(t, bkrun(t, "", "scripts/disk-image.lua", img, a), "backup a")
	mustSucceed(t, bkrun(t, "", "scripts/disk-image.lua", imgB, b), "backup b")
	catA, catB := readCatalogue(t, a), readCatalogue(t, b)
	if catA.BytesWritten != catB.BytesWritten || catA.Hash == catB.Hash {
		t.Fatalf("fixtures: %+v %+v", catA, catB)
	}
	size := catA.BytesWritten

	cases := mkdir(t, dir, "cases")
	copyFile := func(from, to string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	flip := func(p string, off int64) {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var b [1]byte
		f.ReadAt(b[:], off)
		b[0] ^= 0xff
		f.WriteAt(b[:], off)
	}
	truncated := func(n int64) string {
		return fmt.Sprintf("backup is corrupt: the file is %d bytes, its catalogue entry says %d (truncated", n, size)
	}
	for _, c := range []struct {
		name  string
		setup func(p string)
		want  string
	}{
		{"corrupt", func(p string) { copyFile(a, p); copyFile(a+".json", p+".json"); flip(p, size/2) },
			"backup is corrupt: hash mismatch: blake3-tree-1MiB "},
		{"corrupt compressed block", func(p string) { copyFile(a, p); copyFile(a+".json", p+".json"); flip(p, size-50000) },
			"backup is corrupt: "},
		{"truncated in half", func(p string) { copyFile(a, p); copyFile(a+".json", p+".json"); os.Truncate(p, size/2) },
			truncated(size / 2)},
		{"end mark cut", func(p string) { copyFile(a, p); copyFile(a+".json", p+".json"); os.Truncate(p, size-4) },
			truncated(size - 4)},
		{"another image's catalogue", func(p string) { copyFile(a, p); copyFile(b+".json", p+".json") },
			"backup is corrupt: hash mismatch: blake3-tree-1MiB " + catA.Hash + ", catalogue entry says " + catB.Hash},
		{"no catalogue", func(p string) { copyFile(a, p) },
			".json: cannot verify the backup"},
		{"missing", func(string) {}, "no such file or directory"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(cases, strings.NewReplacer(" ", "-", "'", "").Replace(c.name)+".img.lz4")
			c.setup(p)
			targets := mkdir(t, dir, "targets-"+filepath.Base(p))
			existing := filepath.Join(targets, "existing")
			os.WriteFile(existing, []byte("the previous good restore\n"), 0o644)

			target := filepath.Join(targets, "restored")
			r := bkrun(t, "", "scripts/disk-restore.lua", p, target)
			oneLineError(t, r, 1, "stream.restore: ", p, c.want)
			onlyEntries(t, targets, "existing")

			r = bkrun(t, "", "scripts/disk-restore.lua", p, existing, "--overwrite")
			oneLineError(t, r, 1, "stream.restore: ", p, c.want)
			onlyEntries(t, targets, "existing")
			if b, _ := os.ReadFile(existing); string(b) != "the previous good restore\n" {
				t.Errorf("the existing target was changed: %q", b)
			}

			r = bkrun(t, "", "scripts/disk-restore.lua", "--verify-only", p)
			oneLineError(t, r, 1, "stream.verify: ", p, c.want)
			if r.stdout != "" {
				t.Errorf("--verify-only printed %q", r.stdout)
			}
		})
	}

	t.Run("good backup, existing target", func(t *testing.T) {
		targets := mkdir(t, dir, "targets-good")
		existing := filepath.Join(targets, "existing")
		os.WriteFile(existing, []byte("the previous good restore\n"), 0o644)
		r := bkrun(t, "", "scripts/disk-restore.lua", a, existing)
		oneLineError(t, r, 1, "stream.restore: "+existing+": already exists")
		if b, _ := os.ReadFile(existing); string(b) != "the previous good restore\n" {
			t.Errorf("the existing target was changed without --overwrite: %.40q", b)
		}
		r = bkrun(t, "", "scripts/disk-restore.lua", a, existing, "--overwrite")
		mustSucceed(t, r, "restore --overwrite")
		sameFile(t, existing, img)
		onlyEntries(t, targets, "existing")
	})
}

// ---- 6. cancellation ----

// interrupted starts bkrun, waits until its temporary output (a name with
// prefix in dir) exists, so that the copy is really running, sends SIGINT
// at the earliest `at` after the start, and returns the exit status, the
// time bkrun took to exit after the signal, and its stderr.
func interrupted(t *testing.T, dir, prefix string, at time.Duration, args ...string) (int, time.Duration, string) {
	t.Helper()
	cmd := exec.Command(bkrunBin, args...)
	cmd.Dir = repoRoot(t)
	// Two cores, as here: on a large machine the copy would otherwise be
	// over before the signal.
	cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()
	for running := false; !running; {
		select {
		case <-exited:
			t.Fatalf("bkrun exited before it was interrupted: %v\nstdout %s\nstderr %s", waitErr, stdout.String(), stderr.String())
		case <-time.After(5 * time.Millisecond):
		}
		for _, n := range entries(t, dir) {
			running = running || strings.HasPrefix(n, prefix)
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("no %s* in %s after 10 s", prefix, dir)
		}
	}
	time.Sleep(time.Until(start.Add(at)))
	signalled := time.Now()
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("bkrun did not stop within 10 s of SIGINT")
	}
	took := time.Since(signalled)
	t.Logf("bkrun %s: SIGINT %v after the start, exited %v later", strings.Join(args, " "),
		signalled.Sub(start).Round(time.Millisecond), took.Round(time.Millisecond))
	if !strings.Contains(stderr.String(), "bkrun: interrupted by SIGINT; clean-up done\n") {
		t.Errorf("stderr does not say bkrun was interrupted:\n%s", stderr.String())
	}
	if took > 1500*time.Millisecond {
		t.Errorf("bkrun took %v to stop after SIGINT, want at most 1.5 s", took)
	}
	return cmd.ProcessState.ExitCode(), took, stderr.String()
}

// SIGINT in the middle of a long backup stops it within a second and a
// half, with status 130, and leaves no output, catalogue or partial file.
func TestDiskImageInterrupted(t *testing.T) {
	dir := scratchDir(t)
	big := filepath.Join(dir, "big.img")
	writeImage(t, big, 11, span{'t', 768}) // some 3 s of lz4 on two cores
	outDir := mkdir(t, dir, "out")
	out := filepath.Join(outDir, "big.img.lz4")

	code, _, stderr := interrupted(t, outDir, ".big.img.lz4.partial-", 300*time.Millisecond, "scripts/disk-image.lua", big, out)
	if code != 130 {
		t.Errorf("exit status %d, want 130\n%s", code, stderr)
	}
	if w := "stream.copy: " + out + ": interrupted by SIGINT\n"; !strings.Contains(stderr, w) {
		t.Errorf("stderr lacks %q:\n%s", w, stderr)
	}
	onlyEntries(t, outDir)
}

// ---- 7. memory bound ----

// vmKiB reads a field (VmRSS, VmHWM) of /proc/self/status.
func vmKiB(field string) int64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return -1
}

// maxRSS runs bkrun and returns its result and peak RSS in KiB.
//
// Go starts children with vfork: until exec the child shares this
// process's memory, and the kernel folds this process's peak RSS into the
// child's ru_maxrss. Returning freed memory to the system and resetting
// the peak (clear_refs 5) first keeps the figure bkrun's own, or an
// upper bound of it.
func maxRSS(t *testing.T, args ...string) (result, int64) {
	t.Helper()
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Logf("cannot reset this process's peak RSS (%v): the measure is an upper bound", err)
	}
	parent := vmKiB("VmHWM")
	cmd := exec.Command(bkrunBin, args...)
	cmd.Dir = repoRoot(t)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	rss := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss
	t.Logf("bkrun %s: peak RSS %d KiB (this process's at the start: %d KiB)", strings.Join(args, " "), rss, parent)
	return result{cmd.ProcessState.ExitCode(), so.String(), se.String()}, rss
}

// Bytes never pass through Lua and the pipeline's buffers are bounded: a
// 1 GiB image is backed up, and restored, in at most 64 MiB of RSS.
func TestDiskImageMemoryBound(t *testing.T) {
	dir := scratchDir(t)
	img := filepath.Join(dir, "mixed.img")
	var spans []span
	for i := 0; i < 16; i++ {
		spans = append(spans, span{'r', 16}, span{'t', 16}, span{'z', 32})
	}
	writeImage(t, img, 12, spans...)
	out := filepath.Join(dir, "mixed.img.lz4")
	const limit = 64 << 10 // KiB

	r, rss := maxRSS(t, "scripts/disk-image.lua", img, out)
	mustSucceed(t, r, "disk-image.lua")
	cat := readCatalogue(t, out)
	checkImageOutput(t, r, out, "1.0 GiB", cat)
	if cat.Size != 1<<30 || cat.ZeroBytes != 512*mib {
		t.Errorf("catalogue %+v", cat)
	}
	if rss > limit {
		t.Errorf("disk-image.lua of a 1 GiB image peaked at %d KiB RSS, want at most %d", rss, limit)
	}

	restoreDir := mkdir(t, dir, "restore")
	restored := filepath.Join(restoreDir, "restored.img")
	r, rss = maxRSS(t, "scripts/disk-restore.lua", out, restored)
	mustSucceed(t, r, "disk-restore.lua")
	if rss > limit {
		t.Errorf("disk-restore.lua of a 1 GiB image peaked at %d KiB RSS, want at most %d", rss, limit)
	}
	sameFile(t, restored, img)

	// An interrupted restore leaves no target and no partial file.
	os.Remove(restored)
	code, _, stderr := interrupted(t, restoreDir, ".restored.img.partial-", 150*time.Millisecond, "scripts/disk-restore.lua", out, restored)
	if code != 130 || !strings.Contains(stderr, "stream.restore: interrupted by SIGINT\n") {
		t.Errorf("interrupted restore: exit status %d, stderr:\n%s", code, stderr)
	}
	onlyEntries(t, restoreDir)
}

// scripts/catalog.lua lists what disk-image.lua wrote, verifies it, and
// exits 1 when a catalogue entry is damaged.
func TestCatalogRecipe(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	os.WriteFile(img, append(bytes.Repeat([]byte("catalogue me "), 100000), make([]byte, 1<<20)...), 0o644)
	dest := filepath.Join(dir, "backup")
	os.Mkdir(dest, 0o755)
	if r := bkrun(t, "", "scripts/disk-image.lua", img, dest+"/disk.img.lz4"); r.code != 0 {
		t.Fatalf("%+v", r)
	}
	r := bkrun(t, "", "scripts/catalog.lua", dest, "--verify")
	if r.code != 0 || !strings.Contains(r.stdout, img) || !strings.Contains(r.stdout, "disk.img.lz4") || !strings.Contains(r.stdout, "verified") {
		t.Fatalf("%+v", r)
	}
	os.WriteFile(filepath.Join(dest, "other.img.lz4"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(dest, "other.img.lz4.json"), []byte("{not json"), 0o644)
	r = bkrun(t, "", "scripts/catalog.lua", dest)
	if r.code != 1 || !strings.Contains(r.stdout, "PROBLEM ") || !strings.Contains(r.stderr, "1 problem(s) in "+dest) {
		t.Fatalf("%+v", r)
	}
}
