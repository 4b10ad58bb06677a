package recover

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bkrun/bkrun/internal/testenv"
	"github.com/bkrun/bkrun/stdlib/disk"
	"github.com/bkrun/bkrun/stdlib/exec"
	"github.com/bkrun/bkrun/stdlib/stream"
	"golang.org/x/sys/unix"
)

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := osexec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// needTools requires root and the real tools (testenv: a failure under
// BKRUN_INTEGRATION=1).
func needTools(t *testing.T, tools ...string) {
	t.Helper()
	testenv.NeedRoot(t)
	for _, c := range tools {
		testenv.NeedCommand(t, c)
	}
	_, err := os.Stat("/dev/loop-control")
	testenv.Need(t, err == nil, "loop devices (/dev/loop-control)")
}

// day1 is the first simulated day of the catalogues written by the tests.
var day1 = time.Date(2026, 11, 1, 3, 0, 0, 0, time.UTC)

// writeBackup copies src (an io.Reader or a BlockReader) through the same
// path stream.copy takes (Copy into a FileSink, Commit with a catalogue
// entry), with simulated times.
func writeBackup(t *testing.T, src any, to, codec, kind string, at time.Time, extra map[string]any) *stream.Meta {
	t.Helper()
	enc, err := stream.NewEncoder(codec)
	if err != nil {
		t.Fatal(err)
	}
	sink, err := stream.CreateFile(to, false)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Abort()
	st, err := stream.Copy(context.Background(), src, sink, stream.CopyOptions{Encoder: enc})
	if err != nil {
		t.Fatalf("copy to %s: %v", to, err)
	}
	meta := &stream.Meta{
		Format: stream.MetaFormat, Source: fmt.Sprint(src), SourceKind: kind, Size: st.Size, Codec: enc.Name(),
		BlockSize: stream.BlockSize, HashAlgo: stream.HashAlgo, Hash: st.Hash, ZeroBytes: st.ZeroBytes, HoleBytes: st.HoleBytes,
		BytesWritten: st.BytesWritten, Started: at, Finished: at.Add(time.Minute), Seconds: 60,
		Host: "test", BkrunVersion: "test", Extra: extra,
	}
	if err := sink.Commit(meta); err != nil {
		t.Fatal(err)
	}
	return meta
}

// imageBackup backs up an image file as disk-image.lua does.
func imageBackup(t *testing.T, img, to, codec string) {
	t.Helper()
	src, err := disk.Open(img, disk.Options{NoDirect: true})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	writeBackup(t, src, to, codec, "file", day1, nil)
}

// dumpTo runs dump(8) on dev into a backup written through stream, as
// xen-backup.lua does: exec.stream{"dump", "-LEVEL", "-q", "-f", "-", ["-T", date], dev}.
func dumpTo(t *testing.T, dev, to string, level int, base time.Time, at time.Time, baseAt time.Time) {
	t.Helper()
	argv := []string{"dump", fmt.Sprintf("-%d", level), "-q", "-f", "-"}
	b := 0.0
	if level > 0 {
		argv = append(argv, "-T", base.Local().Format("Mon Jan 02 15:04:05 2006"))
		b = float64(baseAt.Unix())
	}
	argv = append(argv, dev)
	src, err := exec.Stream(context.Background(), exec.Cmd{Argv: argv})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	writeBackup(t, src, to, "lz4", "", at, map[string]any{"domain": "vm", "partition": float64(1), "level": float64(level), "base": b})
}

// state is a tree: path -> "dir 0755", "file 0644 <sha256>", "link <target>".
type state map[string]string

func snapshot(t *testing.T, root string, skip ...string) state {
	t.Helper()
	s := state{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		for _, k := range skip {
			if rel == k {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			s[rel] = "link " + l
		case fi.IsDir():
			s[rel] = fmt.Sprintf("dir %o", fi.Mode().Perm())
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			s[rel] = fmt.Sprintf("file %o %s", fi.Mode().Perm(), hex.EncodeToString(sum[:8]))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func diff(want, got state) []string {
	var d []string
	for k, v := range want {
		if g, ok := got[k]; !ok {
			d = append(d, "missing "+k)
		} else if g != v {
			d = append(d, fmt.Sprintf("%s: got %s, want %s", k, g, v))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			d = append(d, "extra "+k)
		}
	}
	return d
}

// ext4 is a real ext4 filesystem in a loop-attached image file.
type ext4 struct {
	img, dev, mnt string
	mounted       bool
}

func newExt4(t *testing.T, dir string) *ext4 {
	t.Helper()
	e := &ext4{img: filepath.Join(dir, "fs.img"), mnt: filepath.Join(dir, "mnt")}
	f, err := os.Create(e.img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 << 20)
	f.Close()
	run(t, "mkfs.ext4", "-q", "-F", e.img)
	e.dev = run(t, "losetup", "--find", "--show", e.img)
	t.Cleanup(func() { osexec.Command("losetup", "-d", e.dev).Run() })
	os.Mkdir(e.mnt, 0o755)
	t.Cleanup(func() {
		if e.mounted {
			osexec.Command("umount", e.mnt).Run()
		}
	})
	e.mount(t)
	return e
}

func (e *ext4) mount(t *testing.T) {
	t.Helper()
	run(t, "mount", e.dev, e.mnt)
	e.mounted = true
}

// umount unmounts and drops the device's page cache, so that dump reads
// what the filesystem wrote, not blocks an earlier dump left cached.
func (e *ext4) umount(t *testing.T) {
	t.Helper()
	run(t, "umount", e.mnt)
	e.mounted = false
	f, err := os.Open(e.dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.BLKFLSBUF, 0); err != nil {
		t.Fatalf("BLKFLSBUF %s: %v", e.dev, err)
	}
}

func write(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, mode)
}

// leftovers reports loop devices, mounts and files a test must not leave.
func leftovers(t *testing.T, scratch string, images ...string) {
	t.Helper()
	if out, _ := osexec.Command("losetup", "-a").Output(); strings.Contains(string(out), scratch) {
		t.Errorf("loop devices left on %s:\n%s", scratch, out)
	}
	for _, img := range images {
		if out, _ := osexec.Command("losetup", "-j", img).Output(); len(out) > 0 {
			t.Errorf("loop devices left on %s: %s", img, out)
		}
	}
	if b, _ := os.ReadFile("/proc/mounts"); strings.Contains(string(b), scratch) {
		t.Errorf("mounts left under %s", scratch)
	}
	if ents, _ := os.ReadDir(scratch); len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("files left in scratch %s: %v", scratch, names)
	}
}
