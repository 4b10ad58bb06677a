package fs

import (
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/bkrun/bkrun/runtime"
	"github.com/bkrun/bkrun/runtime/luatest"
	lua "github.com/yuin/gopher-lua"
)

// newHost builds a real host with the fs module; D is set to dir in Lua.
func newHost(t *testing.T, dir string, dryRun bool) *luatest.Host {
	t.Helper()
	return luatest.NewHost(t, luatest.HostOptions{DryRun: dryRun, Globals: map[string]string{"D": dir}, Prelude: `local fs = require "fs"; `}, Module)
}

func TestLuaReadWriteStat(t *testing.T) {
	d := t.TempDir()
	h := newHost(t, d, false)
	vals := h.Run(t, `
		fs.mkdir(D .. "/a/b", { mode = "0700" })
		fs.write(D .. "/a/b/f", "hello", { mode = "0600" })
		fs.write(D .. "/a/b/g", "", { sync = false })
		local st = fs.stat(D .. "/a/b/f")
		return fs.read(D .. "/a/b/f"), st.type, st.size, st.mode, st.perm, st.uid, st.gid, type(st.mtime),
			fs.stat(D .. "/a").perm, fs.exists(D .. "/a/b/g"), fs.exists(D .. "/nope"), fs.stat(D .. "/nope"),
			table.concat(fs.list(D .. "/a/b"), ","), #fs.glob(D .. "/a/*/?")`)
	got := fmt.Sprint(vals)
	want := fmt.Sprintf("[hello file 5 384 0600 %d %d number 0700 true false nil f,g 2]", os.Getuid(), os.Getgid())
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if l := h.Log.String(); !strings.Contains(l, "msg=fs.mkdir path="+d+"/a/b mode=0700") ||
		!strings.Contains(l, "msg=fs.write path="+d+"/a/b/f bytes=5 mode=0600 sync=true") {
		t.Errorf("mutations not logged at debug level:\n%s", l)
	}
	vals = h.Run(t, `
		fs.rename(D .. "/a/b/f", D .. "/a/b/h")
		fs.remove(D .. "/a/b/g")
		fs.remove(D .. "/missing")
		local before = table.concat(fs.list(D .. "/a/b"), ",")
		fs.remove(D .. "/a", { recursive = true })
		return before, fs.exists(D .. "/a")`)
	if got := fmt.Sprint(vals); got != "[h false]" {
		t.Errorf("got %s", got)
	}
}

