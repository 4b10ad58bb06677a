package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var bkrunBin string

// TestMain builds the real binary: signal and exit-status behaviour is only
// believable when tested on a real process.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "bkrun-cli-")
	if err != nil {
		panic(err)
	}
	bkrunBin = filepath.Join(dir, "bkrun")
	out, err := exec.Command("go", "build", "-o", bkrunBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building bkrun: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

func bkrun(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	return bkrunEnv(t, nil, stdin, args...)
}

// bkrunEnv runs the binary with env (nil: the test's own environment).
func bkrunEnv(t *testing.T, env []string, stdin string, args ...string) result {
	t.Helper()
	cmd := exec.Command(bkrunBin, args...)
	cmd.Env = env
	cmd.Dir = repoRoot(t)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	cmd.Stdin = strings.NewReader(stdin)
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{code, so.String(), se.String()}
}

func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func writeScript(t *testing.T, src string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "r.lua")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHelloRecipe(t *testing.T) {
	r := bkrun(t, "", "scripts/hello.lua", "world", "--times", "2", "--shout")
	if r.code != 0 || strings.Count(r.stdout, "HELLO, WORLD, FROM ") != 2 || !strings.HasSuffix(r.stdout, "(clean-up ran)\n") {
		t.Fatalf("%+v", r)
	}
}

func TestUsageErrorsExit2AndRunNothing(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "ran")
	touch := fmt.Sprintf("io.open(%q, 'w'):close()\n", marker)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"missing file", []string{"/nonexistent/x.lua"}, "bkrun: /nonexistent/x.lua: no such file or directory\n"},
		{"syntax error", []string{writeScript(t, touch+"x = = 1\n")}, ":2: syntax error near '='"},
		{"unknown module", []string{writeScript(t, touch+"local x = require 'nosuch'\n")}, `:2: module "nosuch" not found`},
		{"bad argument", []string{writeScript(t, touch+"args = {{name='count', type='number'}}\nfunction run() end\n"), "--count=abc"}, `argument count: "abc" is not a number`},
		{"bad flag", []string{"--frobnicate"}, "flag provided but not defined: -frobnicate"},
		{"bad log format", []string{"--log-format=xml", "scripts/hello.lua"}, "--log-format must be text or json"},
		{"help unknown", []string{"help", "nosuchthing"}, `no module, function or recipe named "nosuchthing"`},
	}
	for _, c := range cases {
		r := bkrun(t, "", c.args...)
		if r.code != 2 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: code %d, stderr %q, want %q", c.name, r.code, r.stderr, c.want)
		}
		if _, err := os.Stat(marker); err == nil {
			t.Fatalf("%s: the script ran", c.name)
		}
	}
}

func TestRuntimeErrorFormatAndTraceback(t *testing.T) {
	p := writeScript(t, "local exec = require 'exec'\nlocal function f()\n  exec.run{'sh', '-c', 'echo \"Volume group VGatom not found\" >&2; exit 5'}\nend\nf()\n")
	r := bkrun(t, "", p)
	want := "bkrun: " + p + ":3: exec.run: sh exited 5: Volume group VGatom not found\n"
	if r.code != 1 || !strings.HasSuffix(r.stderr, want) {
		t.Fatalf("code %d stderr %q, want suffix %q", r.code, r.stderr, want)
	}
	if strings.Contains(r.stderr, "stack traceback") {
		t.Error("traceback without -v")
	}
	r = bkrun(t, "", "-v", p)
	if !strings.Contains(r.stderr, "stack traceback:") || !strings.Contains(r.stderr, p+":5: in main chunk") {
		t.Errorf("-v lacks traceback: %s", r.stderr)
	}
}

func TestWrongArgumentTypeToPrimitive(t *testing.T) {
	r := bkrun(t, "", "-e", "exec.run(5)")
	if r.code != 1 || r.stderr != "bkrun: -e:1: bad argument #1 to 'exec.run' (table or string expected, got number)\n" {
		t.Fatalf("%+v", r)
	}
}

func TestExecOneLinerAndStdin(t *testing.T) {
	r := bkrun(t, "", "-e", `print(exec.output{"echo", "hi"})`)
	if r.code != 0 || r.stdout != "hi\n" {
		t.Errorf("-e: %+v", r)
	}
	r = bkrun(t, "return 1+1", "-")
	if r.code != 0 || r.stdout != "2\n" {
		t.Errorf("stdin '-': %+v", r)
	}
	// Not a terminal and no script: the script is read from stdin.
	r = bkrun(t, "print('from stdin')")
	if r.code != 0 || r.stdout != "from stdin\n" {
		t.Errorf("stdin: %+v", r)
	}
}

