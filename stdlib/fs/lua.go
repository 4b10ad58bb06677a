package fs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/bkrun/bkrun/runtime"
	lua "github.com/yuin/gopher-lua"
)

// Module binds fs to Lua.
var Module = &runtime.Module{
	Name:    "fs",
	Summary: "files and directories: stat, mkdir, remove, rename, atomic writes, temp dirs, locks",
	Doc: `Paths are strings; relative paths are relative to the directory bkrun was
started in. Failures raise "fs.remove: /backup/x: directory not empty".

Modes are octal strings: mode="0755". Lua has no octal literals (0755 is the
decimal number 755), so a number is refused rather than misread.

Writes are atomic: fs.write puts the data in a temporary file next to the
target, syncs it, renames it over the target and syncs the directory, so a
crash leaves the old contents or the new, never a torn file.

Under --dry-run, fs.mkdir, fs.remove, fs.rename, fs.write and fs.tempdir print
what they would do ("[dry-run] fs.write /etc/x (12 bytes)") and change nothing;
fs.tempdir then returns a would-be path. fs.exists, fs.stat, fs.list, fs.glob
and fs.read run normally. Under --dry-run fs.lock takes no lock and
writes nothing, but still fails with "locked by pid N" when a run holds it.
Every change is logged at debug level (-v).`,
	Funcs: []runtime.Func{
		{Name: "exists", Sig: "fs.exists(path) -> boolean",
			Doc: `True if path exists (a symlink counts, even a dangling one: lstat).
False only when it does not exist; any other failure (permission denied, a
file where a directory should be) raises an error.`},
		{Name: "stat", Sig: "fs.stat(path [, {follow=false}]) -> {type, size, mode, perm, mtime, uid, gid} | nil",
			Doc: `Describe path, or nil if it does not exist. type is "file", "dir",
"symlink", "device" (block), "chardev", "fifo" or "socket"; mode is the
permission bits as a number (with setuid/setgid/sticky) and perm the same
as an octal string ("0644"); mtime is in unix seconds. A symlink is
described itself unless follow=true.`},
		{Name: "mkdir", Sig: `fs.mkdir(path [, {mode="0755"}])`,
			Doc: `Create a directory and its missing parents (mkdir -p). Directories
created get exactly mode; an existing directory is fine and is left as it
is; a file in the way is an error.`},
		{Name: "list", Sig: "fs.list(dir) -> {name, ...}",
			Doc: "The names of the entries of dir (without . and ..), sorted."},
		{Name: "glob", Sig: "fs.glob(pattern) -> {path, ...}",
			Doc: `Paths matching a shell pattern (* ? [a-z], no **), sorted; an empty
table when nothing matches. A malformed pattern is an error.`},
		{Name: "remove", Sig: "fs.remove(path [, {recursive=false}])",
			Doc: `Remove a file, symlink or empty directory; with recursive=true, a whole
tree (rm -rf). A path that does not exist is not an error. A non-empty
directory without recursive=true is. Recursive removal refuses "/", "",
"." and "..", and a tree with a file system mounted inside it.`},
		{Name: "rename", Sig: "fs.rename(old, new)",
			Doc: `Rename atomically (rename(2)), replacing new if it is a file; both must
be on one file system. The directories are synced afterwards.`},
		{Name: "read", Sig: "fs.read(path [, {max=16777216}]) -> string",
			Doc: `The whole contents of a small file. Files over max bytes (default
16 MiB) are an error: large data belongs in a stream, not a Lua string.`},
		{Name: "write", Sig: `fs.write(path, data [, {mode="0644", sync=true}])`,
			Doc: `Replace path with data atomically: write a temporary file
.<name>.tmp-NNNN in the same directory, fsync it, rename it over path, fsync
the directory. On failure the temporary file is removed and path is left
untouched. The file gets exactly mode and is owned by the running user; a
symlink at path is replaced, not followed. sync=false skips both fsyncs
(still atomic, not crash-safe).`},
		{Name: "tempdir", Sig: `fs.tempdir([prefix]) -> path`,
			Doc: `Create a new private directory under $TMPDIR (default /tmp) named
<prefix>NNNN (default prefix "bkrun-"). It is removed with its contents
when the run ends, whatever the outcome (clean-up stack); removal refuses to
descend into a file system still mounted inside it.`},
		{Name: "lock", Sig: "fs.lock(path [, {wait=0}]) -> lock",
			Doc: `Take an exclusive lock (flock) on path, creating the file (0644) if
needed, and write "pid N", "since <time>" and "cmd <command line>" into it.
If another process holds it: with wait=0 (default) fail at once with
"fs.lock: <path>: locked by pid N since <time>"; with wait=seconds (or
"5m") retry until then. The kernel drops a flock when its holder exits, so
a lock left by a crashed run is simply free: there are no stale locks to
break. If the pid recorded in the file is gone but the lock is still held,
a process that inherited the descriptor holds it, and the error says so.
The lock is released when the run ends, or earlier with lock:release().
The file is kept (removing a locked file would let two runs lock two
different files under one name). The path must not be a symlink.`},
		{Name: "lock:release", Sig: "lock:release()",
			Doc: `Release the lock now instead of at the end of the run (its clean-up
step is dropped). Releasing twice is harmless. lock.path is the lock file.`},
	},
	Open: open,
}