func TestLuaErrors(t *testing.T) {
	d := t.TempDir()
	writeFile(t, d+"/file", "0123456789")
	if err := os.MkdirAll(d+"/full/x", 0755); err != nil {
		t.Fatal(err)
	}
	h := newHost(t, d, false)
	for _, c := range []struct{ src, want string }{
		// wrong argument types
		{`fs.write(1, "x")`, `bad argument #1 to 'fs.write' (string expected, got number)`},
		{`fs.write(D .. "/f", {})`, `bad argument #2 to 'fs.write' (string expected, got table)`},
		{`fs.write(D .. "/f")`, `bad argument #2 to 'fs.write' (string expected, got no value)`},
		{`fs.write(D .. "/f", "x", "0644")`, `bad argument #3 to 'fs.write' (table expected, got string)`},
		{`fs.exists()`, `bad argument #1 to 'fs.exists' (string expected, got no value)`},
		{`fs.exists("")`, `bad argument #1 to 'fs.exists' (empty path)`},
		{`fs.stat(true)`, `bad argument #1 to 'fs.stat' (string expected, got boolean)`},
		{`fs.list(nil)`, `bad argument #1 to 'fs.list' (string expected, got nil)`},
		{`fs.glob({})`, `bad argument #1 to 'fs.glob' (string expected, got table)`},
		{`fs.rename(D .. "/file", 2)`, `bad argument #2 to 'fs.rename' (string expected, got number)`},
		{`fs.read(D .. "/file", 10)`, `bad argument #2 to 'fs.read' (table expected, got number)`},
		{`fs.tempdir(5)`, `bad argument #1 to 'fs.tempdir' (string expected, got number)`},
		{`fs.tempdir("a/b")`, `bad argument #1 to 'fs.tempdir' (prefix "a/b" contains a /)`},
		{`fs.lock(D .. "/l", { wait = "soon" })`, `bad argument #2 to 'fs.lock' (option 'wait': invalid duration "soon" (want seconds or e.g. "90s", "5m"))`},
		// options
		{`fs.write(D .. "/f", "x", { mode = 0644 })`, `bad argument #3 to 'fs.write' (option 'mode': octal string expected, got number 644 (Lua has no octal literals: 0755 is the decimal number 755; write mode="0755"))`},
		{`fs.mkdir(D .. "/m", { mode = "rwxr-xr-x" })`, `bad argument #2 to 'fs.mkdir' (option 'mode': invalid mode "rwxr-xr-x" (want octal digits, e.g. "0755"))`},
		{`fs.write(D .. "/f", "x", { snyc = false })`, `bad argument #3 to 'fs.write' (unknown option 'snyc' (known: mode, sync))`},
		{`fs.remove(D .. "/f", { recurse = true })`, `bad argument #2 to 'fs.remove' (unknown option 'recurse' (known: recursive))`},
		{`fs.stat(D, { follow = 1 })`, `bad argument #2 to 'fs.stat' (option 'follow': boolean expected, got number)`},
		{`fs.read(D .. "/file", { max = 0 })`, `bad argument #2 to 'fs.read' (option 'max': must be positive, got 0)`},
		// failures
		{`fs.exists(D .. "/file/x")`, `fs.exists: ` + d + `/file/x: not a directory`},
		{`fs.mkdir(D .. "/file")`, `fs.mkdir: ` + d + `/file: exists and is a file, not a directory`},
		{`fs.mkdir(D .. "/file/a/b")`, `fs.mkdir: ` + d + `/file/a/b: ` + d + `/file is not a directory`},
		{`fs.list(D .. "/missing")`, `fs.list: ` + d + `/missing: no such file or directory`},
		{`fs.glob("[")`, `fs.glob: "[": syntax error in pattern`},
		{`fs.remove(D .. "/full")`, `fs.remove: ` + d + `/full: directory not empty (use recursive=true to remove a tree)`},
		{`fs.remove("/", { recursive = true })`, `fs.remove: refusing to remove "/" recursively`},
		{`fs.remove(D .. "/../../../../../../../../..", { recursive = true })`, `fs.remove: refusing to remove "` + d + `/../../../../../../../../.." recursively`},
		{`fs.rename(D .. "/missing", D .. "/b")`, `fs.rename: ` + d + `/missing -> ` + d + `/b: no such file or directory`},
		{`fs.read(D .. "/file", { max = 4 })`, `fs.read: ` + d + `/file: larger than 4 bytes (max); read files this big as a stream, not into memory`},
		{`fs.read(D .. "/missing")`, `fs.read: ` + d + `/missing: no such file or directory`},
		{`fs.write(D .. "/file/x", "data")`, `fs.write: ` + d + `/file/x: create temp file: not a directory`},
	} {
		if got := h.RunErr(t, c.src); got != "test:1: "+c.want {
			t.Errorf("%s\n got: %s\nwant: test:1: %s", c.src, got, c.want)
		}
	}
	// Failed calls changed nothing.
	if names, _ := List(d); strings.Join(names, ",") != "file,full" {
		t.Errorf("left behind: %q", names)
	}
}

