package fs

import (
	"bytes"
	"errors"
	"fmt"
	iofs "io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bkrun/bkrun/internal/testenv"
)

// mountTmpfs mounts a tmpfs of the given size on dir for the test; it
// skips (fails under BKRUN_INTEGRATION=1) when mounting is not allowed.
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size)
	testenv.Need(t, err == nil, fmt.Sprintf("mounting a tmpfs (root or CAP_SYS_ADMIN): %v", err))
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// tree lists every path under dir with its type, size and contents, to show
// that something changed nothing.
func tree(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		b.WriteString(rel + " " + fi.Mode().String())
		if fi.Mode().IsRegular() {
			data, _ := os.ReadFile(p)
			b.WriteString(" " + string(data))
		}
		b.WriteString("\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func wantErr(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %q", want)
	}
	if err.Error() != want {
		t.Fatalf("error\n got: %s\nwant: %s", err, want)
	}
}

func TestExists(t *testing.T) {
	d := t.TempDir()
	writeFile(t, d+"/file", "x")
	if err := os.Symlink(d+"/nowhere", d+"/dangling"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path string
		want bool
	}{
		{d, true}, {d + "/file", true}, {d + "/dangling", true}, {d + "/missing", false}, {d + "/missing/deeper", false},
	} {
		got, err := Exists(c.path)
		if err != nil || got != c.want {
			t.Errorf("Exists(%s) = %v, %v; want %v", c.path, got, err, c.want)
		}
	}
	// A file where a directory should be is not "does not exist".
	_, err := Exists(d + "/file/x")
	wantErr(t, err, d+"/file/x: not a directory")
	if !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("error does not wrap ENOTDIR: %v", err)
	}
}

