package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bkrun/bkrun/internal/testenv"
)

// libEnv is the test's environment with HOME in a fresh directory, so that
// bkrun lib installs into HOME/.config/bkrun/lib and require finds it there.
func libEnv(t *testing.T) (env []string, libDir string) {
	home := t.TempDir()
	return append(os.Environ(), "HOME="+home, "BKRUN_PATH="), filepath.Join(home, ".config", "bkrun", "lib")
}

func libGit(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.org",
		"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.org", "GIT_CONFIG_GLOBAL=/dev/null")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
}

func writeLibFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestLibGitLifecycle: a real git repository, tagged; install @tag, a
// recipe uses it; a modified file stops the recipe and verify names it;
// update restores it; remove removes it and its lock entry.
func TestLibGitLifecycle(t *testing.T) {
	testenv.NeedCommand(t, "git")
	env, libDir := libEnv(t)
	repo := filepath.Join(t.TempDir(), "hanoi.git")
	writeLibFile(t, filepath.Join(repo, "init.lua"), "local M = {}\nfunction M.level(day) return require('hanoi.table')[day % 4 + 1] end\nM.version = 'v1'\nreturn M\n")
	writeLibFile(t, filepath.Join(repo, "table.lua"), "return {0, 3, 2, 4}\n")
	libGit(t, repo, "init", "-q")
	libGit(t, repo, "add", ".")
	libGit(t, repo, "commit", "-q", "-m", "v1")
	libGit(t, repo, "tag", "v1")
	writeLibFile(t, filepath.Join(repo, "init.lua"), "return {version = 'v2'}\n")
	libGit(t, repo, "commit", "-q", "-a", "-m", "v2")

	r := bkrunEnv(t, env, "", "lib", "install", repo+"@v1")
	if r.code != 0 || !strings.Contains(r.stdout, "installed hanoi ") {
		t.Fatalf("install: %+v", r)
	}
	var lock struct {
		Libraries map[string]struct {
			Source, Kind, Ref, Revision string
			Files                       map[string]string
		}
	}
	b, err := os.ReadFile(filepath.Join(libDir, "bkrun-lock.json"))
	if err != nil || json.Unmarshal(b, &lock) != nil {
		t.Fatalf("lock: %v\n%s", err, b)
	}
	e := lock.Libraries["hanoi"]
	if e.Source != repo || e.Kind != "git" || e.Ref != "v1" || len(e.Revision) != 40 || len(e.Files) != 2 {
		t.Fatalf("lock entry %+v", e)
	}
	if _, err := os.Stat(filepath.Join(libDir, "hanoi", ".git")); err == nil {
		t.Fatal(".git kept in the installed library")
	}

	recipe := writeScript(t, "local hanoi = require 'hanoi'\nfunction run() print(hanoi.version, hanoi.level(1)) end\n")
	r = bkrunEnv(t, env, "", recipe)
	if r.code != 0 || r.stdout != "v1\t3\n" {
		t.Fatalf("recipe: %+v", r)
	}
	if r = bkrunEnv(t, env, "", "check", recipe); r.code != 0 {
		t.Fatalf("check: %+v", r)
	}

	// Tamper with a file the library loads lazily: the recipe must not run it.
	writeLibFile(t, filepath.Join(libDir, "hanoi", "table.lua"), "os.exit(0)\n")
	r = bkrunEnv(t, env, "", recipe)
	want := "library hanoi at " + filepath.Join(libDir, "hanoi") + " does not match its lock: table.lua changed"
	if r.code == 0 || !strings.Contains(r.stderr, want) || r.stdout != "" {
		t.Fatalf("tampered recipe: %+v\nwant %q", r, want)
	}
	if r = bkrunEnv(t, env, "", "check", recipe); r.code != 2 || !strings.Contains(r.stderr, recipe+":1: require \"hanoi\": "+want) {
		t.Fatalf("check of a tampered library: %+v", r)
	}
	r = bkrunEnv(t, env, "", "lib", "verify")
	if r.code != 1 || !strings.Contains(r.stderr, "hanoi at "+filepath.Join(libDir, "hanoi")+" does not match its lock: table.lua changed") {
		t.Fatalf("verify: %+v", r)
	}
	// A stray hanoi.lua beside the locked library would be found first.
	writeLibFile(t, filepath.Join(libDir, "hanoi.lua"), "return {version = 'evil'}\n")
	r = bkrunEnv(t, env, "", recipe)
	if r.code == 0 || !strings.Contains(r.stderr, "shadows the locked library hanoi") {
		t.Fatalf("shadowing file: %+v", r)
	}
	os.Remove(filepath.Join(libDir, "hanoi.lua"))

	r = bkrunEnv(t, env, "", "lib", "update", "hanoi")
	if r.code != 0 || !strings.Contains(r.stdout, "updated hanoi") {
		t.Fatalf("update: %+v", r)
	}
	if r = bkrunEnv(t, env, "", "lib", "verify", "hanoi"); r.code != 0 || !strings.HasPrefix(r.stdout, "hanoi: ok (2 files, ") {
		t.Fatalf("verify after update: %+v", r)
	}
	if r = bkrunEnv(t, env, "", recipe); r.code != 0 || r.stdout != "v1\t3\n" {
		t.Fatalf("recipe after update: %+v", r)
	}
	r = bkrunEnv(t, env, "", "lib", "list")
	if r.code != 0 || !strings.Contains(r.stdout, "bkrun.dest") || !strings.Contains(r.stdout, repo+"@v1") {
		t.Fatalf("list: %+v", r)
	}

	// Without a ref, the default branch's head: v2.
	if r = bkrunEnv(t, env, "", "lib", "install", repo, "--name", "hanoi2"); r.code != 0 {
		t.Fatalf("install head: %+v", r)
	}
	if r = bkrunEnv(t, env, "", "-e", "return require('hanoi2').version"); r.code != 0 || r.stdout != "v2\n" {
		t.Fatalf("head: %+v", r)
	}
	if r = bkrunEnv(t, env, "", "lib", "install", repo+"@v1"); r.code != 1 || !strings.Contains(r.stderr, "already installed") {
		t.Fatalf("second install: %+v", r)
	}

	if r = bkrunEnv(t, env, "", "lib", "remove", "hanoi"); r.code != 0 {
		t.Fatalf("remove: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(libDir, "hanoi")); err == nil {
		t.Fatal("library directory left after remove")
	}
	b, _ = os.ReadFile(filepath.Join(libDir, "bkrun-lock.json"))
	if strings.Contains(string(b), `"hanoi"`) || !strings.Contains(string(b), `"hanoi2"`) {
		t.Fatalf("lock after remove:\n%s", b)
	}
	if r = bkrunEnv(t, env, "", recipe); r.code != 2 || !strings.Contains(r.stderr, `module "hanoi" not found`) {
		t.Fatalf("recipe after remove: %+v", r)
	}
	if r = bkrunEnv(t, env, "", "lib", "install", repo+"@nosuch", "--name", "x"); r.code != 1 || !strings.Contains(r.stderr, `no tag, branch or commit "nosuch"`) {
		t.Fatalf("bad ref: %+v", r)
	}
}

func TestLibDirectoryAndTarball(t *testing.T) {
	env, libDir := libEnv(t)
	src := filepath.Join(t.TempDir(), "notify")
	writeLibFile(t, filepath.Join(src, "init.lua"), "return {hello = function() return 'dir' end}\n")
	if r := bkrunEnv(t, env, "", "lib", "install", src); r.code != 0 || !strings.Contains(r.stdout, "installed notify dir from") {
		t.Fatalf("dir install: %+v", r)
	}
	if r := bkrunEnv(t, env, "", "-e", "return require('notify').hello()"); r.stdout != "dir\n" {
		t.Fatalf("%+v", r)
	}

	sys := filepath.Join(t.TempDir(), "etc-lib")
	tarball := filepath.Join(t.TempDir(), "retention-0.3.tar")
	libTar(t, tarball, tarEnt{"retention-0.3/", "", tar.TypeDir}, tarEnt{"retention-0.3/init.lua", "return 'tar'\n", tar.TypeReg})
	if r := bkrunEnv(t, env, "", "lib", "install", tarball, "--dir", sys); r.code != 0 || !strings.Contains(r.stdout, "installed retention sha256:") {
		t.Fatalf("tar install: %+v", r)
	}
	if r := bkrunEnv(t, append(env, "BKRUN_PATH="+sys), "", "-e", "return require('retention')"); r.stdout != "tar\n" {
		t.Fatalf("%+v", r)
	}
	if r := bkrunEnv(t, env, "", "lib", "verify", "--dir", sys); r.code != 0 || !strings.HasPrefix(r.stdout, "retention: ok") {
		t.Fatalf("%+v", r)
	}

	// Escaping tarballs: refused, nothing written outside, no partial library.
	for _, c := range []struct {
		name string
		ents []tarEnt
		want string
	}{
		{"dotdot", []tarEnt{{"init.lua", "return 1\n", tar.TypeReg}, {"../evil", "x", tar.TypeReg}}, `entry "../evil" escapes the library directory`},
		{"absolute", []tarEnt{{"init.lua", "return 1\n", tar.TypeReg}, {"/tmp/evil", "x", tar.TypeReg}}, `entry "/tmp/evil" is an absolute path`},
		{"symlink", []tarEnt{{"init.lua", "return 1\n", tar.TypeReg}, {"evil", "/etc", tar.TypeSymlink}, {"evil/cron.d/x", "x", tar.TypeReg}}, `entry "evil" is a symlink (to "/etc")`},
	} {
		bad := filepath.Join(t.TempDir(), "bad.tar")
		libTar(t, bad, c.ents...)
		r := bkrunEnv(t, env, "", "lib", "install", bad)
		if r.code != 1 || !strings.Contains(r.stderr, c.want) || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%s: %+v", c.name, r)
		}
		ents, _ := os.ReadDir(libDir)
		for _, e := range ents {
			if e.Name() == "bad" || strings.HasPrefix(e.Name(), ".install") {
				t.Errorf("%s: %s left in the library directory", c.name, e.Name())
			}
		}
		for _, p := range []string{filepath.Join(libDir, "..", "evil"), filepath.Join(filepath.Dir(bad), "..", "evil"), "/etc/cron.d/x"} {
			if _, err := os.Lstat(p); err == nil {
				t.Errorf("%s: %s written", c.name, p)
			}
		}
	}
}