func TestLuaDryRun(t *testing.T) {
	d := t.TempDir()
	writeFile(t, d+"/keep", "old")
	if err := os.MkdirAll(d+"/tree/sub", 0755); err != nil {
		t.Fatal(err)
	}
	before := tree(t, d)
	lockDir := t.TempDir()
	t.Setenv("TMPDIR", lockDir)
	h := newHost(t, d, true)
	h.L.SetGlobal("LOCK", lua.LString(lockDir+"/run.lock"))
	vals := h.Run(t, `
		fs.mkdir(D .. "/new/dir")
		fs.write(D .. "/keep", "new contents")
		fs.write(D .. "/fresh", "x", { mode = "0600" })
		fs.rename(D .. "/keep", D .. "/moved")
		fs.remove(D .. "/keep")
		fs.remove(D .. "/tree", { recursive = true })
		local tmp = fs.tempdir("xen-")
		local lock = fs.lock(LOCK)
		return fs.read(D .. "/keep"), fs.exists(D .. "/tree/sub"), #fs.list(D), tmp, lock.path`)
	want := strings.Join([]string{
		"[dry-run] fs.mkdir " + d + "/new/dir (mode 0755)",
		"[dry-run] fs.write " + d + "/keep (12 bytes)",
		"[dry-run] fs.write " + d + "/fresh (1 bytes)",
		"[dry-run] fs.rename " + d + "/keep -> " + d + "/moved",
		"[dry-run] fs.remove " + d + "/keep",
		"[dry-run] fs.remove " + d + "/tree (recursive)",
		"[dry-run] fs.tempdir " + lockDir + "/xen-XXXXXXXX",
		"[dry-run] fs.lock " + lockDir + "/run.lock (not taken: dry run)",
		"",
	}, "\n")
	if got := h.Out.String(); got != want {
		t.Errorf("dry-run output:\n%s\nwant:\n%s", got, want)
	}
	if got := fmt.Sprint(vals); got != fmt.Sprintf("[old true 2 %s/xen-XXXXXXXX %s/run.lock]", lockDir, lockDir) {
		t.Errorf("read-only calls under dry-run returned %s", got)
	}
	if after := tree(t, d); after != before {
		t.Errorf("dry run changed the tree:\n%s\nwas:\n%s", after, before)
	}
	// Not even a lock file was made.
	if names, _ := List(lockDir); len(names) != 0 {
		t.Errorf("in TMPDIR: %q", names)
	}
	// A held lock is still reported under --dry-run.
	held, err := AcquireLock(t.Context(), lockDir+"/run.lock", 0, "backup")
	if err != nil {
		t.Fatal(err)
	}
	if msg := h.RunErr(t, `fs.lock(LOCK)`); !strings.Contains(msg, "run.lock: locked by pid") {
		t.Errorf("dry run did not report the held lock: %s", msg)
	}
	held.Release()
	if err := h.RunCleanup(); err != nil {
		t.Fatal(err)
	}
	// The refusal of / is checked under --dry-run too.
	if got := h.RunErr(t, `fs.remove("/", { recursive = true })`); got != `test:1: fs.remove: refusing to remove "/" recursively` {
		t.Errorf("got %s", got)
	}
}

func TestLuaTempdirCleanup(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	h := newHost(t, tmp, false)
	vals := h.Run(t, `
		local a, b = fs.tempdir(), fs.tempdir("xen-")
		fs.mkdir(a .. "/deep/er")
		fs.write(a .. "/deep/er/f", "x")
		return a, b`)
	a, b := vals[0].String(), vals[1].String()
	if !regexp.MustCompile(`^`+regexp.QuoteMeta(tmp)+`/bkrun-\d+$`).MatchString(a) || !strings.HasPrefix(b, tmp+"/xen-") {
		t.Errorf("tempdirs %s %s", a, b)
	}
	if h.PendingCleanup() != 2 {
		t.Errorf("%d clean-up steps pending, want 2", h.PendingCleanup())
	}
	if err := h.RunCleanup(); err != nil {
		t.Fatal(err)
	}
	if names, _ := List(tmp); len(names) != 0 {
		t.Errorf("left in TMPDIR after clean-up: %q", names)
	}
}

func TestLuaLockRelease(t *testing.T) {
	d := t.TempDir()
	h := newHost(t, d, false)
	vals := h.Run(t, `
		local l = fs.lock(D .. "/lock")
		local held = tostring(l)
		local ok, err = pcall(fs.lock, D .. "/lock")
		l:release()
		l:release()
		local l2 = fs.lock(D .. "/lock", { wait = 1 })
		return held, tostring(l), l.path, l.nothing, ok, err`)
	got := fmt.Sprint(vals[:5])
	want := fmt.Sprintf("[fs.lock(%s/lock, held) fs.lock(%s/lock, released) %s/lock nil false]", d, d, d)
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if !strings.Contains(vals[5].String(), "(this process: the lock is already held by this run)") {
		t.Errorf("second lock in one run: %s", vals[5])
	}
	// l was released by hand (its step cancelled); l2 is released by clean-up.
	if n := h.PendingCleanup(); n != 1 {
		t.Errorf("%d clean-up steps pending, want 1", n)
	}
	if _, err := AcquireLock(t.Context(), d+"/lock", 0, "x"); err == nil {
		t.Fatal("l2 is not held")
	}
	if err := h.RunCleanup(); err != nil {
		t.Fatal(err)
	}
	l, err := AcquireLock(t.Context(), d+"/lock", 0, "x")
	if err != nil {
		t.Fatalf("clean-up did not release the lock: %v", err)
	}
	l.Release()
	if got := h.RunErr(t, `local l = fs.lock(D .. "/lock"); l.release({})`); got != "test:1: bad argument #1 to 'lock:release' (fs.lock expected, got table)" {
		t.Errorf("release with a wrong self: %s", got)
	}
}

