package stream

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/bkrun/bkrun/internal/testenv"
)

// backup writes data as a committed backup with its catalogue entry.
func backup(t *testing.T, path string, data []byte, codec string) *Meta {
	t.Helper()
	enc, _ := NewEncoder(codec)
	sink, err := CreateFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	st, err := Copy(context.Background(), &memSource{data: data}, sink, CopyOptions{Encoder: enc})
	if err != nil {
		t.Fatal(err)
	}
	m := &Meta{Format: MetaFormat, Source: "mem", Size: st.Size, Codec: codec, BlockSize: BlockSize,
		HashAlgo: HashAlgo, Hash: st.Hash, BytesWritten: st.BytesWritten}
	if err := sink.Commit(m); err != nil {
		t.Fatal(err)
	}
	return m
}

func onlyFiles(t *testing.T, dir string, want ...string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("%s holds %v, want %v", dir, got, want)
	}
}

func TestRestoreRoundTripIsSparseAndVerified(t *testing.T) {
	for _, codec := range Codecs {
		t.Run(codec, func(t *testing.T) {
			dir := t.TempDir()
			data := mixed(12, 5000)
			img := filepath.Join(dir, "disk.img.x")
			backup(t, img, data, codec)
			onlyFiles(t, dir, "disk.img.x", "disk.img.x.json")
			if _, st, err := Verify(context.Background(), img, nil); err != nil || st.Size != int64(len(data)) {
				t.Fatalf("verify: %v", err)
			}
			target := filepath.Join(dir, "restored")
			st, err := Restore(context.Background(), img, target, RestoreOptions{})
			if err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(target)
			if !bytes.Equal(got, data) {
				t.Fatal("restored bytes differ")
			}
			var sys syscall.Stat_t
			syscall.Stat(target, &sys)
			if alloc := sys.Blocks * 512; alloc >= int64(len(data))*3/4 {
				t.Errorf("restored file allocates %d of %d bytes: zero blocks were written, not holes", alloc, len(data))
			}
			if st.Hash == "" || st.ZeroBytes != 6*BlockSize {
				t.Errorf("stats %+v", st)
			}
			if _, err := Restore(context.Background(), img, target, RestoreOptions{}); err == nil || !strings.Contains(err.Error(), "already exists") {
				t.Errorf("restore over an existing file: %v", err)
			}
			if _, err := Restore(context.Background(), img, target, RestoreOptions{Overwrite: true}); err != nil {
				t.Errorf("overwrite: %v", err)
			}
			onlyFiles(t, dir, "disk.img.x", "disk.img.x.json", "restored")
		})
	}
}