func open(h *runtime.Host, L *lua.LState) *lua.LTable {
	b := &binding{h: h}
	b.lockMeta(L)
	return runtime.Table(L, map[string]lua.LGFunction{
		"exists":  b.exists,
		"stat":    b.stat,
		"mkdir":   b.mkdir,
		"list":    b.list,
		"glob":    b.glob,
		"remove":  b.remove,
		"rename":  b.rename,
		"read":    b.read,
		"write":   b.write,
		"tempdir": b.tempdir,
		"lock":    b.lock,
	})
}

type binding struct{ h *runtime.Host }

// modeOpt reads the mode option as an octal string.
func modeOpt(L *lua.LState, o *runtime.Opts, argn int, fn string, def os.FileMode) os.FileMode {
	if t, ok := L.Get(argn).(*lua.LTable); ok {
		if n, ok := t.RawGetString("mode").(lua.LNumber); ok {
			runtime.ArgError(L, argn, fn, fmt.Sprintf(
				"option 'mode': octal string expected, got number %v (Lua has no octal literals: 0755 is the decimal number 755; write mode=\"0755\")", n))
		}
	}
	if !o.Has("mode") {
		return def
	}
	m, err := ParseMode(o.String("mode", ""))
	if err != nil {
		runtime.ArgError(L, argn, fn, "option 'mode': "+err.Error())
	}
	return m
}

func stringList(L *lua.LState, items []string) *lua.LTable {
	t := L.CreateTable(len(items), 0)
	for _, s := range items {
		t.Append(lua.LString(s))
	}
	return t
}

func (b *binding) exists(L *lua.LState) int {
	p := runtime.CheckPath(L, 1, "fs.exists")
	ok, err := Exists(p)
	if err != nil {
		runtime.Raise(L, "fs.exists", err)
	}
	L.Push(lua.LBool(ok))
	return 1
}

func (b *binding) stat(L *lua.LState) int {
	p := runtime.CheckPath(L, 1, "fs.stat")
	o := runtime.OptsAt(L, 2, "fs.stat")
	follow := o.Bool("follow", false)
	o.Done(false)
	info, err := Stat(p, follow)
	if err != nil {
		runtime.Raise(L, "fs.stat", err)
	}
	if info == nil {
		L.Push(lua.LNil)
		return 1
	}
	t := L.CreateTable(0, 7)
	t.RawSetString("type", lua.LString(info.Type))
	t.RawSetString("size", lua.LNumber(info.Size))
	t.RawSetString("mode", lua.LNumber(info.Mode))
	t.RawSetString("perm", lua.LString(fmt.Sprintf("%04o", info.Mode)))
	t.RawSetString("mtime", lua.LNumber(info.Mtime))
	t.RawSetString("uid", lua.LNumber(info.UID))
	t.RawSetString("gid", lua.LNumber(info.GID))
	L.Push(t)
	return 1
}