func TestStat(t *testing.T) {
	d := t.TempDir()
	writeFile(t, d+"/file", "hello")
	if err := os.Chown(d+"/file", 1234, 5678); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d+"/file", os.ModeSetuid|0750); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2012, 3, 4, 5, 6, 7, 0, time.UTC)
	if err := os.Chtimes(d+"/file", mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("file", d+"/link"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(d+"/fifo", 0600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", d+"/sock")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	st, err := Stat(d+"/file", false)
	if err != nil {
		t.Fatal(err)
	}
	want := Info{Type: "file", Size: 5, Mode: 04750, Mtime: mtime.Unix(), UID: 1234, GID: 5678}
	if *st != want {
		t.Errorf("Stat(file) = %+v, want %+v", *st, want)
	}
	for path, typ := range map[string]string{
		d: "dir", d + "/link": "symlink", d + "/fifo": "fifo", d + "/sock": "socket", "/dev/null": "chardev",
	} {
		st, err := Stat(path, false)
		if err != nil || st == nil || st.Type != typ {
			t.Errorf("Stat(%s) = %+v, %v; want type %s", path, st, err, typ)
		}
	}
	if st, _ := Stat(d+"/link", true); st == nil || st.Type != "file" || st.Size != 5 {
		t.Errorf("Stat(link, follow) = %+v, want the file", st)
	}
	if blocks, _ := filepath.Glob("/dev/loop[0-9]*"); len(blocks) > 0 {
		if st, _ := Stat(blocks[0], false); st == nil || st.Type != "device" {
			t.Errorf("Stat(%s) = %+v, want type device", blocks[0], st)
		}
	}
	if st, err := Stat(d+"/missing", false); st != nil || err != nil {
		t.Errorf("Stat(missing) = %+v, %v; want nil, nil", st, err)
	}
	_, err = Stat(d+"/file/x", false)
	wantErr(t, err, d+"/file/x: not a directory")
}

func TestMkdir(t *testing.T) {
	d := t.TempDir()
	old := syscall.Umask(077)
	defer syscall.Umask(old)

	if err := Mkdir(d+"/a/b/c", 0755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/a", "/a/b", "/a/b/c"} {
		fi, err := os.Stat(d + p)
		if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0755 {
			t.Errorf("%s: %v %v, want a 0755 directory despite umask 077", p, fi.Mode(), err)
		}
	}
	// Existing directories are fine and keep their mode.
	if err := os.Chmod(d+"/a", 0700); err != nil {
		t.Fatal(err)
	}
	if err := Mkdir(d+"/a", 0755); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(d + "/a"); fi.Mode().Perm() != 0700 {
		t.Errorf("existing dir mode changed to %v", fi.Mode().Perm())
	}
	// Sticky and setgid bits are applied too.
	if err := Mkdir(d+"/shared", os.ModeSticky|os.ModeSetgid|0777); err != nil {
		t.Fatal(err)
	}
	if st, _ := Stat(d+"/shared", false); st.Mode != 03777 {
		t.Errorf("shared: mode %o, want 3777", st.Mode)
	}

	writeFile(t, d+"/file", "x")
	wantErr(t, Mkdir(d+"/file", 0755), d+"/file: exists and is a file, not a directory")
	wantErr(t, Mkdir(d+"/file/x/y", 0755), d+"/file/x/y: "+d+"/file is not a directory")
	if _, err := os.Lstat(d + "/file/x"); err == nil {
		t.Error("something was created under a file")
	}
}

func TestListGlob(t *testing.T) {
	d := t.TempDir()
	for _, n := range []string{"b.lz4", "a.lz4", "c.txt", ".hidden"} {
		writeFile(t, d+"/"+n, n)
	}
	if err := os.Mkdir(d+"/sub", 0755); err != nil {
		t.Fatal(err)
	}
	names, err := List(d)
	if err != nil || strings.Join(names, ",") != ".hidden,a.lz4,b.lz4,c.txt,sub" {
		t.Errorf("List = %q, %v", names, err)
	}
	_, err = List(d + "/missing")
	wantErr(t, err, d+"/missing: no such file or directory")

	m, err := Glob(d + "/*.lz4")
	if err != nil || strings.Join(m, ",") != d+"/a.lz4,"+d+"/b.lz4" {
		t.Errorf("Glob = %q, %v", m, err)
	}
	if m, err := Glob(d + "/*.none"); err != nil || len(m) != 0 {
		t.Errorf("Glob(no match) = %q, %v", m, err)
	}
	_, err = Glob(d + "/[")
	wantErr(t, err, `"`+d+`/[": syntax error in pattern`)
}

func TestRemove(t *testing.T) {
	d := t.TempDir()
	writeFile(t, d+"/file", "x")
	if err := os.MkdirAll(d+"/full/sub", 0755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, d+"/full/sub/f", "x")
	if err := os.Mkdir(d+"/empty", 0755); err != nil {
		t.Fatal(err)
	}

	for _, p := range []string{d + "/file", d + "/empty", d + "/missing", d + "/missing/deeper"} {
		if err := Remove(p, false); err != nil {
			t.Errorf("Remove(%s): %v", p, err)
		}
		if ok, _ := Exists(p); ok {
			t.Errorf("%s still exists", p)
		}
	}
	wantErr(t, Remove(d+"/full", false), d+"/full: directory not empty (use recursive=true to remove a tree)")
	if err := Remove(d+"/full", true); err != nil {
		t.Fatal(err)
	}
	if ok, _ := Exists(d + "/full"); ok {
		t.Error("full still exists")
	}
	if err := Remove(d+"/full", true); err != nil {
		t.Errorf("recursive removal of a missing path: %v", err)
	}

	wantErr(t, Remove("", true), "refusing to remove an empty path recursively")
	// A symlink to / with a trailing slash would make RemoveAll descend into
	// /. (Checked on checkNoMounts alone: a failing test must not rm -rf /.)
	if err := os.Symlink("/", d+"/rootlink"); err != nil {
		t.Fatal(err)
	}
	wantErr(t, checkNoMounts(d+"/rootlink/"), `refusing to remove "`+d+`/rootlink/" recursively: it is /`)
	for _, p := range []string{"/", "//", "/tmp/..", ".", "..", "./"} {
		if err := Remove(p, true); err == nil || !strings.HasPrefix(err.Error(), "refusing to remove") {
			t.Errorf("Remove(%q, recursive) = %v, want a refusal", p, err)
		}
	}
}

func TestRemoveRefusesMountPoints(t *testing.T) {
	d := t.TempDir()
	if err := os.MkdirAll(d+"/tmp/mnt", 0755); err != nil {
		t.Fatal(err)
	}
	mountTmpfs(t, d+"/tmp/mnt", "64k")
	writeFile(t, d+"/tmp/mnt/precious", "snapshot data")
	before := tree(t, d)
	wantErr(t, Remove(d+"/tmp", true), d+"/tmp: not removing: "+d+"/tmp/mnt is a mount point (unmount it first)")
	wantErr(t, Remove(d+"/tmp/mnt", true), d+"/tmp/mnt: not removing: "+d+"/tmp/mnt is a mount point (unmount it first)")
	if after := tree(t, d); after != before {
		t.Errorf("refused removal changed the tree:\n%s\nwas:\n%s", after, before)
	}
	// The same-device fallback (no /proc) finds it too.
	wantErr(t, checkSameDevice(d+"/tmp"), d+"/tmp: not removing: "+d+"/tmp/mnt is a mount point (unmount it first)")
}

func TestRename(t *testing.T) {
	d := t.TempDir()
	writeFile(t, d+"/new", "new")
	writeFile(t, d+"/old", "old")
	if err := Rename(d+"/new", d+"/old"); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, d+"/old"); got != "new" {
		t.Errorf("old = %q", got)
	}
	err := Rename(d+"/new", d+"/x")
	wantErr(t, err, d+"/new -> "+d+"/x: no such file or directory")
	if !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("%v does not wrap ErrNotExist", err)
	}
}

