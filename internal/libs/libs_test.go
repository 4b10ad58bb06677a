package libs

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type entry struct {
	name, body, link string
	typ              byte
}

func writeTar(t *testing.T, path string, gz bool, ents ...entry) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Mode: 0o644, Typeflag: e.typ, Linkname: e.link}
		if e.typ == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if h.Typeflag == tar.TypeDir {
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	if gz {
		var z bytes.Buffer
		zw := gzip.NewWriter(&z)
		zw.Write(b)
		zw.Close()
		b = z.Bytes()
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustInstall(t *testing.T, spec, dir string, o Options) *Result {
	t.Helper()
	src, err := ParseSource(spec)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Install(context.Background(), src, dir, o)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// onlyLock asserts that dir holds nothing but the lock file(s): no library,
// no leftover temporary directory.
func onlyLock(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Name() != LockFile && e.Name() != "."+LockFile+".lock" {
			t.Errorf("%s left in %s", e.Name(), dir)
		}
	}
	lk, err := ReadLock(dir)
	if err != nil || len(lk.Libraries) != 0 {
		t.Errorf("lock: %v %+v", err, lk)
	}
}

func TestTarballInstallStripsTopDir(t *testing.T) {
	tmp := t.TempDir()
	tgz := filepath.Join(tmp, "hanoi-1.2.0.tar.gz")
	writeTar(t, tgz, true,
		entry{name: "hanoi-1.2.0/", typ: tar.TypeDir},
		entry{name: "hanoi-1.2.0/init.lua", body: "return {}\n"},
		entry{name: "hanoi-1.2.0/sub/x.lua", body: "return 1\n"})
	dir := filepath.Join(tmp, "lib")
	r := mustInstall(t, tgz, dir, Options{})
	if r.Name != "hanoi" || !strings.HasPrefix(r.Entry.Revision, "sha256:") || r.Entry.Kind != "tar" {
		t.Fatalf("%+v %+v", r, r.Entry)
	}
	if b, _ := os.ReadFile(tgz); r.Entry.Revision != "sha256:"+Hash(b) {
		t.Fatalf("revision %s is not the tarball's sha256", r.Entry.Revision)
	}
	if len(r.Entry.Files) != 2 || r.Entry.Files["sub/x.lua"] != Hash([]byte("return 1\n")) {
		t.Fatalf("files %v", r.Entry.Files)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "hanoi", "init.lua")); err != nil || string(b) != "return {}\n" {
		t.Fatalf("%q %v", b, err)
	}
	lk, _ := ReadLock(dir)
	if ps, err := lk.Verify(dir, "hanoi"); err != nil || len(ps) != 0 {
		t.Fatalf("%v %v", ps, err)
	}
}

func TestTarballEscapesRefused(t *testing.T) {
	cases := []struct {
		name string
		ents []entry
		want string
	}{
		{"dotdot", []entry{{name: "init.lua", body: "return 1"}, {name: "../evil", body: "x"}}, `"../evil" escapes the library directory`},
		{"nested dotdot", []entry{{name: "init.lua", body: "return 1"}, {name: "a/../../evil", body: "x"}}, "escapes the library directory"},
		{"absolute", []entry{{name: "init.lua", body: "return 1"}, {name: "/tmp/evil", body: "x"}}, `"/tmp/evil" is an absolute path`},
		{"symlink out", []entry{{name: "init.lua", body: "return 1"}, {name: "evil", typ: tar.TypeSymlink, link: "../../evil"}, {name: "evil/x", body: "x"}}, "is a symlink"},
		{"symlink abs", []entry{{name: "etc", typ: tar.TypeSymlink, link: "/etc"}, {name: "init.lua", body: "return 1"}}, "is a symlink"},
		{"hardlink out", []entry{{name: "init.lua", body: "return 1"}, {name: "passwd", typ: tar.TypeLink, link: "/etc/passwd"}}, "is a hard link"},
		{"device", []entry{{name: "init.lua", body: "return 1"}, {name: "sda", typ: tar.TypeBlock}}, "not a file or directory"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tmp := t.TempDir()
			parent := filepath.Join(tmp, "parent")
			dir := filepath.Join(parent, "lib")
			tarball := filepath.Join(tmp, "bad.tar")
			writeTar(t, tarball, c.name == "absolute", c.ents...)
			src, err := ParseSource(tarball)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Install(context.Background(), src, dir, Options{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want %q", err, c.want)
			}
			onlyLock(t, dir)
			for _, p := range []string{filepath.Join(parent, "evil"), filepath.Join(tmp, "evil")} {
				if _, err := os.Lstat(p); err == nil {
					t.Errorf("%s written", p)
				}
			}
		})
	}
}

func TestDirInstallVerifyNamesEveryChange(t *testing.T) {
	tmp := t.TempDir()
	src := filepath.Join(tmp, "mylib")
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "init.lua"), []byte("return {}\n"), 0o644)
	os.WriteFile(filepath.Join(src, "a.lua"), []byte("return 'a'\n"), 0o644)
	os.WriteFile(filepath.Join(src, "sub", "b.lua"), []byte("return 'b'\n"), 0o644)
	dir := filepath.Join(tmp, "lib")
	r := mustInstall(t, src, dir, Options{})
	if r.Name != "mylib" || r.Entry.Revision != "dir" || r.Entry.Kind != "dir" {
		t.Fatalf("%+v", r.Entry)
	}
	// Installing again without --force is refused and changes nothing.
	s, _ := ParseSource(src)
	if _, err := Install(context.Background(), s, dir, Options{}); err == nil || !strings.Contains(err.Error(), "already installed") {
		t.Fatalf("second install: %v", err)
	}
	lib := filepath.Join(dir, "mylib")
	os.WriteFile(filepath.Join(lib, "a.lua"), []byte("os.execute('rm -rf /')\n"), 0o644)
	os.Remove(filepath.Join(lib, "sub", "b.lua"))
	os.WriteFile(filepath.Join(lib, "extra.lua"), []byte("x"), 0o644)
	lk, _ := ReadLock(dir)
	ps, err := lk.Verify(dir, "mylib")
	if err != nil {
		t.Fatal(err)
	}
	if got := Problems(ps); got != "a.lua changed, extra.lua added, sub/b.lua missing" {
		t.Fatalf("problems: %s", got)
	}
	// Update re-copies the recorded source.
	if _, err := Update(context.Background(), dir, "mylib"); err != nil {
		t.Fatal(err)
	}
	lk, _ = ReadLock(dir)
	if ps, err := lk.Verify(dir, "mylib"); err != nil || len(ps) != 0 {
		t.Fatalf("after update: %v %v", ps, err)
	}
	if err := Remove(dir, "mylib"); err != nil {
		t.Fatal(err)
	}
	onlyLock(t, dir)
	if err := Remove(dir, "mylib"); err == nil || !strings.Contains(err.Error(), "no library mylib") {
		t.Fatalf("second remove: %v", err)
	}
}

