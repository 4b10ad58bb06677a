package catalog

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bkrun/bkrun/runtime"
	"github.com/bkrun/bkrun/stdlib/ssh"
	"github.com/bkrun/bkrun/stdlib/stream"
	lua "github.com/yuin/gopher-lua"
)

// Module binds catalog to Lua.
var Module = &runtime.Module{
	Name:    "catalog",
	Summary: "backup catalogue: what a directory (local or over SSH) holds, by source, with dump chains",
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
over SFTP (nothing to install there); paths are then "[user@]host:path".

A snapshot (kind "snapshot") is a directory SNAP, a read-only btrfs subvolume
received by btrfs-snapsync.lua, with the entry SNAP.json that catalog.record
writes (format "bkrun-snapshot/1": source "host:path" of the subvolume
snapshotted, source_kind "btrfs-subvolume", host, started, finished,
bkrun_version, extra = {parent = the snapshot an incremental send was taken
against, uuid =, received_uuid =}). catalog.scan lists it with its source and
the time it was received, size 0, and does not descend into it; its chain is
itself (a received snapshot is a whole subvolume). An entry whose directory is
gone is a problem ("snapshot directory X is missing"). A read-only subvolume
with no entry (snapshots of older runs) is listed once by cat:unknown() and
not descended into; over SFTP, where a subvolume cannot be told from a
directory, a directory without an entry named like a snapshot stamp
(2026-11-22T03:00:00Z) is.`,
	Funcs: []runtime.Func{
		{Name: "scan", Sig: `catalog.scan(dir [, {ssh=conn|{...}}]) -> cat`,
			Doc: `Scan a directory recursively: a local one, or "[user@]host:dir" over SFTP
(ssh is a connection from ssh.connect or a table of its options; without it a
connection is made with ~/.ssh/config and closed after the scan). Raises only
if dir cannot be read; damaged entries are listed by cat:problems(). cat.dir
is the directory.`},
		{Name: "record", Sig: `catalog.record(snapshot, {source=, parent=, started=, extra=, ssh=conn|{...}, receiver=false}) -> entry path`,
			Doc: `Write the catalogue entry snapshot.json of a snapshot directory (a received
btrfs subvolume), atomically: a temporary name in the same directory, synced,
renamed over any older entry. source is the "host:path" of the subvolume that
was snapshotted (a local path is made absolute and prefixed with this host's
name); parent the name of the snapshot an incremental send was taken against
(omit it for a full send); started when the snapshot was taken (Unix seconds or RFC
3339; default now); extra more fields. The snapshot's uuid and received_uuid
are read with btrfs subvolume show (a failure is logged, and the entry written
without them). With ssh (a connection, or a table of ssh options for a
"[user@]host:path" snapshot) the entry is written on that host over SFTP (the
show runs there over SSH); with receiver=true (or the receiver's command) it
is uploaded through "bkrun receive" on that connection instead, snapshot then
being relative to the receiver's root (no UUIDs: the receiver runs no btrfs
command for it). Raises if the snapshot is not a directory or the entry cannot
be written. Under --dry-run nothing is written.`},
		{Name: "cat:sources", Sig: `cat:sources() -> {{source=, backups={b, ...}}, ...}`,
			Doc: "Backups grouped by source (sorted by name), newest first within each. Each b is {path=, kind=, source=, time= (Unix seconds, when the copy finished), date= (RFC 3339, UTC), size= (bytes of the source), bytes= (bytes of the file), level= (dumps; nil otherwise), base= (Unix seconds of the dump an incremental was taken against; nil if none), codec=, hash=, host=, extra=, parent= (snapshots: the parent snapshot's name of an incremental send; nil otherwise)}. A snapshot's path is its directory; size, bytes, codec and hash are 0 or empty."},
		{Name: "cat:backups", Sig: `cat:backups() -> {b, ...}`,
			Doc: "All backups in one list, by source then newest first (the same tables as cat:sources)."},
		{Name: "cat:problems", Sig: `cat:problems() -> {{path=, reason=}, ...}`,
			Doc: "Files that belong to a backup but cannot be used, by path: damaged entry, data file missing or of the wrong size, snapshot directory missing, incomplete upload (temporary file), unreadable directory."},
		{Name: "cat:unknown", Sig: `cat:unknown() -> {path, ...}`,
			Doc: "Files that are neither a backup nor a catalogue entry, by path; a snapshot directory without an entry is listed once, not its content."},
		{Name: "cat:find", Sig: `cat:find(path) -> b or nil`,
			Doc: "The backup whose data file (or entry) is path; a relative path is also tried under cat.dir."},
		{Name: "cat:chain", Sig: `cat:chain(path or b) -> {path, ...}`,
			Doc: "The backups a restore applies, oldest first, ending with the one asked for: the level 0 dump and the incrementals leading to it; an image, a stream or a snapshot alone. Raises if path is not a backup of the catalogue, or if a lower-level dump the chain needs is missing (the error names the source, the level and the date)."},
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
			sshV := o.Value("ssh")
			o.Done(false)
			var c *Catalog
			var err error
			if dest, rdir, remote := stream.ParseRemote(dir); remote {
				conn, done := connect(h, L, sshV, dest, fn)
				defer done()
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
		"record": func(L *lua.LState) int { return record(h, L) },
	})
}

// connect returns the connection given as option ssh (a conn, or a table
// of ssh options to dial dest with); done closes a connection it made.
func connect(h *runtime.Host, L *lua.LState, sshV lua.LValue, dest, fn string) (*ssh.Conn, func()) {
	conn, opts := ssh.ConnOption(L, sshV, 2, fn)
	if conn != nil {
		return conn, func() {}
	}
	if dest == "" {
		runtime.ArgError(L, 2, fn, "option 'ssh': a table of options needs a [user@]host:path")
	}
	conn, err := ssh.Dial(h.Context(), dest, opts)
	if err != nil {
		runtime.Raise(L, fn, err)
	}
	return conn, func() { conn.Close() }
}

// record is catalog.record(snapshot, opts).
func record(h *runtime.Host, L *lua.LState) int {
	const fn = "catalog.record"
	snap := runtime.CheckString(L, 1, fn)
	o := runtime.OptsAt(L, 2, fn)
	source := o.String("source", "")
	parent := o.String("parent", "")
	sshV := o.Value("ssh")
	recvV := o.Value("receiver")
	startedV := o.Value("started")
	extraV := o.Value("extra")
	o.Done(false)
	if source == "" {
		runtime.ArgError(L, 2, fn, "option 'source' (the host:path of the subvolume snapshotted) is required")
	}
	if parent != "" && strings.Contains(parent, "/") {
		runtime.ArgError(L, 2, fn, "option 'parent': the name of the parent snapshot (no /) expected, got "+parent)
	}
	host, _ := os.Hostname()
	if !strings.Contains(source, ":") {
		if abs, err := filepath.Abs(source); err == nil {
			source = abs
		}
		source = host + ":" + source
	}
	e := &SnapshotEntry{Source: source, Host: host, BkrunVersion: runtime.Version, Finished: time.Now().UTC()}
	switch v := startedV.(type) {
	case *lua.LNilType:
	case lua.LNumber:
		e.Started = time.Unix(int64(v), 0).UTC()
	case lua.LString:
		t, err := time.Parse(time.RFC3339, string(v))
		if err != nil {
			runtime.ArgError(L, 2, fn, "option 'started': Unix seconds or an RFC 3339 time expected, got "+string(v))
		}
		e.Started = t.UTC()
	default:
		runtime.ArgError(L, 2, fn, "option 'started': Unix seconds or an RFC 3339 time expected, got "+v.Type().String())
	}
	e.Extra = map[string]any{}
	switch v := extraV.(type) {
	case *lua.LNilType:
	case *lua.LTable:
		v.ForEach(func(k, x lua.LValue) { e.Extra[k.String()] = runtime.FromLua(x) })
	default:
		runtime.ArgError(L, 2, fn, "option 'extra': table expected, got "+v.Type().String())
	}
	if parent != "" {
		e.Extra["parent"] = parent
	}

	receiver := ""
	switch v := recvV.(type) {
	case *lua.LNilType:
	case lua.LBool:
		if v {
			receiver = ssh.DefaultReceiveCommand
		}
	case lua.LString:
		receiver = string(v)
	default:
		runtime.ArgError(L, 2, fn, "option 'receiver': true or the receiver's command expected, got "+v.Type().String())
	}
	dest, rpath, remote := stream.ParseRemote(snap)
	if remote && sshV == lua.LNil && receiver == "" {
		if _, err := os.Lstat(snap); err == nil {
			remote = false // a local name with a colon (2026-11-22T03:00:00Z)
		}
	}
	if !remote && (sshV != lua.LNil || receiver != "") {
		rpath, remote = snap, true
	}
	entry := stream.MetaPath(snap)
	if h.DryRun() {
		h.DryRunf("catalog.record: write %s (%s, source %s)", entry, SnapshotFormat, source)
		L.Push(lua.LString(entry))
		return 1
	}
	log := h.Logger()
	var err error
	switch {
	case !remote:
		e.Extra["uuid"], e.Extra["received_uuid"], err = subvolumeIDs(h, nil, snap)
		if err != nil {
			log.Warn("catalog.record: no subvolume UUIDs in the entry", "snapshot", snap, "err", err)
		}
		err = WriteSnapshotEntry(snap, e)
	default:
		if sshV == lua.LNil && dest == "" {
			runtime.ArgError(L, 2, fn, "option 'ssh' (a connection) is required with receiver")
		}
		conn, done := connect(h, L, sshV, dest, fn)
		defer done()
		if receiver != "" {
			var sess *ssh.ReceiverSession
			if sess, err = conn.Receiver(h.Context(), receiver); err == nil {
				err = WriteSnapshotEntryReceiver(sess, rpath, e)
				if cerr := sess.Close(); err == nil {
					err = cerr
				}
			}
			break
		}
		e.Extra["uuid"], e.Extra["received_uuid"], err = subvolumeIDs(h, conn, rpath)
		if err != nil {
			log.Warn("catalog.record: no subvolume UUIDs in the entry", "snapshot", snap, "err", err)
		}
		err = WriteSnapshotEntryRemote(conn, rpath, e)
	}
	if err != nil {
		runtime.Raise(L, fn, err)
	}
	L.Push(lua.LString(entry))
	return 1
}

// subvolumeIDs is SubvolumeIDs with the empty values left out of the entry
// (a nil any is dropped by clean).
func subvolumeIDs(h *runtime.Host, conn *ssh.Conn, snap string) (any, any, error) {
	u, r, err := SubvolumeIDs(h.Context(), conn, snap)
	var uv, rv any
	if u != "" {
		uv = u
	}
	if r != "" {
		rv = r
	}
	return uv, rv, err
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
	if p, ok := b.Meta.Extra["parent"].(string); ok && b.Kind == KindSnapshot {
		set("parent", lua.LString(p))
	}
	return t
}