func TestRenameAcrossFileSystems(t *testing.T) {
	d := t.TempDir()
	if err := os.Mkdir(d+"/mnt", 0755); err != nil {
		t.Fatal(err)
	}
	mountTmpfs(t, d+"/mnt", "64k")
	writeFile(t, d+"/f", "x")
	wantErr(t, Rename(d+"/f", d+"/mnt/f"),
		d+"/f -> "+d+"/mnt/f: invalid cross-device link (rename works within one file system; copy instead)")
}

func TestRead(t *testing.T) {
	d := t.TempDir()
	writeFile(t, d+"/f", "0123456789")
	if b, err := Read(d+"/f", 10); err != nil || string(b) != "0123456789" {
		t.Errorf("Read = %q, %v", b, err)
	}
	_, err := Read(d+"/f", 9)
	wantErr(t, err, d+"/f: larger than 9 bytes (max); read files this big as a stream, not into memory")
	var tl *TooLargeError
	if !errors.As(err, &tl) {
		t.Errorf("%T is not a *TooLargeError", err)
	}
	// /proc files report size 0: the limit is enforced while reading.
	_, err = Read("/proc/self/status", 16)
	wantErr(t, err, "/proc/self/status: larger than 16 bytes (max); read files this big as a stream, not into memory")
	big := bytes.Repeat([]byte("x"), DefaultMaxRead+1)
	if err := os.WriteFile(d+"/big", big, 0644); err != nil {
		t.Fatal(err)
	}
	_, err = Read(d+"/big", 0)
	wantErr(t, err, d+"/big: larger than 16 MiB (max); read files this big as a stream, not into memory")
	_, err = Read(d+"/missing", 0)
	wantErr(t, err, d+"/missing: no such file or directory")
	_, err = Read(d, 0)
	wantErr(t, err, d+": is a directory")
}

func TestWrite(t *testing.T) {
	d := t.TempDir()
	old := syscall.Umask(077)
	defer syscall.Umask(old)

	if err := Write(d+"/f", []byte("one"), 0644, true); err != nil {
		t.Fatal(err)
	}
	if err := Write(d+"/f", []byte("two"), 0640, false); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, d+"/f"); got != "two" {
		t.Errorf("contents %q", got)
	}
	if fi, _ := os.Stat(d + "/f"); fi.Mode() != 0640 {
		t.Errorf("mode %v, want 0640 exactly (umask 077 must not apply)", fi.Mode())
	}
	// A symlink at the target is replaced, its target is left alone.
	writeFile(t, d+"/target", "keep")
	if err := os.Symlink("target", d+"/link"); err != nil {
		t.Fatal(err)
	}
	if err := Write(d+"/link", []byte("new"), 0644, true); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, d+"/target"); got != "keep" {
		t.Errorf("symlink target overwritten: %q", got)
	}
	if st, _ := Stat(d+"/link", false); st.Type != "file" {
		t.Errorf("link is now a %s, want a file", st.Type)
	}
	// Relative paths write next to the target in the current directory.
	t.Chdir(d)
	if err := Write("rel", []byte("r"), 0644, true); err != nil {
		t.Fatal(err)
	}
	if names, _ := List(d); strings.Join(names, ",") != "f,link,rel,target" {
		t.Errorf("left behind: %q", names)
	}
}

