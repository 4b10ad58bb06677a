package catalog

import (
	"fmt"
	"time"

	"github.com/bkrun/bkrun/runtime"
	"github.com/bkrun/bkrun/stdlib/ssh"
	"github.com/bkrun/bkrun/stdlib/stream"
	lua "github.com/yuin/gopher-lua"
)

// Module binds catalog to Lua.
var Module = &runtime.Module{
	Name:    "catalog",
	Summary: "The backups under a directory, grouped by source, with their dump chains",
	Doc: `catalog.scan reads the catalogue entries (X.json) that stream.copy writes
next to every backup X, in a local directory and all its subdirectories
(symbolic links are not followed). A backup is an entry whose data file is
present with the size the entry records. A damaged entry, an entry whose data
file is missing or of another size, and a temporary ".partial" file left by an
interrupted copy are reported by cat:problems() with the reason; any other file
is listed by cat:unknown(). Nothing is decoded: catalog.scan reads only the
entries and the file sizes (stream.verify checks the data against its hash).

A backup's kind is "dump" when the recipe recorded a dump level or partition
(xen-backup.lua: meta = {domain=, partition=, level=, base=}); its source is
then "domain/partition". A copy of a device or a file is an "image", anything
else (btrfs send, a command's output) a "stream"; their source is the one
stream.copy recorded.

A dump at level N is restored on top of the most recent earlier dump of the
same source at a lower level, and so on down to level 0 (dump(8) semantics):
with Tower-of-Hanoi levels 0 3 2 5 4 on days 1 to 5, the level 4 of day 5
needs day 3 (level 2) and day 1 (level 0). cat:chain(path) returns that list.

catalog.scan("[user@]host:dir") reads a backup server's directory the same way
over SFTP (nothing to install there); paths are then "[user@]host:path".`,
	Funcs: []runtime.Func{
		{Name: "scan", Sig: `catalog.scan(dir [, {ssh=conn|{...}}]) -> cat`,
			Doc: `Scan a directory recursively: a local one, or "[user@]host:dir" over SFTP
(ssh is a connection from ssh.connect or a table of its options; without it a
connection is made with ~/.ssh/config and closed after the scan). Raises only
if dir cannot be read; damaged entries are listed by cat:problems(). cat.dir
is the directory.`},
		{Name: "cat:sources", Sig: `cat:sources() -> {{source=, backups={b, ...}}, ...}`,
			Doc: "Backups grouped by source (sorted by name), newest first within each. Each b is {path=, kind=, source=, time= (Unix seconds, when the copy finished), date= (RFC 3339, UTC), size= (bytes of the source), bytes= (bytes of the file), level= (dumps; nil otherwise), base= (Unix seconds of the dump an incremental was taken against; nil if none), codec=, hash=, host=, extra=}."},
		{Name: "cat:backups", Sig: `cat:backups() -> {b, ...}`,
			Doc: "All backups in one list, by source then newest first (the same tables as cat:sources)."},
		{Name: "cat:problems", Sig: `cat:problems() -> {{path=, reason=}, ...}`,
			Doc: "Files that belong to a backup but cannot be used, by path: damaged entry, data file missing or of the wrong size, incomplete upload (temporary file), unreadable directory."},
		{Name: "cat:unknown", Sig: `cat:unknown() -> {path, ...}`,
			Doc: "Files that are neither a backup nor a catalogue entry, by path."},
		{Name: "cat:find", Sig: `cat:find(path) -> b or nil`,
			Doc: "The backup whose data file (or entry) is path; a relative path is also tried under cat.dir."},
		{Name: "cat:chain", Sig: `cat:chain(path or b) -> {path, ...}`,
			Doc: "The backups a restore applies, oldest first, ending with the one asked for: the level 0 dump and the incrementals leading to it; an image or a stream alone. Raises if path is not a backup of the catalogue, or if a lower-level dump the chain needs is missing (the error names the source, the level and the date)."},
	},
	Open: open,
}

const catType = "catalog.catalog"

