package btrfs

import (
	"context"
	"io"
	"os"
	"strings"

	"github.com/bkrun/bkrun/runtime"
	"github.com/bkrun/bkrun/stdlib/exec"
	"github.com/bkrun/bkrun/stdlib/stream"
	lua "github.com/yuin/gopher-lua"
)

const sendType = "btrfs.send"

// Module binds btrfs to Lua.
var Module = &runtime.Module{
	Name:    "btrfs",
	Summary: "btrfs subvolumes, read-only snapshots, send and receive",
	Doc: `Runs btrfs-progs without a shell. A failing command raises
"btrfs.snapshot: btrfs subvolume snapshot DST: btrfs exited 1: ERROR: ..." with
its real exit status and the last lines of its stderr: nothing is silenced.

btrfs.send returns a stream source: stream.copy{from = btrfs.send(snap), to =
"/backup/snap.btrfs.lz4"} stores a standard send stream (lz4 -dc FILE | btrfs
receive DIR restores it without bkrun), and btrfs.receive(dir, btrfs.send(...))
replicates between filesystems. The bytes never pass through Lua. A send that
fails (a snapshot that is not read-only, a missing parent) fails the copy or
the receive; it never yields a silently short stream. A receive that fails
deletes the half-received subvolume it created.

Under --dry-run create, delete, snapshot, send and receive print the command
and change nothing; list, show and is_subvolume run.`,
	Funcs: []runtime.Func{
		{Name: "create", Sig: "btrfs.create(path) -> path",
			Doc: "Create an empty subvolume. The parent directory must exist; path must not."},
		{Name: "delete", Sig: "btrfs.delete(path)",
			Doc: `Delete a subvolume or snapshot. A path that is not a subvolume (a plain
directory, a file, anything not on btrfs) is refused with an error.`},
		{Name: "snapshot", Sig: "btrfs.snapshot(src, dst [, {readonly=false}]) -> dst",
			Doc: `Snapshot subvolume src as dst (read-only with readonly=true, as send needs).
dst must not exist: btrfs would otherwise create the snapshot inside it.`},
		{Name: "list", Sig: "btrfs.list(mount) -> {{id, gen, top_level, path, uuid, parent_uuid, received_uuid, readonly}, ...}",
			Doc: `Every subvolume of the filesystem mounted at mount, in ID order. path is
relative to the filesystem's top-level subvolume, as btrfs prints it.`},
		{Name: "show", Sig: "btrfs.show(path) -> {name, uuid, parent_uuid, received_uuid, id, gen, parent_id, top_level, readonly, flags, created}",
			Doc: `Describe a subvolume (btrfs subvolume show). UUIDs that are "-" are nil;
created is a Unix time.`},
		{Name: "is_subvolume", Sig: "btrfs.is_subvolume(path) -> bool",
			Doc: "Whether path is the root of a btrfs subvolume (a directory with inode 256 on btrfs)."},
		{Name: "send", Sig: "btrfs.send(snap [, {parent=old}]) -> source",
			Doc: `Start "btrfs send [-p old] snap" and return its output as a stream source
for stream.copy or btrfs.receive. snap (and parent) must be read-only
snapshots; with parent the stream is incremental and the receiver must have
parent already. source:close() stops an unread send; the clean-up stack
stops any send still running at the end of the run.`},
		{Name: "receive", Sig: "btrfs.receive(dir, source | file) -> path",
			Doc: `Run "btrfs receive dir" on a send stream and return the path of the received
subvolume. The stream is a source (btrfs.send(...)) or a file written by
stream.copy; a file ending in .lz4 or .zst is decoded on the way. A source
is closed when the receive ends: a send it did not read to the end is
stopped and waited for, so the snapshot can be deleted right after.`},
	},
	Open: open,
}

