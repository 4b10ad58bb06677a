package ssh_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bkrun/bkrun/internal/sshtest"
	"github.com/bkrun/bkrun/runtime"
	"github.com/bkrun/bkrun/stdlib/disk"
	"github.com/bkrun/bkrun/stdlib/exec"
	"github.com/bkrun/bkrun/stdlib/ssh"
	lua "github.com/yuin/gopher-lua"
)

func luaHost(t *testing.T, dry bool) (*runtime.Host, *bytes.Buffer) {
	var out bytes.Buffer
	h := runtime.New(runtime.Options{Modules: []*runtime.Module{ssh.Module}, DryRun: dry, Stdout: &out, Stderr: &out})
	t.Cleanup(h.Close)
	return h, &out
}

func connectLua(s *sshtest.Server) string {
	return `local ssh = require "ssh"
		local c = ssh.connect("` + s.Dest() + `", {identity = "` + s.Identity() + `", known_hosts = "` + s.KnownHosts() + `", config = "none", timeout = 5})
`
}

func TestLuaBinding(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	h, _ := luaHost(t, false)
	dir := t.TempDir()
	vals, err := h.RunChunk(connectLua(s)+`
		assert(tostring(c) == "ssh.conn(`+s.Dest()+`)", tostring(c))
		assert(c.user == "`+s.User()+`" and c.host == "127.0.0.1")
		assert(c:output("echo '  hi  '") == "hi")
		local r = c:exec("cat > `+dir+`/in; cat `+dir+`/in; echo err >&2", {stdin = "from lua"})
		assert(r.ok and r.status == 0 and r.stdout == "from lua" and r.stderr == "err\n", r.stdout)
		r = c:exec("exit 4", {check = false})
		assert(not r.ok and r.status == 4)
		local ok, msg = pcall(c.exec, c, "echo bad >&2; exit 2")
		assert(not ok)
		return msg, c
	`, "ssh", nil)
	if err != nil {
		t.Fatal(runtime.Describe(err, true))
	}
	if msg := vals[0].String(); !strings.Contains(msg, `conn:exec: ssh: `+s.Dest()+`: remote command "echo bad >&2; exit 2" exited 2: bad`) {
		t.Errorf("error message: %s", msg)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "in")); string(b) != "from lua" {
		t.Errorf("stdin: %q", b)
	}
	if c, ok := ssh.FromLua(vals[1]); !ok || c.String() != s.Dest() {
		t.Error("FromLua")
	}
	if _, ok := ssh.FromLua(lua.LString("x")); ok {
		t.Error("FromLua accepted a string")
	}
	// The connection is closed by the clean-up stack.
	if h.PendingCleanup() != 1 {
		t.Fatalf("pending clean-up: %d", h.PendingCleanup())
	}
	if err := h.RunCleanup(); err != nil {
		t.Fatal(err)
	}
	c, _ := ssh.FromLua(vals[1])
	if _, err := c.Output(t.Context(), "true"); err == nil {
		t.Error("connection still open after clean-up")
	}
	// close() cancels the clean-up step.
	if _, err := h.RunChunk(connectLua(s)+`c:close(); c:close()`, "close", nil); err != nil {
		t.Fatal(runtime.Describe(err, true))
	}
	if h.PendingCleanup() != 0 {
		t.Errorf("close left %d clean-up steps", h.PendingCleanup())
	}
}

func TestLuaBadArguments(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	h, _ := luaHost(t, false)
	for _, tc := range []struct{ src, want string }{
		{`require("ssh").connect(42)`, "bad argument #1 to 'ssh.connect' (string ([user@]host[:port]) expected, got number)"},
		{`require("ssh").connect("h", {prot = 22})`, "unknown option 'prot'"},
		{`require("ssh").connect("h", {port = "x"})`, "option 'port': integer expected, got string"},
		{`require("ssh").connect("h", {identity = 5})`, "option 'identity': string or list of strings expected, got number"},
		{`require("ssh").connect("h", {accept_new = "yes"})`, "option 'accept_new': boolean expected"},
		{`require("ssh").connect("h:99999", {config = "none"})`, "bad port in destination"},
		{connectLua(s) + `c:exec(5)`, "bad argument #2 to 'conn:exec' (string (a remote command line) expected, got number)"},
		{connectLua(s) + `c:exec("true", {stdn = "x"})`, "unknown option 'stdn'"},
		{connectLua(s) + `c:output("true", {stdin = "x"})`, "unknown option 'stdin'"},
		{connectLua(s) + `c.exec("true")`, "bad argument #1 to 'conn:exec' (ssh connection"},
		{connectLua(s) + `c:output("sleep 5", {timeout = 0.3})`, "timed out after 300ms"},
	} {
		_, err := h.RunChunk(tc.src, "bad", nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s:\n got %v\nwant %s", tc.src, err, tc.want)
		}
	}
	h.RunCleanup()
}