func TestDirWithSymlinkRefused(t *testing.T) {
	tmp := t.TempDir()
	src := filepath.Join(tmp, "mylib")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "init.lua"), []byte("return {}\n"), 0o644)
	os.Symlink("/etc/passwd", filepath.Join(src, "passwd"))
	dir := filepath.Join(tmp, "lib")
	s, _ := ParseSource(src)
	if _, err := Install(context.Background(), s, dir, Options{}); err == nil || !strings.Contains(err.Error(), "passwd is a symlink") {
		t.Fatalf("%v", err)
	}
	onlyLock(t, dir)
}

func TestParseSourceAndNames(t *testing.T) {
	tmp := t.TempDir()
	os.MkdirAll(filepath.Join(tmp, "plain"), 0o755)
	os.MkdirAll(filepath.Join(tmp, "repo", ".git"), 0o755)
	os.WriteFile(filepath.Join(tmp, "x.tgz"), nil, 0o644)
	os.WriteFile(filepath.Join(tmp, "notes.txt"), nil, 0o644)
	cases := []struct {
		spec, kind, ref, name, err string
	}{
		{spec: "https://example.org/site/hanoi.git@v1.0", kind: "git", ref: "v1.0", name: "hanoi"},
		{spec: "git@github.com:site/retention.git", kind: "git", name: "retention"},
		{spec: "git@github.com:site/retention.git@main", kind: "git", ref: "main", name: "retention"},
		{spec: filepath.Join(tmp, "repo") + "@v2", kind: "git", ref: "v2", name: "repo"},
		{spec: filepath.Join(tmp, "plain"), kind: "dir", name: "plain"},
		{spec: filepath.Join(tmp, "x.tgz"), kind: "tar", name: "x"},
		{spec: filepath.Join(tmp, "plain") + "@v1", err: "needs a git repository"},
		{spec: filepath.Join(tmp, "nosuch"), err: "no such file or directory"},
		{spec: filepath.Join(tmp, "notes.txt"), err: "not a git repository, a directory or a .tar"},
	}
	for _, c := range cases {
		s, err := ParseSource(c.spec)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: err %v, want %q", c.spec, err, c.err)
			}
			continue
		}
		if err != nil || s.Kind != c.kind || s.Ref != c.ref || DefaultName(s) != c.name {
			t.Errorf("%s: %+v %q %v", c.spec, s, DefaultName(s), err)
		}
	}
	for _, bad := range []string{"bkrun", "a.b", "1x", "", "../x"} {
		if CheckName(bad) == nil {
			t.Errorf("name %q accepted", bad)
		}
	}
}