func open(h *runtime.Host, L *lua.LState) *lua.LTable {
	mt := L.NewTypeMetatable(catType)
	methods := map[string]lua.LGFunction{
		"sources": func(L *lua.LState) int {
			c := checkCat(L, "cat:sources")
			t := L.NewTable()
			for _, s := range c.Sources() {
				e := L.NewTable()
				e.RawSetString("source", lua.LString(s.Name))
				bs := L.NewTable()
				for _, b := range s.Backups {
					bs.Append(backupTable(L, b))
				}
				e.RawSetString("backups", bs)
				t.Append(e)
			}
			L.Push(t)
			return 1
		},
		"backups": func(L *lua.LState) int {
			c := checkCat(L, "cat:backups")
			t := L.NewTable()
			for _, b := range c.Backups {
				t.Append(backupTable(L, b))
			}
			L.Push(t)
			return 1
		},
		"problems": func(L *lua.LState) int {
			c := checkCat(L, "cat:problems")
			t := L.NewTable()
			for _, p := range c.Problems {
				e := L.NewTable()
				e.RawSetString("path", lua.LString(p.Path))
				e.RawSetString("reason", lua.LString(p.Reason))
				t.Append(e)
			}
			L.Push(t)
			return 1
		},
		"unknown": func(L *lua.LState) int {
			c := checkCat(L, "cat:unknown")
			t := L.NewTable()
			for _, p := range c.Unknown {
				t.Append(lua.LString(p))
			}
			L.Push(t)
			return 1
		},
		"find": func(L *lua.LState) int {
			c := checkCat(L, "cat:find")
			if b, ok := c.Find(runtime.CheckPath(L, 2, "cat:find")); ok {
				L.Push(backupTable(L, b))
			} else {
				L.Push(lua.LNil)
			}
			return 1
		},
		"chain": func(L *lua.LState) int {
			const fn = "cat:chain"
			c := checkCat(L, fn)
			var path string
			switch v := L.Get(2).(type) {
			case lua.LString:
				path = string(v)
			case *lua.LTable:
				p, ok := v.RawGetString("path").(lua.LString)
				if !ok {
					runtime.ArgError(L, 2, fn, "a backup table without a path")
				}
				path = string(p)
			default:
				runtime.TypeError(L, 2, fn, "path or backup")
			}
			b, ok := c.Find(path)
			if !ok {
				runtime.Raise(L, fn, fmt.Errorf("%s: not a backup in the catalogue of %s", path, c.Dir))
			}
			chain, err := c.Chain(b)
			if err != nil {
				runtime.Raise(L, fn, err)
			}
			t := L.NewTable()
			for _, b := range chain {
				t.Append(lua.LString(b.Path))
			}
			L.Push(t)
			return 1
		},
	}
	L.SetField(mt, "__index", L.NewFunction(func(L *lua.LState) int {
		c := checkCat(L, "catalog")
		key := L.CheckString(2)
		if key == "dir" {
			L.Push(lua.LString(c.Dir))
			return 1
		}
		if f, ok := methods[key]; ok {
			L.Push(L.NewFunction(f))
			return 1
		}
		L.Push(lua.LNil)
		return 1
	}))
	L.SetField(mt, "__tostring", L.NewFunction(func(L *lua.LState) int {
		c := checkCat(L, "catalog")
		L.Push(lua.LString(fmt.Sprintf("catalog %s: %d backups, %d problems, %d unknown", c.Dir, len(c.Backups), len(c.Problems), len(c.Unknown))))
		return 1
	}))
	return runtime.Table(L, map[string]lua.LGFunction{
		"scan": func(L *lua.LState) int {
			const fn = "catalog.scan"
			dir := runtime.CheckPath(L, 1, fn)
			o := runtime.OptsAt(L, 2, fn)
			o.Has("ssh")
			var sshV lua.LValue = lua.LNil
			if t := o.Table(); t != nil {
				sshV = t.RawGetString("ssh")
			}
			o.Done(false)
			var c *Catalog
			var err error
			if dest, rdir, remote := stream.ParseRemote(dir); remote {
				conn, ok := ssh.FromLua(sshV)
				if !ok {
					var opts ssh.Options
					switch v := sshV.(type) {
					case *lua.LNilType:
					case *lua.LTable:
						opts = ssh.OptionsOf(L, runtime.OptsOf(L, v, 2, fn+" option 'ssh'"), 2, fn+" option 'ssh'")
					default:
						runtime.ArgError(L, 2, fn, "option 'ssh': a connection (ssh.connect) or a table of ssh options expected, got "+v.Type().String())
					}
					if conn, err = ssh.Dial(h.Context(), dest, opts); err != nil {
						runtime.Raise(L, fn, err)
					}
					defer conn.Close()
				}
				c, err = ScanRemote(conn, dest, rdir)
			} else {
				c, err = Scan(dir)
			}
			if err != nil {
				runtime.Raise(L, fn, err)
			}
			runtime.PushObject(L, c, catType)
			return 1
		},
	})
}

func checkCat(L *lua.LState, fn string) *Catalog {
	if ud, ok := L.Get(1).(*lua.LUserData); ok {
		if c, ok := ud.Value.(*Catalog); ok {
			return c
		}
	}
	runtime.TypeError(L, 1, fn, "catalogue (use cat:method(), not cat.method())")
	return nil
}

func backupTable(L *lua.LState, b *Backup) *lua.LTable {
	t := L.NewTable()
	set := func(k string, v lua.LValue) { t.RawSetString(k, v) }
	set("path", lua.LString(b.Path))
	set("kind", lua.LString(b.Kind))
	set("source", lua.LString(b.Source))
	set("time", lua.LNumber(b.Time.Unix()))
	set("date", lua.LString(b.Time.UTC().Format(time.RFC3339)))
	set("size", lua.LNumber(b.Size))
	set("bytes", lua.LNumber(b.Meta.BytesWritten))
	if b.Level >= 0 {
		set("level", lua.LNumber(b.Level))
	}
	if !b.Base.IsZero() {
		set("base", lua.LNumber(b.Base.Unix()))
	}
	set("codec", lua.LString(b.Meta.Codec))
	set("hash", lua.LString(b.Meta.Hash))
	set("host", lua.LString(b.Meta.Host))
	if len(b.Meta.Extra) > 0 {
		set("extra", runtime.ToLua(L, b.Meta.Extra))
	}
	return t
}