func TestHelpAndVersion(t *testing.T) {
	r := bkrun(t, "", "help")
	if r.code != 0 || !strings.Contains(r.stdout, "exec       run external commands") {
		t.Errorf("help: %+v", r)
	}
	r = bkrun(t, "", "help", "exec.output")
	if r.code != 0 || !strings.Contains(r.stdout, "exec.output(cmd [, opts]) -> string") {
		t.Errorf("help exec.output: %+v", r)
	}
	r = bkrun(t, "", "help", "scripts/hello.lua")
	if r.code != 0 || !strings.Contains(r.stdout, "WHO                   whom to greet [required]") {
		t.Errorf("help recipe: %+v", r)
	}
	r = bkrun(t, "", "scripts/hello.lua", "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "Usage: bkrun") {
		t.Errorf("recipe --help: %+v", r)
	}
	r = bkrun(t, "", "version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "bkrun ") {
		t.Errorf("version: %+v", r)
	}
}

func TestDryRun(t *testing.T) {
	dir := t.TempDir()
	p := writeScript(t, fmt.Sprintf(`local exec = require "exec"
function run() exec.run{"touch", %q} exec.run{"lvcreate", "-s", "-L", "3G", "-n", "snap", "VGatom/master"} end`, dir+"/made"))
	r := bkrun(t, "", "--dry-run", p)
	want := "[dry-run] exec: touch " + dir + "/made\n[dry-run] exec: lvcreate -s -L 3G -n snap VGatom/master\n"
	if r.code != 0 || r.stdout != want {
		t.Fatalf("%+v\nwant stdout %q", r, want)
	}
	if _, err := os.Stat(dir + "/made"); err == nil {
		t.Error("dry run ran touch")
	}
}

func TestOsExitRunsCleanup(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "undone")
	p := writeScript(t, fmt.Sprintf("defer(function() io.open(%q, 'w'):close() end)\nos.exit(3)\nprint('not reached')\n", marker))
	r := bkrun(t, "", p)
	if r.code != 3 || strings.Contains(r.stdout, "not reached") {
		t.Fatalf("%+v", r)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatal("os.exit skipped the clean-up stack")
	}
}

func TestFailingCleanupMakesExitNonZero(t *testing.T) {
	p := writeScript(t, "defer(function() error('cannot remove snapshot') end)\nprint('done')\n")
	r := bkrun(t, "", p)
	if r.code != 1 || !strings.Contains(r.stderr, "cannot remove snapshot") {
		t.Fatalf("%+v", r)
	}
}

func TestJSONLogs(t *testing.T) {
	r := bkrun(t, "", "-v", "--log-format=json", "-e", `exec.run{"true"}`)
	if r.code != 0 || !strings.Contains(r.stderr, `"msg":"exec","cmd":"true"`) {
		t.Fatalf("%+v", r)
	}
}

// startRecipe runs a recipe that prints "ready" once it is blocked in a
// long command, and returns when it is.
func startRecipe(t *testing.T, src string) (*exec.Cmd, *bytes.Buffer, *bufio.Reader) {
	t.Helper()
	cmd := exec.Command(bkrunBin, writeScript(t, src))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(out)
	line := make(chan string, 1)
	go func() { l, _ := br.ReadString('\n'); line <- l }()
	select {
	case l := <-line:
		if l != "ready\n" {
			t.Fatalf("recipe said %q; stderr %s", l, stderr.String())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("recipe never got ready")
	}
	return cmd, &stderr, br
}

func waitExit(t *testing.T, cmd *exec.Cmd, within time.Duration) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(within):
		cmd.Process.Kill()
		t.Fatalf("bkrun did not exit within %v", within)
		return -1
	}
}