func (b *binding) mkdir(L *lua.LState) int {
	p := runtime.CheckPath(L, 1, "fs.mkdir")
	o := runtime.OptsAt(L, 2, "fs.mkdir")
	mode := modeOpt(L, o, 2, "fs.mkdir", 0755)
	o.Done(false)
	if b.h.DryRun() {
		b.h.DryRunf("fs.mkdir %s (mode %s)", p, FormatMode(mode))
		return 0
	}
	b.h.Logger().Debug("fs.mkdir", "path", p, "mode", FormatMode(mode))
	if err := Mkdir(p, mode); err != nil {
		runtime.Raise(L, "fs.mkdir", err)
	}
	return 0
}

func (b *binding) list(L *lua.LState) int {
	p := runtime.CheckPath(L, 1, "fs.list")
	names, err := List(p)
	if err != nil {
		runtime.Raise(L, "fs.list", err)
	}
	L.Push(stringList(L, names))
	return 1
}

func (b *binding) glob(L *lua.LState) int {
	p := runtime.CheckPath(L, 1, "fs.glob")
	m, err := Glob(p)
	if err != nil {
		runtime.Raise(L, "fs.glob", err)
	}
	L.Push(stringList(L, m))
	return 1
}

func (b *binding) remove(L *lua.LState) int {
	p := runtime.CheckPath(L, 1, "fs.remove")
	o := runtime.OptsAt(L, 2, "fs.remove")
	rec := o.Bool("recursive", false)
	o.Done(false)
	if rec {
		if err := CheckRemoveAll(p); err != nil {
			runtime.Raise(L, "fs.remove", err)
		}
	}
	if b.h.DryRun() {
		if rec {
			b.h.DryRunf("fs.remove %s (recursive)", p)
		} else {
			b.h.DryRunf("fs.remove %s", p)
		}
		return 0
	}
	b.h.Logger().Debug("fs.remove", "path", p, "recursive", rec)
	if err := Remove(p, rec); err != nil {
		runtime.Raise(L, "fs.remove", err)
	}
	return 0
}

func (b *binding) rename(L *lua.LState) int {
	oldp := runtime.CheckPath(L, 1, "fs.rename")
	newp := runtime.CheckPath(L, 2, "fs.rename")
	if b.h.DryRun() {
		b.h.DryRunf("fs.rename %s -> %s", oldp, newp)
		return 0
	}
	b.h.Logger().Debug("fs.rename", "from", oldp, "to", newp)
	if err := Rename(oldp, newp); err != nil {
		runtime.Raise(L, "fs.rename", err)
	}
	return 0
}

func (b *binding) read(L *lua.LState) int {
	p := runtime.CheckPath(L, 1, "fs.read")
	o := runtime.OptsAt(L, 2, "fs.read")
	max := o.Int("max", DefaultMaxRead)
	o.Done(false)
	if max <= 0 {
		runtime.ArgError(L, 2, "fs.read", fmt.Sprintf("option 'max': must be positive, got %d", max))
	}
	data, err := Read(p, max)
	if err != nil {
		runtime.Raise(L, "fs.read", err)
	}
	L.Push(lua.LString(data))
	return 1
}

func (b *binding) write(L *lua.LState) int {
	p := runtime.CheckPath(L, 1, "fs.write")
	data, ok := L.Get(2).(lua.LString)
	if !ok {
		runtime.TypeError(L, 2, "fs.write", "string")
	}
	o := runtime.OptsAt(L, 3, "fs.write")
	mode := modeOpt(L, o, 3, "fs.write", DefaultMode)
	sync := o.Bool("sync", true)
	o.Done(false)
	if b.h.DryRun() {
		b.h.DryRunf("fs.write %s (%d bytes)", p, len(data))
		return 0
	}
	b.h.Logger().Debug("fs.write", "path", p, "bytes", len(data), "mode", FormatMode(mode), "sync", sync)
	if err := Write(p, []byte(data), mode, sync); err != nil {
		runtime.Raise(L, "fs.write", err)
	}
	return 0
}