func open(h *runtime.Host, L *lua.LState) *lua.LTable {
	mt := L.NewTypeMetatable(sendType)
	L.SetField(mt, "__index", L.NewFunction(func(L *lua.LState) int {
		ud := L.CheckUserData(1)
		if L.CheckString(2) == "close" {
			L.Push(L.NewFunction(func(L *lua.LState) int {
				if c, ok := ud.Value.(io.Closer); ok {
					c.Close()
				}
				return 0
			}))
			return 1
		}
		L.Push(lua.LNil)
		return 1
	}))
	L.SetField(mt, "__tostring", L.NewFunction(func(L *lua.LState) int {
		L.Push(lua.LString(toString(L.CheckUserData(1).Value)))
		return 1
	}))
	dry := func(args ...string) bool {
		if h.DryRun() {
			h.DryRunf("%s", exec.Quote(Argv(args...)))
			return true
		}
		h.Logger().Debug("btrfs", "cmd", exec.Quote(Argv(args...)))
		return false
	}
	return runtime.Table(L, map[string]lua.LGFunction{
		"create": func(L *lua.LState) int {
			const fn = "btrfs.create"
			p := runtime.CheckPath(L, 1, fn)
			if !dry("subvolume", "create", p) {
				if err := Create(h.Context(), p); err != nil {
					runtime.Raise(L, fn, err)
				}
			}
			L.Push(lua.LString(p))
			return 1
		},
		"delete": func(L *lua.LState) int {
			const fn = "btrfs.delete"
			p := runtime.CheckPath(L, 1, fn)
			if !dry("subvolume", "delete", p) {
				if err := Delete(h.Context(), p); err != nil {
					runtime.Raise(L, fn, err)
				}
			}
			return 0
		},
		"snapshot": func(L *lua.LState) int {
			const fn = "btrfs.snapshot"
			src := runtime.CheckPath(L, 1, fn)
			dst := runtime.CheckPath(L, 2, fn)
			o := runtime.OptsAt(L, 3, fn)
			ro := o.Bool("readonly", false)
			o.Done(false)
			if !dry(SnapshotArgs(src, dst, ro)...) {
				if err := Snapshot(h.Context(), src, dst, ro); err != nil {
					runtime.Raise(L, fn, err)
				}
			}
			L.Push(lua.LString(dst))
			return 1
		},
		"list": func(L *lua.LState) int {
			const fn = "btrfs.list"
			mount := runtime.CheckPath(L, 1, fn)
			subs, err := List(h.Context(), mount)
			if err != nil {
				runtime.Raise(L, fn, err)
			}
			t := L.NewTable()
			for _, s := range subs {
				e := L.NewTable()
				e.RawSetString("id", lua.LNumber(s.ID))
				e.RawSetString("gen", lua.LNumber(s.Gen))
				e.RawSetString("top_level", lua.LNumber(s.TopLevel))
				e.RawSetString("path", lua.LString(s.Path))
				setUUID(e, "uuid", s.UUID)
				setUUID(e, "parent_uuid", s.ParentUUID)
				setUUID(e, "received_uuid", s.ReceivedUUID)
				e.RawSetString("readonly", lua.LBool(s.ReadOnly))
				t.Append(e)
			}
			L.Push(t)
			return 1
		},
		"show": func(L *lua.LState) int {
			const fn = "btrfs.show"
			p := runtime.CheckPath(L, 1, fn)
			inf, err := Show(h.Context(), p)
			if err != nil {
				runtime.Raise(L, fn, err)
			}
			t := L.NewTable()
			t.RawSetString("path", lua.LString(inf.Path))
			t.RawSetString("name", lua.LString(inf.Name))
			setUUID(t, "uuid", inf.UUID)
			setUUID(t, "parent_uuid", inf.ParentUUID)
			setUUID(t, "received_uuid", inf.ReceivedUUID)
			t.RawSetString("id", lua.LNumber(inf.ID))
			t.RawSetString("gen", lua.LNumber(inf.Gen))
			t.RawSetString("parent_id", lua.LNumber(inf.ParentID))
			t.RawSetString("top_level", lua.LNumber(inf.TopLevel))
			t.RawSetString("readonly", lua.LBool(inf.ReadOnly))
			t.RawSetString("flags", lua.LString(inf.Flags))
			if !inf.Created.IsZero() {
				t.RawSetString("created", lua.LNumber(inf.Created.Unix()))
			}
			L.Push(t)
			return 1
		},
		"is_subvolume": func(L *lua.LState) int {
			L.Push(lua.LBool(IsSubvolume(runtime.CheckPath(L, 1, "btrfs.is_subvolume"))))
			return 1
		},
		"send": func(L *lua.LState) int {
			const fn = "btrfs.send"
			snap := runtime.CheckPath(L, 1, fn)
			o := runtime.OptsAt(L, 2, fn)
			parent := o.String("parent", "")
			o.Done(false)
			if dry(SendArgs(snap, parent)...) {
				runtime.PushObject(L, &dryRunSource{snap: snap, parent: parent}, sendType)
				return 1
			}
			s, err := Send(h.Context(), snap, parent)
			if err != nil {
				runtime.Raise(L, fn, err)
			}
			// A send nobody reads to the end must not outlive the run.
			h.Defer("stop "+s.String(), func(context.Context) error { s.Close(); return nil })
			runtime.PushObject(L, s, sendType)
			return 1
		},
		"receive": func(L *lua.LState) int {
			const fn = "btrfs.receive"
			dir := runtime.CheckPath(L, 1, fn)
			var r io.Reader
			var name string
			var closeFn func()
			switch v := L.Get(2).(type) {
			case *lua.LUserData:
				rr, ok := v.Value.(io.Reader)
				if !ok {
					runtime.ArgError(L, 2, fn, "a stream source (btrfs.send(...)) or a send-stream file expected, got "+toString(v.Value))
				}
				// The stream is consumed here: once the receive ends,
				// close it, so that a send the receive abandoned is
				// stopped and waited for — until then btrfs refuses to
				// delete the snapshot being sent ("send may be in
				// progress"), which is what a recipe does next.
				r, name, closeFn = rr, toString(v.Value), func() { runtime.CloseConsumed(rr) }
			case lua.LString:
				if string(v) == "" {
					runtime.ArgError(L, 2, fn, "empty path")
				}
				name = string(v)
			default:
				runtime.TypeError(L, 2, fn, "stream source or file path")
			}
			if h.DryRun() {
				h.DryRunf("%s   (stream from %s)", exec.Quote(Argv("receive", dir)), name)
				L.Push(lua.LString(dir + "/<received>"))
				return 1
			}
			if r == nil {
				f, err := OpenStream(name)
				if err != nil {
					runtime.Raise(L, fn, err)
				}
				r, closeFn = f, func() { f.Close() }
			}
			defer closeFn()
			h.Logger().Debug("btrfs receive", "dir", dir, "from", name)
			p, err := Receive(h.Context(), dir, r)
			if err != nil {
				runtime.Raise(L, fn, err)
			}
			L.Push(lua.LString(p))
			return 1
		},
	})
}