func TestSignalsRunCleanupAndKillCommands(t *testing.T) {
	for _, c := range []struct {
		sig  syscall.Signal
		code int
		name string
	}{{syscall.SIGTERM, 143, "SIGTERM"}, {syscall.SIGINT, 130, "SIGINT"}} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			marker, pidfile := filepath.Join(dir, "undone"), filepath.Join(dir, "pid")
			cmd, stderr, _ := startRecipe(t, fmt.Sprintf(`local exec = require "exec"
defer(function() io.open(%q, "w"):close() end)
io.stdout:write("ready\n") io.stdout:flush()
exec.run{"sh", "-c", "echo $$ > %s; exec sleep 60"}
`, marker, pidfile))
			waitFile(t, pidfile)
			start := time.Now()
			cmd.Process.Signal(c.sig)
			code := waitExit(t, cmd, 10*time.Second)
			if code != c.code {
				t.Errorf("exit %d, want %d; stderr %s", code, c.code, stderr.String())
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("stopping took %v", d)
			}
			if _, err := os.Stat(marker); err != nil {
				t.Error("clean-up did not run")
			}
			if !strings.Contains(stderr.String(), "interrupted by "+c.name+"; clean-up done") {
				t.Errorf("stderr %q", stderr.String())
			}
			b, _ := os.ReadFile(pidfile)
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			if pid > 0 && syscall.Kill(pid, 0) == nil {
				t.Errorf("the sleep (pid %d) outlived bkrun", pid)
				syscall.Kill(pid, syscall.SIGKILL)
			}
		})
	}
}

func TestSecondSignalDoesNotAbortCleanup(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "undone")
	cmd, stderr, out := startRecipe(t, fmt.Sprintf(`local exec = require "exec"
defer(function()
  io.stdout:write("cleaning\n") io.stdout:flush()
  exec.run{"sleep", "1"}
  io.open(%q, "w"):close()
end)
io.stdout:write("ready\n") io.stdout:flush()
exec.run{"sleep", "60"}
`, marker))
	cmd.Process.Signal(syscall.SIGINT)
	if l, _ := out.ReadString('\n'); l != "cleaning\n" {
		t.Fatalf("got %q", l)
	}
	cmd.Process.Signal(syscall.SIGINT)
	time.Sleep(100 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGTERM)
	code := waitExit(t, cmd, 10*time.Second)
	if code != 130 {
		t.Errorf("exit %d; stderr %s", code, stderr.String())
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("second signal aborted the clean-up; stderr %s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "SIGINT received: clean-up in progress") {
		t.Errorf("no clean-up notice: %s", stderr.String())
	}
}

func waitFile(t *testing.T, p string) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if b, err := os.ReadFile(p); err == nil && len(b) > 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s never appeared", p)
}

var _ = io.Discard

// The demo behind `make run`: it must work with no root and no network and
// leave nothing behind in $TMPDIR, in a real run and in a dry run.
func TestDemoLeavesNothingBehind(t *testing.T) {
	for _, dry := range []bool{false, true} {
		tmp := t.TempDir()
		args := []string{"scripts/demo.lua"}
		if dry {
			args = append([]string{"--dry-run"}, args...)
		}
		cmd := exec.Command(bkrunBin, args...)
		cmd.Dir = repoRoot(t)
		cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("dry=%v: %v\n%s", dry, err, out)
		}
		want := "-03.img.lz4.json"
		if dry {
			want = "[dry-run] stream.copy "
		}
		if !strings.Contains(string(out), want) {
			t.Errorf("dry=%v: output lacks %q:\n%s", dry, want, out)
		}
		if !dry {
			for _, l := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(l, "kept in ") && (strings.Contains(l, "-01.img") || !strings.Contains(l, "-02.img.lz4 ")) {
					t.Errorf("retention: %s", l)
				}
			}
			if !strings.Contains(string(out), "restore: ") || !strings.Contains(string(out), "hash:    ") {
				t.Errorf("no verified restore in the demo output:\n%s", out)
			}
		}
		if left, _ := os.ReadDir(tmp); len(left) != 0 {
			t.Errorf("dry=%v: left behind in TMPDIR: %v", dry, left)
		}
	}
}