// TestLuaLockAcrossProcesses: another process holds the lock; a recipe
// gets a readable error at once, gives up after its wait, and gets the lock
// as soon as the holder dies (flock dies with its process: no stale lock).
func TestLuaLockAcrossProcesses(t *testing.T) {
	d := t.TempDir()
	holder, _ := lockHolder(t, d+"/backup.lock", "hold")
	pid := holder.Process.Pid
	h := newHost(t, d, false)

	re := regexp.MustCompile(fmt.Sprintf(`^test:1: fs\.lock: %s/backup\.lock: locked by pid %d since %s$`, regexp.QuoteMeta(d), pid, rfc3339))
	if got := h.RunErr(t, `fs.lock(D .. "/backup.lock")`); !re.MatchString(got) {
		t.Errorf("got  %s\nwant %s", got, re)
	}
	start := time.Now()
	re = regexp.MustCompile(fmt.Sprintf(`^test:1: fs\.lock: %s/backup\.lock: locked by pid %d since %s; gave up after waiting 300ms$`, regexp.QuoteMeta(d), pid, rfc3339))
	if got := h.RunErr(t, `fs.lock(D .. "/backup.lock", { wait = 0.3 })`); !re.MatchString(got) {
		t.Errorf("got  %s\nwant %s", got, re)
	}
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Errorf("gave up after %v", el)
	}

	time.AfterFunc(300*time.Millisecond, func() { holder.Process.Kill() })
	start = time.Now()
	h.Run(t, `lock = fs.lock(D .. "/backup.lock", { wait = "20s" })`)
	if el := time.Since(start); el < 250*time.Millisecond || el > 10*time.Second {
		t.Errorf("got the lock after %v", el)
	}
	holder.Wait()
	if got := readFile(t, d+"/backup.lock"); !strings.HasPrefix(got, fmt.Sprintf("pid %d\nsince ", os.Getpid())) {
		t.Errorf("lock file says %q", got)
	}
	if err := h.RunCleanup(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, d+"/backup.lock"); got != "" {
		t.Errorf("after clean-up the lock file says %q", got)
	}
}

func TestLuaLockInterrupted(t *testing.T) {
	d := t.TempDir()
	l, err := AcquireLock(t.Context(), d+"/lock", 0, "x")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	h := newHost(t, d, false)
	time.AfterFunc(200*time.Millisecond, func() { h.Cancel(&runtime.SignalError{Signal: os.Interrupt}) })
	got := h.RunErr(t, `fs.lock(D .. "/lock", { wait = 60 })`)
	re := regexp.MustCompile(`^test:1: fs\.lock: ` + regexp.QuoteMeta(d) + `/lock: while waiting for the lock \(.*\): interrupted by SIGINT$`)
	if !re.MatchString(got) {
		t.Errorf("got  %s\nwant %s", got, re)
	}
}

// TestModuleDocs: every function in the module table is documented and
// every documented function exists, with a signature naming it.
func TestModuleDocs(t *testing.T) {
	h := newHost(t, t.TempDir(), false)
	mod := h.Run(t, `return fs`)[0].(*lua.LTable)
	var inTable []string
	mod.ForEach(func(k, _ lua.LValue) { inTable = append(inTable, k.String()) })
	sort.Strings(inTable)
	var documented []string
	for _, f := range Module.Funcs {
		if f.Doc == "" {
			t.Errorf("%s has no Doc", f.Name)
		}
		if strings.Contains(f.Name, ":") {
			if !strings.HasPrefix(f.Sig, f.Name+"(") {
				t.Errorf("Sig %q does not start with %s(", f.Sig, f.Name)
			}
			continue
		}
		if !strings.HasPrefix(f.Sig, "fs."+f.Name+"(") {
			t.Errorf("Sig %q does not start with fs.%s(", f.Sig, f.Name)
		}
		documented = append(documented, f.Name)
	}
	sort.Strings(documented)
	if strings.Join(inTable, ",") != strings.Join(documented, ",") {
		t.Errorf("module table %v, documented %v", inTable, documented)
	}
}