func TestWriteFailureLeavesTargetAlone(t *testing.T) {
	d := t.TempDir()
	// Root ignores permissions, so use a parent that is a file.
	writeFile(t, d+"/file", "x")
	err := Write(d+"/file/f", []byte("data"), 0644, true)
	wantErr(t, err, d+"/file/f: create temp file: not a directory")

	// Writing over a directory fails at the rename: the temp file goes.
	if err := os.Mkdir(d+"/dir", 0755); err != nil {
		t.Fatal(err)
	}
	err = Write(d+"/dir", []byte("data"), 0644, true)
	if err == nil || !regexp.MustCompile(`^`+regexp.QuoteMeta(d)+`/dir: rename temp file \.dir\.tmp-\d+: is a directory$`).MatchString(err.Error()) {
		t.Errorf("Write over a dir: %v", err)
	}
	if names, _ := List(d); strings.Join(names, ",") != "dir,file" {
		t.Errorf("temp file left behind: %q", names)
	}
	wantErr(t, Write(d+"/", nil, 0644, true), d+"/: not a file name")
}

func TestWriteFullFileSystem(t *testing.T) {
	d := t.TempDir()
	mnt := d + "/mnt"
	if err := os.Mkdir(mnt, 0755); err != nil {
		t.Fatal(err)
	}
	mountTmpfs(t, mnt, "64k")
	if err := Write(mnt+"/backup.conf", []byte("previous good"), 0600, true); err != nil {
		t.Fatal(err)
	}
	// Fill the file system, leaving too little for the new version.
	filler := bytes.Repeat([]byte{0}, 4096)
	f, err := os.Create(mnt + "/filler")
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := f.Write(filler); err != nil {
			break
		}
	}
	f.Close()
	if err := os.Truncate(mnt+"/filler", mustSize(t, mnt+"/filler")-8192); err != nil {
		t.Fatal(err)
	}
	err = Write(mnt+"/backup.conf", bytes.Repeat([]byte("n"), 32<<10), 0600, true)
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(mnt) + `/backup\.conf: write temp file \.backup\.conf\.tmp-\d+: no space left on device$`)
	if err == nil || !re.MatchString(err.Error()) {
		t.Fatalf("Write on a full fs: %v, want %s", err, re)
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("error does not wrap ENOSPC")
	}
	if got := readFile(t, mnt+"/backup.conf"); got != "previous good" {
		t.Errorf("target changed to %q", got)
	}
	if names, _ := List(mnt); strings.Join(names, ",") != "backup.conf,filler" {
		t.Errorf("temp file left behind: %q", names)
	}
	// Its space was given back: a small write still fits.
	if err := Write(mnt+"/backup.conf", []byte("small"), 0600, true); err != nil {
		t.Errorf("small write after the failure: %v", err)
	}
}

func mustSize(t *testing.T, path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func TestTempDir(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	d, err := TempDir("")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^` + regexp.QuoteMeta(tmp) + `/bkrun-\d+$`).MatchString(d) {
		t.Errorf("TempDir = %s", d)
	}
	if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0700 {
		t.Errorf("%s: %v %v, want a private directory", d, fi, err)
	}
	d2, err := TempDir("xen-")
	if err != nil || !strings.HasPrefix(d2, tmp+"/xen-") || d2 == d {
		t.Errorf("TempDir(xen-) = %s, %v", d2, err)
	}
	_, err = TempDir("a/b")
	wantErr(t, err, `prefix "a/b" contains a /`)
}

func TestParseMode(t *testing.T) {
	for s, want := range map[string]os.FileMode{
		"0755": 0755, "755": 0755, "0o600": 0600, "0": 0, "0000": 0,
		"1777": os.ModeSticky | 0777, "4755": os.ModeSetuid | 0755, "2750": os.ModeSetgid | 0750,
	} {
		m, err := ParseMode(s)
		if err != nil || m != want {
			t.Errorf("ParseMode(%q) = %v, %v; want %v", s, m, err, want)
		}
		if back, _ := ParseMode(FormatMode(m)); back != m {
			t.Errorf("FormatMode(%v) = %q does not round-trip", m, FormatMode(m))
		}
	}
	for _, s := range []string{"", "rwx", "0789", "17777", "-1", "0x1ff"} {
		if _, err := ParseMode(s); err == nil {
			t.Errorf("ParseMode(%q) accepted", s)
		}
	}
	if s := FormatMode(0644); s != "0644" {
		t.Errorf("FormatMode(0644) = %s", s)
	}
}

func TestSize(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 bytes", 1023: "1023 bytes", 1024: "1 KiB", 1536: "1.5 KiB", 16 << 20: "16 MiB", 3 << 30: "3 GiB",
	} {
		if got := Size(n); got != want {
			t.Errorf("Size(%d) = %s, want %s", n, got, want)
		}
	}
}