func TestLuaDryRun(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	h, out := luaHost(t, true)
	dir := t.TempDir()
	_, err := h.RunChunk(connectLua(s)+`
		local r = c:exec("touch `+dir+`/made")
		assert(r.ok and r.stdout == "")
		assert(c:output("echo x") == "")
		assert(c:output("echo read-only", {safe = true}) == "read-only")
		assert(c:exec("echo safe", {safe = true}).stdout == "safe\n")
		local f = c:create("`+dir+`/out")
		assert(f.path == "`+dir+`/out")
		c:exec("echo x", {stdout = f})
		f:commit(); f:abort()
	`, "dry", nil)
	if err != nil {
		t.Fatal(runtime.Describe(err, true))
	}
	want := "[dry-run] ssh.connect " + s.Dest() + " (connecting for real: a connection changes nothing)\n" +
		"[dry-run] ssh " + s.Dest() + ": touch " + dir + "/made\n" +
		"[dry-run] ssh " + s.Dest() + ": echo x\n" +
		"[dry-run] ssh " + s.Dest() + ": create " + dir + "/out (temporary name, renamed on commit)\n" +
		"[dry-run] ssh " + s.Dest() + ": echo x\n"
	if out.String() != want {
		t.Errorf("dry-run output:\n%s\nwant:\n%s", out, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "made")); err == nil {
		t.Error("dry run ran the command")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("dry run wrote %v", ents)
	}
	h.RunCleanup()
}

// A disk source streams into a remote command's stdin: 24 MiB + a short
// tail, with a hole, arrive byte-exact.
func TestLuaExecStreamsSource(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	dir := t.TempDir()
	src := filepath.Join(dir, "img")
	f, _ := os.Create(src)
	blk := bytes.Repeat([]byte("streamed through ssh "), 50000)
	f.Write(blk)
	f.WriteAt([]byte("tail"), 24<<20+333) // leaves a hole before it
	f.Close()
	want, _ := os.ReadFile(src)
	dst := filepath.Join(dir, "copy")
	var out bytes.Buffer
	h := runtime.New(runtime.Options{Modules: []*runtime.Module{ssh.Module, disk.Module}, Stdout: &out, Stderr: &out})
	defer h.Close()
	_, err := h.RunChunk(connectLua(s)+`
		local disk = require "disk"
		local r = c:exec("cat > `+dst+`", {stdin = disk.open("`+src+`")})
		assert(r.ok)`, "t", nil)
	if err != nil {
		t.Fatal(runtime.Describe(err, true), out.String())
	}
	h.RunCleanup()
	got, _ := os.ReadFile(dst)
	if !bytes.Equal(got, want) {
		t.Fatalf("remote copy has %d bytes, want %d identical", len(got), len(want))
	}
	_, err = h.RunChunk(connectLua(s)+`c:exec("cat", {stdin = 42})`, "t", nil)
	if err == nil || !strings.Contains(err.Error(), "option 'stdin': a string or a source (disk.open) expected, got number") {
		t.Errorf("bad stdin: %v", err)
	}
}

// A remote command that stops reading its stdin stream (a failed remote
// receive) stops the local producer when conn:exec returns, not at the
// end of the run: the recipe's next step deletes what it was sending.
func TestLuaExecClosesAStreamItLeftUnread(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	pidFile := filepath.Join(t.TempDir(), "producer.pid")
	var out bytes.Buffer
	h := runtime.New(runtime.Options{Modules: []*runtime.Module{ssh.Module, exec.Module}, Stdout: &out, Stderr: &out})
	defer h.Close()
	_, err := h.RunChunk(connectLua(s)+`
		local exec = require "exec"
		local src = exec.stream({"sh", "-c", "echo $$ > `+pidFile+`; exec cat /dev/zero"})
		local r = c:exec("head -c 10 > /dev/null; exit 3", {stdin = src, check = false})
		assert(not r.ok and r.status == 3, r.status)
		-- Still inside the run: the clean-up stack has not stopped it.
		local alive = exec.run({"sh", "-c", "kill -0 $(cat `+pidFile+`)"}, {check = false, capture = true})
		assert(not alive.ok, "the producer still runs after conn:exec returned")`, "t", nil)
	if err != nil {
		t.Fatal(runtime.Describe(err, true), out.String())
	}
}