func TestTrailingZerosKeepTheSize(t *testing.T) {
	dir := t.TempDir()
	data := make([]byte, 3*BlockSize+17)
	data[0] = 1
	img := filepath.Join(dir, "z.lz4")
	backup(t, img, data, "lz4")
	target := filepath.Join(dir, "out")
	if _, err := Restore(context.Background(), img, target, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(target); !bytes.Equal(got, data) {
		t.Fatalf("restored %d bytes, want %d", len(got), len(data))
	}
}

// A damaged backup fails with a clear error and leaves nothing: no target,
// no temporary file, the old target (if any) untouched.
func TestCorruptOrTruncatedBackups(t *testing.T) {
	data := mixed(8, 100)
	for _, codec := range []string{"lz4", "zstd", "none"} {
		base := t.TempDir()
		img := filepath.Join(base, "good")
		backup(t, img, data, codec)
		good, _ := os.ReadFile(img)
		cases := map[string]func(dir, img string){
			"flipped byte": func(dir, img string) {
				b := append([]byte(nil), good...)
				b[len(b)/3] ^= 0x55
				os.WriteFile(img, b, 0o644)
			},
			"cut mid-stream": func(dir, img string) {
				os.WriteFile(img, good[:len(good)/2], 0o644)
				patchMeta(t, img, func(m *Meta) { m.BytesWritten = int64(len(good) / 2) })
			},
			"cut before the end mark": func(dir, img string) {
				n := len(good) - 4
				os.WriteFile(img, good[:n], 0o644)
				patchMeta(t, img, func(m *Meta) { m.BytesWritten = int64(n) })
			},
			"catalogue of another image": func(dir, img string) {
				patchMeta(t, img, func(m *Meta) { m.BytesWritten++ })
			},
			"catalogue with another hash": func(dir, img string) {
				patchMeta(t, img, func(m *Meta) { m.Hash = strings.Repeat("0", 64) })
			},
			"missing catalogue": func(dir, img string) { os.Remove(MetaPath(img)) },
		}
		for name, damage := range cases {
			t.Run(codec+"/"+name, func(t *testing.T) {
				dir := t.TempDir()
				img := filepath.Join(dir, "img")
				os.WriteFile(img, good, 0o644)
				b, _ := os.ReadFile(MetaPath(filepath.Join(base, "good")))
				os.WriteFile(MetaPath(img), b, 0o644)
				damage(dir, img)
				target := filepath.Join(dir, "target")
				os.WriteFile(target, []byte("previous good restore"), 0o644)
				_, err := Restore(context.Background(), img, target, RestoreOptions{Overwrite: true})
				if err == nil {
					t.Fatal("damaged backup restored without error")
				}
				if !strings.Contains(err.Error(), img) {
					t.Errorf("error does not name the backup: %v", err)
				}
				if name != "missing catalogue" && !errors.Is(err, ErrCorrupt) {
					t.Errorf("not ErrCorrupt: %v", err)
				}
				if b, _ := os.ReadFile(target); string(b) != "previous good restore" {
					t.Error("the previous target was touched")
				}
				ents, _ := os.ReadDir(dir)
				for _, e := range ents {
					if strings.Contains(e.Name(), "partial") {
						t.Errorf("left behind %s", e.Name())
					}
				}
				if _, _, err := Verify(context.Background(), img, nil); err == nil {
					t.Error("verify passed")
				}
			})
		}
	}
}

func patchMeta(t *testing.T, img string, f func(*Meta)) {
	m, err := ReadMeta(MetaPath(img))
	if err != nil {
		t.Fatal(err)
	}
	f(m)
	writeMetaFile(t, MetaPath(img), m)
}

func TestFileSinkRefusals(t *testing.T) {
	dir := t.TempDir()
	if _, err := CreateFile("/nonexistent-dir/x.lz4", false); err == nil || err.Error() != "/nonexistent-dir/x.lz4: directory /nonexistent-dir does not exist" {
		t.Errorf("missing dir: %v", err)
	}
	p := filepath.Join(dir, "x")
	os.WriteFile(p, []byte("old"), 0o644)
	if _, err := CreateFile(p, false); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("existing: %v", err)
	}
	if _, err := CreateFile(dir, true); err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("dir: %v", err)
	}
}

// A full disk while writing: the error names ENOSPC, the temporary file is
// removed and the previous backup is untouched.
func TestFullDiskLeavesPreviousBackup(t *testing.T) {
	testenv.NeedRoot(t)
	dir := t.TempDir()
	err := exec.Command("mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", dir).Run()
	testenv.Need(t, err == nil, "mount -t tmpfs (root, mount namespace allows it)")
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	img := filepath.Join(dir, "disk.img")
	small := mixed(2, 0)
	backup(t, img, small, "none")
	sink, err := CreateFile(img, true)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Copy(context.Background(), &memSource{data: mixed(12, 0)}, sink, CopyOptions{})
	sink.Abort()
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("err = %v, want ENOSPC", err)
	}
	onlyFiles(t, dir, "disk.img", "disk.img.json")
	if got, _ := os.ReadFile(img); !bytes.Equal(got, small) {
		t.Error("previous backup changed")
	}
}

func writeMetaFile(t *testing.T, path string, m *Meta) {
	t.Helper()
	b, err := jsonMarshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// An output never replaces a device node or a symlink, even with
// overwrite: renaming over /dev/null would destroy it.
func TestFileSinkNeverReplacesSpecialFiles(t *testing.T) {
	if _, err := CreateFile("/dev/null", true); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("/dev/null: %v", err)
	}
	dir := t.TempDir()
	link := filepath.Join(dir, "link")
	os.Symlink("/etc/passwd", link)
	if _, err := CreateFile(link, true); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("symlink: %v", err)
	}
}
