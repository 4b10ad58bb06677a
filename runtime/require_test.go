package runtime

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bkrun/bkrun/internal/libs"
)

func TestRequireLockedLibrary(t *testing.T) {
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src", "site")
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "init.lua"), []byte("#!/usr/bin/env lua\nreturn {name = 'site'}\n"), 0o644)
	os.WriteFile(filepath.Join(src, "sub", "x.lua"), []byte("return 'x'\n"), 0o644)
	dir := filepath.Join(tmp, "lib")
	s, err := libs.ParseSource(src)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := libs.Install(context.Background(), s, dir, libs.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("BKRUN_PATH", dir)
	run := func(code string) (string, error) {
		var out bytes.Buffer
		h := New(Options{Stdout: &out})
		defer h.Close()
		_, err := h.RunChunk(code, "-e", nil)
		return out.String(), err
	}
	if out, err := run(`print(require("site").name, require("site.sub.x"))`); err != nil || out != "site\tx\n" {
		t.Fatalf("%q %v", out, err)
	}
	os.WriteFile(filepath.Join(dir, "site", "sub", "x.lua"), []byte("return 'evil'\n"), 0o644)
	_, err = run(`require "site"`)
	want := `require "site": library site at ` + filepath.Join(dir, "site") + ` does not match its lock: sub/x.lua changed`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err %v\nwant %q", err, want)
	}
	h := New(Options{})
	defer h.Close()
	if err := h.VerifyLibrary("site"); err == nil || !strings.Contains(err.Error(), "sub/x.lua changed") {
		t.Fatalf("VerifyLibrary: %v", err)
	}
	if err := h.VerifyLibrary("fs"); err != nil {
		t.Fatal(err)
	}
}

func TestEmbeddedNotShadowed(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "bkrun"), 0o755)
	os.WriteFile(filepath.Join(dir, "bkrun", "snapshots.lua"), []byte("error('hijacked')"), 0o644)
	os.WriteFile(filepath.Join(dir, "bkrun", "extra.lua"), []byte("error('hijacked')"), 0o644)
	h := New(Options{ScriptDir: dir})
	defer h.Close()
	if _, err := h.RunChunk(`package.path = "`+dir+`/?.lua;" .. package.path; return require("bkrun.snapshots").stamp(0)`, "-e", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := h.RunChunk(`require "bkrun.extra"`, "-e", nil); err == nil || strings.Contains(err.Error(), "hijacked") {
		t.Fatalf("bkrun.extra: %v", err)
	}
	if where, ok := h.FindLibrary("bkrun.dest"); !ok || where != "built-in library bkrun.dest" {
		t.Fatalf("FindLibrary: %q %v", where, ok)
	}
	if _, ok := h.FindLibrary("bkrun.extra"); ok {
		t.Fatal("FindLibrary found bkrun.extra")
	}
	if len(Embedded()) < 2 {
		t.Fatalf("Embedded: %v", Embedded())
	}
}
