package recover

import (
	"context"
	"crypto/rand"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bkrun/bkrun/internal/testenv"
)

// diskImage is a 40 MiB disk image with an MBR partition table (sfdisk):
// partition 1 (type 83) holds an ext4 filesystem made from a directory
// with mkfs.ext4 -d (no loop device needed to fill it), partition 2 is
// swap-typed and empty.
func diskImage(t *testing.T, dir string, parts string) (img string, tree state, src string) {
	t.Helper()
	src = filepath.Join(dir, "src")
	write(t, src+"/etc/hosts", "127.0.0.1 localhost\n", 0o644)
	write(t, src+"/etc/secret", "s3cret\n", 0o600)
	write(t, src+"/home/u/notes.txt", strings.Repeat("notes\n", 1000), 0o640)
	big := make([]byte, 2<<20)
	rand.Read(big)
	write(t, src+"/data/random.bin", string(big), 0o644)
	os.Symlink("../etc/hosts", src+"/data/hosts-link")
	old := time.Date(2020, 5, 6, 7, 8, 9, 0, time.UTC)
	os.Chtimes(src+"/etc/hosts", old, old)
	tree = snapshot(t, src)

	fsImg := filepath.Join(dir, "part.img")
	f, _ := os.Create(fsImg)
	f.Truncate(16 << 20)
	f.Close()
	run(t, "mkfs.ext4", "-q", "-F", "-d", src, fsImg)

	img = filepath.Join(dir, "disk.img")
	f, _ = os.Create(img)
	f.Truncate(40 << 20)
	f.Close()
	sf := osexec.Command("sfdisk", "-q", img)
	sf.Stdin = strings.NewReader(parts)
	if out, err := sf.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v %s", err, out)
	}
	run(t, "dd", "if="+fsImg, "of="+img, "bs=1M", "seek=1", "conv=notrunc,sparse", "status=none")
	os.Remove(fsImg)
	return img, tree, src
}

const twoParts = "label: dos\nstart=2048, size=32768, type=83\nstart=36864, type=82\n"

func TestAttachImageBackup(t *testing.T) {
	needTools(t, "mkfs.ext4", "sfdisk", "losetup", "mount", "umount", "dd")
	dir := t.TempDir()
	img, tree, _ := diskImage(t, dir, twoParts)
	bdir := filepath.Join(dir, "backup")
	os.Mkdir(bdir, 0o755)
	backup := filepath.Join(bdir, "disk.img.lz4")
	imageBackup(t, img, backup, "lz4")
	scratch := filepath.Join(dir, "scratch")
	os.Mkdir(scratch, 0o755)
	t.Cleanup(func() { leftovers(t, scratch, img) })
	ctx := context.Background()

	for _, p := range []int{1, 0} { // by number, then chosen (the only Linux partition)
		m, err := Attach(ctx, backup, Options{Partition: p, Scratch: scratch})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		if m.Partition != 1 || m.FSType != "ext4" || !strings.HasPrefix(m.Image, scratch) || !strings.HasPrefix(m.Device, "/dev/loop") {
			t.Errorf("mount: %+v", m)
		}
		got := snapshot(t, m.Path, "lost+found")
		if d := diff(tree, got); len(d) > 0 {
			t.Errorf("mounted tree differs:\n%s", strings.Join(d, "\n"))
		}
		if b, _ := os.ReadFile("/proc/mounts"); !strings.Contains(string(b), m.Path+" ext4 ro") {
			t.Errorf("not mounted read-only at %s", m.Path)
		}
		if err := os.WriteFile(filepath.Join(m.Path, "x"), nil, 0o644); err == nil {
			t.Error("the mount is writable")
		}
		t.Logf("undo steps: %v", m.Steps())
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		leftovers(t, scratch, img)
	}

	// Partition 2 has no filesystem: refused, nothing left.
	if _, err := Attach(ctx, backup, Options{Partition: 2, Scratch: scratch}); err == nil || !strings.Contains(err.Error(), "mounting partition 2") {
		t.Errorf("empty partition: %v", err)
	}
	leftovers(t, scratch, img)
	if _, err := Attach(ctx, backup, Options{Partition: 7, Scratch: scratch}); err == nil || !strings.Contains(err.Error(), "no partition 7 (mbr table, partitions: 1, 2)") {
		t.Errorf("no such partition: %v", err)
	}
	leftovers(t, scratch, img)

	// files and extract through the same attach.
	entries, err := Files(ctx, backup, Options{Scratch: scratch})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Path, "lost+found") {
			names = append(names, e.Path)
		}
	}
	if len(names) != len(tree) {
		t.Errorf("files: %v, want the %d names of %v", names, len(tree), tree)
	}
	leftovers(t, scratch, img)
	dest := filepath.Join(dir, "out")
	os.MkdirAll(dest+"/etc", 0o755)
	write(t, dest+"/etc/hosts", "old local copy\n", 0o644)
	out, err := Extract(ctx, backup, []string{"/etc/hosts", "data", "data/random.bin", "home/u/notes.txt"}, dest, Options{Scratch: scratch})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 4 {
		t.Errorf("extract: %v", out)
	}
	got := snapshot(t, dest)
	for _, p := range []string{"etc/hosts", "data", "data/random.bin", "data/hosts-link", "home/u/notes.txt", "home/u"} {
		if got[p] != tree[p] {
			t.Errorf("extracted %s: %q, want %q", p, got[p], tree[p])
		}
	}
	if fi, err := os.Stat(dest + "/etc/hosts"); err != nil || !fi.ModTime().Equal(time.Date(2020, 5, 6, 7, 8, 9, 0, time.UTC)) {
		t.Errorf("mtime not kept: %v %v", fi.ModTime(), err)
	}
	if _, err := os.Stat(dest + "/etc/secret"); err == nil {
		t.Error("extracted a name not asked for")
	}
	leftovers(t, scratch, img)
	_, err = Extract(ctx, backup, []string{"etc/hosts", "etc/shadow"}, dest, Options{Scratch: scratch})
	if err == nil || !strings.Contains(err.Error(), "not in the backup: etc/shadow") {
		t.Errorf("missing name: %v", err)
	}
	// Going through a symbolic link of the image is not "in the backup".
	_, err = Extract(ctx, backup, []string{"data/hosts-link/x"}, dest, Options{Scratch: scratch})
	if err == nil || !strings.Contains(err.Error(), "not in the backup") {
		t.Errorf("through a link: %v", err)
	}
	leftovers(t, scratch, img)
}