func setUUID(t *lua.LTable, key, v string) {
	if v != "" {
		t.RawSetString(key, lua.LString(v))
	}
}

func toString(v any) string {
	if s, ok := v.(interface{ String() string }); ok {
		return s.String()
	}
	if v == nil {
		return "nil"
	}
	return "userdata"
}

// OpenStream opens a send-stream file, decoding .lz4 and .zst files.
func OpenStream(path string) (io.ReadCloser, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	codec := "none"
	switch {
	case strings.HasSuffix(path, ".lz4"):
		codec = "lz4"
	case strings.HasSuffix(path, ".zst"):
		codec = "zstd"
	}
	d, err := stream.NewDecoder(codec, f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &fileStream{ReadCloser: d, f: f}, nil
}

type fileStream struct {
	io.ReadCloser
	f *os.File
}

func (s *fileStream) Close() error {
	s.ReadCloser.Close()
	return s.f.Close()
}

// dryRunSource stands for a send under --dry-run: an empty stream.
type dryRunSource struct{ snap, parent string }

func (d *dryRunSource) Read([]byte) (int, error) { return 0, io.EOF }
func (d *dryRunSource) Path() string             { return d.snap }
func (d *dryRunSource) Kind() string             { return "btrfs-send" }
func (d *dryRunSource) String() string {
	return "btrfs send " + strings.Join(SendArgs(d.snap, d.parent)[1:], " ")
}