func TestLibErrors(t *testing.T) {
	env, _ := libEnv(t)
	r := bkrunEnv(t, env, "", "lib", "install", "/nonexistent/hanoi@v1")
	if r.code != 1 || r.stderr != "bkrun: lib install: library source /nonexistent/hanoi: no such file or directory\n" {
		t.Fatalf("missing source: %+v", r)
	}
	for _, args := range [][]string{
		{"lib"}, {"lib", "frob"}, {"lib", "install"}, {"lib", "remove"}, {"lib", "list", "--bogus"},
		{"lib", "install", "x", "--system", "--dir", "/tmp"}, {"lib", "verify", "--name", "x"},
	} {
		if r := bkrunEnv(t, env, "", args...); r.code != 2 || !strings.Contains(r.stderr, "bkrun: lib: ") {
			t.Errorf("%v: %+v", args, r)
		}
	}
	if r := bkrunEnv(t, env, "", "lib", "remove", "nosuch"); r.code != 1 || !strings.Contains(r.stderr, "no library nosuch in ") {
		t.Errorf("remove: %+v", r)
	}
	if r := bkrun(t, "", "help"); !strings.Contains(r.stdout, "bkrun lib install") {
		t.Errorf("help does not mention lib: %s", r.stdout)
	}
}

// TestEmbeddedLibs: built-in libraries load from -e and from recipes, and
// no file on the library path can shadow them.
func TestEmbeddedLibs(t *testing.T) {
	env, libDir := libEnv(t)
	if r := bkrunEnv(t, env, "", "-e", "return require('bkrun.snapshots').stamp(86400)"); r.code != 0 || r.stdout != "1970-01-02T00:00:00Z\n" {
		t.Fatalf("-e: %+v", r)
	}
	hijack := "error('hijacked')\n"
	writeLibFile(t, filepath.Join(libDir, "bkrun", "dest.lua"), hijack)
	writeLibFile(t, filepath.Join(libDir, "bkrun.lua"), hijack)
	dir := t.TempDir()
	writeLibFile(t, filepath.Join(dir, "lib", "bkrun", "dest.lua"), hijack)
	writeLibFile(t, filepath.Join(dir, "bkrun", "dest.lua"), hijack)
	recipe := filepath.Join(dir, "r.lua")
	writeLibFile(t, recipe, "local dest = require 'bkrun.dest'\nfunction run() print(dest.split('backup@daisy:/backup')) end\n")
	if r := bkrunEnv(t, env, "", recipe); r.code != 0 || r.stdout != "backup@daisy\t/backup\n" {
		t.Fatalf("recipe: %+v", r)
	}
	if r := bkrunEnv(t, env, "", "check", recipe); r.code != 0 {
		t.Fatalf("check: %+v", r)
	}
	if r := bkrunEnv(t, env, "", "-e", "require 'bkrun.nosuch'"); r.code != 1 || !strings.Contains(r.stderr, "bkrun.* is reserved") {
		t.Fatalf("unknown built-in: %+v", r)
	}
	if r := bkrunEnv(t, env, "", "-e", "require 'bkrun'"); r.code != 1 || strings.Contains(r.stderr, "hijacked") {
		t.Fatalf("bkrun.lua: %+v", r)
	}
	r := bkrunEnv(t, env, "", "lib", "list")
	if r.code != 0 || !strings.Contains(r.stdout, "bkrun.dest") || !strings.Contains(r.stdout, "bkrun.snapshots") {
		t.Fatalf("list: %+v", r)
	}
}

type tarEnt struct {
	name, body string
	typ        byte
}

func libTar(t *testing.T, path string, ents ...tarEnt) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Mode: 0o644, Typeflag: e.typ}
		switch e.typ {
		case tar.TypeReg:
			h.Size = int64(len(e.body))
		case tar.TypeSymlink:
			h.Linkname = e.body
		case tar.TypeDir:
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}