func TestAttachRefusesWhatIsNotADiskImage(t *testing.T) {
	needTools(t, "losetup", "mount", "umount")
	dir := t.TempDir()
	scratch := filepath.Join(dir, "scratch")
	os.Mkdir(scratch, 0o755)
	junk := filepath.Join(dir, "junk.img")
	b := make([]byte, 4<<20)
	rand.Read(b)
	b[510], b[511] = 0, 0 // (1 in 65536: random bytes that look like an MBR)
	os.WriteFile(junk, b, 0o644)
	t.Cleanup(func() { leftovers(t, scratch, junk) })
	_, err := Attach(context.Background(), junk, Options{Scratch: scratch})
	if err == nil || !strings.Contains(err.Error(), "not a disk image: no partition table and no filesystem mount recognises") {
		t.Fatalf("junk: %v", err)
	}
	t.Logf("refused: %v", err)
	leftovers(t, scratch, junk)
	// The same bytes as a compressed backup: the temporary image goes too.
	bk := filepath.Join(dir, "junk.img.zst")
	f, _ := os.Open(junk)
	writeBackup(t, f, bk, "zstd", "file", day1, nil)
	f.Close()
	if _, err := Attach(context.Background(), bk, Options{Scratch: scratch}); err == nil || !strings.Contains(err.Error(), "not a disk image") {
		t.Fatalf("junk backup: %v", err)
	}
	leftovers(t, scratch, junk)
}

// Choosing a partition needs no root: only the table is read.
func TestChoosePartition(t *testing.T) {
	testenv.NeedCommand(t, "sfdisk")
	dir := t.TempDir()
	img := filepath.Join(dir, "d.img")
	f, _ := os.Create(img)
	f.Truncate(8 << 20)
	f.Close()
	sf := osexec.Command("sfdisk", "-q", img)
	sf.Stdin = strings.NewReader("label: dos\nstart=2048, size=4096, type=83\nstart=6144, size=4096, type=83\n")
	if out, err := sf.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v %s", err, out)
	}
	_, _, err := choosePartition(img, 0)
	if err == nil || !strings.Contains(err.Error(), "several partitions, give one with partition=N: 1 (linux, 2 MiB), 2 (linux, 2 MiB)") {
		t.Errorf("two Linux partitions: %v", err)
	}
	p, whole, err := choosePartition(img, 2)
	if err != nil || whole || p.Start != 6144*512 {
		t.Errorf("partition 2: %+v %v %v", p, whole, err)
	}
	raw := filepath.Join(dir, "raw.img")
	os.WriteFile(raw, make([]byte, 4096), 0o644)
	if p, whole, err := choosePartition(raw, 0); err != nil || !whole || p.Size != 4096 {
		t.Errorf("raw: %+v %v %v", p, whole, err)
	}
	if _, _, err := choosePartition(raw, 1); err == nil || !strings.Contains(err.Error(), "no partition table") {
		t.Errorf("raw, partition 1: %v", err)
	}
}