// A recipe stuck in a hung command while a VM is paused: the watchdog
// unpauses the VM within the window, while the recipe still hangs; SIGTERM
// then stops the run and the domain is not unpaused a second time.
func TestPausedVMNeverStaysPaused(t *testing.T) {
	shimDir, _ := filepath.Abs(filepath.Join(repoRoot(t), "stdlib", "vm", "testdata", "shims"))
	dir := t.TempDir()
	logf, state := filepath.Join(dir, "calls"), filepath.Join(dir, "state")
	os.Mkdir(state, 0o755)
	os.WriteFile(filepath.Join(state, "master"), []byte("running\n"), 0o644)
	cmd := exec.Command(bkrunBin, writeScript(t, `local vm, exec = require "vm", require "exec"
vm.pause("master", {max = 0.3})
io.stdout:write("ready\n") io.stdout:flush()
exec.run{"sleep", "60"}   -- the hung lvcreate
`))
	cmd.Env = append(os.Environ(), "PATH="+shimDir+":"+os.Getenv("PATH"), "SHIM_LOG="+logf, "SHIM_STATE="+state)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if l, _ := bufio.NewReader(out).ReadString('\n'); l != "ready\n" {
		t.Fatalf("got %q; stderr %s", l, stderr.String())
	}
	calls := func() string { b, _ := os.ReadFile(logf); return string(b) }
	deadline := time.Now().Add(3 * time.Second)
	for !strings.Contains(calls(), "xl unpause master") {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("the watchdog did not unpause; calls %q", calls())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if code := waitExit(t, cmd, 5*time.Second); code != 143 {
		t.Errorf("exit %d", code)
	}
	if got := calls(); got != "xl pause master\nxl unpause master\n" {
		t.Errorf("calls %q", got)
	}
	if !strings.Contains(stderr.String(), "vm paused longer than allowed") {
		t.Errorf("stderr lacks the watchdog line: %s", stderr.String())
	}
}

// Every shipped recipe dry-runs: exit 0, its actions printed, nothing
// changed in the directories it was pointed at.
func TestRecipesDryRun(t *testing.T) {
	root := repoRoot(t)
	shims := filepath.Join(root, "stdlib", "vm", "testdata", "shims") + ":" + filepath.Join(root, "stdlib", "lvm", "testdata", "shims") +
		":" + filepath.Join(root, "stdlib", "zfs", "testdata", "shims")
	state := t.TempDir()
	os.WriteFile(filepath.Join(state, "datasets"), []byte("tank/vm\nbackup/vm\n"), 0o644)
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	os.WriteFile(img, make([]byte, 1<<20), 0o644)
	src, dest := filepath.Join(dir, "src"), filepath.Join(dir, "dest")
	os.Mkdir(src, 0o755)
	os.Mkdir(dest, 0o755)
	before := listTree(dir)
	for _, args := range [][]string{
		{"scripts/hello.lua", "world"},
		{"scripts/demo.lua"},
		{"scripts/disk-image.lua", img, dest + "/disk.img.lz4"},
		{"scripts/disk-restore.lua", dest + "/disk.img.lz4", dest + "/restored"},
		{"scripts/btr-backup.lua", src, dest},
		{"scripts/btrfs-snapsync.lua", src, src, dest},
		{"scripts/xen-backup.lua", "master", "--dest", dest, "--history", dest + "/h.json", "--hypervisor", "xl"},
		{"scripts/tunnel.lua", "--local", "13306:localhost:3306", "repl@db.example"},
		{"scripts/zfs-snapsync.lua", "tank/vm", "backup/vm"},
	} {
		cmd := exec.Command(bkrunBin, append([]string{"--dry-run"}, args...)...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "PATH="+shims+":"+os.Getenv("PATH"), "SHIM_STATE="+state, "TMPDIR="+dir)
		out, err := cmd.CombinedOutput()
		// hello.lua only runs a read-only command: nothing to print.
		if err != nil || (args[0] != "scripts/hello.lua" && !strings.Contains(string(out), "[dry-run] ")) {
			t.Errorf("%s: %v\n%s", args[0], err, out)
		}
	}
	if after := listTree(dir); after != before {
		t.Errorf("a dry run changed files:\nbefore %s\nafter  %s", before, after)
	}
}

func listTree(dir string) string {
	var names []string
	filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error { names = append(names, p); return nil })
	return strings.Join(names, " ")
}

func TestCheck(t *testing.T) {
	scripts, _ := filepath.Glob(filepath.Join(repoRoot(t), "scripts", "*.lua"))
	r := bkrun(t, "", append([]string{"check"}, scripts...)...)
	if r.code != 0 || strings.Count(r.stdout, ": ok (") != len(scripts) {
		t.Fatalf("%+v", r)
	}
	bad := writeScript(t, "local x = require 'nosuch'\nfunction run() end\n")
	syntax := writeScript(t, "x = = 1\n")
	args := writeScript(t, "args = {{name = 'n', type = 'nmber'}}\nfunction run() end\n")
	r = bkrun(t, "", "check", scripts[0], bad, syntax, args)
	if r.code != 2 || !strings.Contains(r.stdout, ": ok (") || !strings.Contains(r.stderr, `module "nosuch" not found`) ||
		!strings.Contains(r.stderr, "syntax error") || !strings.Contains(r.stderr, `unknown type "nmber"`) {
		t.Fatalf("%+v", r)
	}
	if r := bkrun(t, "", "check"); r.code != 2 {
		t.Errorf("check with no recipe: %+v", r)
	}
}