// conn:create and conn:open move bytes between remote files and commands
// without Lua touching them; a failing command never leaves its output
// under the final name.
func TestLuaCreateOpen(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	h, _ := luaHost(t, false)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "old"), []byte("previous backup"), 0o644)
	vals, err := h.RunChunk(connectLua(s)+`
		local D = "`+dir+`"
		local f = c:create(D .. "/a.txt")
		assert(f.path == D .. "/a.txt" and f.temp:find("/.a.txt.partial-", 1, true), f.temp)
		assert(tostring(f) == "ssh.file(`+s.Dest()+`:" .. D .. "/a.txt)", tostring(f))
		local r = c:exec("printf 'hello remote'", {stdout = f})
		assert(r.ok and r.stdout == "" and f.done)

		-- A failing command: its partial output is removed, the old file kept.
		local g = c:create(D .. "/old", {overwrite = true})
		local ok, msg = pcall(c.exec, c, "echo partial; exit 3", {stdout = g})
		assert(not ok and msg:find("exited 3", 1, true), msg)
		assert(g.done)

		-- An existing file without overwrite is refused before writing.
		local ok2, msg2 = pcall(c.create, c, D .. "/a.txt")
		assert(not ok2 and msg2:find("already exists", 1, true), msg2)

		-- A remote file as stdin of another command.
		local src = c:open(D .. "/a.txt")
		assert(src.size == 12 and src.path == "`+s.Dest()+`:" .. D .. "/a.txt", src.path)
		c:exec("cat > " .. D .. "/copy.txt", {stdin = src})
		src:close()

		-- Explicit commit and abort.
		local k = c:create(D .. "/kept")
		c:exec("true", {stdout = k})
		local dropped = c:create(D .. "/dropped")
		dropped:abort()
		local ok3, msg3 = pcall(dropped.commit, dropped)
		assert(not ok3 and msg3:find("already committed or aborted", 1, true), msg3)

		-- Left uncommitted: the clean-up stack removes it.
		local left = c:create(D .. "/left")
		return left.temp
	`, "create", nil)
	if err != nil {
		t.Fatal(runtime.Describe(err, true))
	}
	for name, want := range map[string]string{"a.txt": "hello remote", "old": "previous backup", "copy.txt": "hello remote", "kept": ""} {
		if b, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(b) != want {
			t.Errorf("%s: %q, %v (want %q)", name, b, err, want)
		}
	}
	for _, name := range []string{"dropped", "left"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			t.Errorf("%s exists", name)
		}
	}
	left := vals[0].String()
	if _, err := os.Stat(left); err != nil {
		t.Fatalf("uncommitted temp file should still exist before clean-up: %v", err)
	}
	if err := h.RunCleanup(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(left); err == nil {
		t.Errorf("clean-up left %s", left)
	}
	noPartials(t, dir)
}

func TestLuaCreateOpenBadArguments(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	h, _ := luaHost(t, false)
	dir := t.TempDir()
	for src, want := range map[string]string{
		`c:create(5)`:                               `bad argument #2 to 'conn:create' (string expected, got number)`,
		`c:create("` + dir + `/none/x")`:            `remote directory ` + dir + `/none/ does not exist`,
		`c:create("` + dir + `", {overwrite=true})`: `is a directory`,
		`c:create("x", {overwrit=true})`:            `overwrit`,
		`c:open("` + dir + `/missing")`:             `conn:open: `,
		`c:open("` + dir + `")`:                     `not a regular file`,
		`c:exec("true", {stdout = "file"})`:         `option 'stdout': a remote file (conn:create) expected, got string`,
		`c.create(nil, "x")`:                        `bad argument #1 to 'conn:create' (ssh connection`,
	} {
		_, err := h.RunChunk(connectLua(s)+src, "bad", nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", src, err, want)
		}
	}
	h.RunCleanup()
	noPartials(t, dir)
}