func (b *binding) tempdir(L *lua.LState) int {
	prefix := "bkrun-"
	switch v := L.Get(1).(type) {
	case *lua.LNilType:
	case lua.LString:
		if v != "" {
			prefix = string(v)
		}
		if strings.ContainsRune(prefix, '/') {
			runtime.ArgError(L, 1, "fs.tempdir", fmt.Sprintf("prefix %q contains a /", prefix))
		}
	default:
		runtime.TypeError(L, 1, "fs.tempdir", "string")
	}
	if b.h.DryRun() {
		p := filepath.Join(os.TempDir(), prefix+"XXXXXXXX")
		b.h.DryRunf("fs.tempdir %s", p)
		L.Push(lua.LString(p))
		return 1
	}
	dir, err := TempDir(prefix)
	if err != nil {
		runtime.Raise(L, "fs.tempdir", err)
	}
	log := b.h.Logger()
	log.Debug("fs.tempdir", "path", dir)
	b.h.Defer("remove temp dir "+dir, func(context.Context) error {
		log.Debug("fs.tempdir remove", "path", dir)
		return Remove(dir, true)
	})
	L.Push(lua.LString(dir))
	return 1
}

const lockType = "fs.lock"

type luaLock struct {
	l    *Lock
	step *runtime.Step
}

func (b *binding) lockMeta(L *lua.LState) {
	mt := L.NewTypeMetatable(lockType)
	release := L.NewFunction(b.release)
	L.SetField(mt, "__index", L.NewFunction(func(L *lua.LState) int {
		ll := checkLock(L, "fs.lock")
		switch L.CheckString(2) {
		case "release":
			L.Push(release)
		case "path":
			L.Push(lua.LString(ll.l.Path))
		default:
			L.Push(lua.LNil)
		}
		return 1
	}))
	L.SetField(mt, "__tostring", L.NewFunction(func(L *lua.LState) int {
		ll := checkLock(L, "tostring")
		state := "held"
		if !ll.l.Held() {
			state = "released"
		}
		L.Push(lua.LString(fmt.Sprintf("fs.lock(%s, %s)", ll.l.Path, state)))
		return 1
	}))
}

func checkLock(L *lua.LState, fn string) *luaLock {
	if ud, ok := L.Get(1).(*lua.LUserData); ok {
		if ll, ok := ud.Value.(*luaLock); ok {
			return ll
		}
	}
	runtime.TypeError(L, 1, fn, "fs.lock")
	return nil
}

func (b *binding) lock(L *lua.LState) int {
	p := runtime.CheckPath(L, 1, "fs.lock")
	o := runtime.OptsAt(L, 2, "fs.lock")
	wait := o.Duration("wait", 0)
	o.Done(false)
	var ll *luaLock
	if b.h.DryRun() {
		// A dry run changes nothing, not even a lock file; it still
		// reports a run in progress that holds the lock.
		if err := ProbeLock(p); err != nil {
			runtime.Raise(L, "fs.lock", err)
		}
		b.h.DryRunf("fs.lock %s (not taken: dry run)", p)
		ll = &luaLock{l: &Lock{Path: p}, step: b.h.Defer("dry-run lock "+p, func(context.Context) error { return nil })}
	}
	if ll == nil {
		l, err := AcquireLock(b.h.Context(), p, wait, strings.Join(os.Args, " "))
		if err != nil {
			runtime.Raise(L, "fs.lock", err)
		}
		log := b.h.Logger()
		log.Debug("fs.lock", "path", p)
		ll = &luaLock{l: l}
		ll.step = b.h.Defer("release lock "+p, func(context.Context) error {
			log.Debug("fs.lock release", "path", p)
			return l.Release()
		})
	}
	runtime.PushObject(L, ll, lockType)
	return 1
}

func (b *binding) release(L *lua.LState) int {
	ll := checkLock(L, "lock:release")
	ll.step.Cancel()
	if !ll.l.Held() {
		return 0
	}
	b.h.Logger().Debug("fs.lock release", "path", ll.l.Path)
	if err := ll.l.Release(); err != nil {
		runtime.Raise(L, "lock:release", err)
	}
	return 0
}
