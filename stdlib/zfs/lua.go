package zfs

import (
	"context"
	"io"
	"os"
	"strings"

	"github.com/bkrun/bkrun/runtime"
	"github.com/bkrun/bkrun/stdlib/stream"
	lua "github.com/yuin/gopher-lua"
)

// Module binds zfs to Lua.
var Module = &runtime.Module{
	Name:    "zfs",
	Summary: "ZFS snapshots: create, list, destroy, send (incremental) and receive",
	Doc: `Through zfs(8). zfs.destroy refuses anything that is not a snapshot name
(pool/ds@name): "zfs destroy pool/ds" would destroy the dataset. zfs.send
returns a source for stream.copy; a send that fails makes the copy fail
(never a short stream that looks complete). Under --dry-run snapshot,
destroy, send and receive are printed, not run; list runs.`,
	Funcs: []runtime.Func{
		{Name: "snapshot", Sig: `zfs.snapshot("pool/ds@name")`, Doc: "Create a snapshot."},
		{Name: "destroy", Sig: `zfs.destroy("pool/ds@name")`, Doc: "Destroy a snapshot (only snapshots)."},
		{Name: "list", Sig: `zfs.list("pool/ds") -> {{name=, created=}, ...}`, Doc: "The dataset's snapshots, oldest first; created is unix seconds."},
		{Name: "send", Sig: `zfs.send("pool/ds@new" [, {base="pool/ds@old"}]) -> source`, Doc: "A send stream (incremental from base) for stream.copy{from = ...}."},
		{Name: "receive", Sig: `zfs.receive("pool/ds", source_or_file [, {force=false}])`,
			Doc: "Receive a stream: a source (zfs.send) or a file written by stream.copy (.lz4, .zst or raw)."},
	},
	Open: open,
}

func open(h *runtime.Host, L *lua.LState) *lua.LTable {
	return runtime.Table(L, map[string]lua.LGFunction{
		"snapshot": func(L *lua.LState) int {
			s := runtime.CheckString(L, 1, "zfs.snapshot")
			if h.DryRun() {
				h.DryRunf("zfs snapshot %s", s)
				return 0
			}
			if err := Snapshot(h.Context(), s); err != nil {
				runtime.Raise(L, "zfs.snapshot", err)
			}
			return 0
		},
		"destroy": func(L *lua.LState) int {
			s := runtime.CheckString(L, 1, "zfs.destroy")
			if err := checkSnapName(s); err != nil {
				runtime.Raise(L, "zfs.destroy", err)
			}
			if h.DryRun() {
				h.DryRunf("zfs destroy %s", s)
				return 0
			}
			if err := Destroy(h.Context(), s); err != nil {
				runtime.Raise(L, "zfs.destroy", err)
			}
			return 0
		},
		"list": func(L *lua.LState) int {
			snaps, err := List(h.Context(), runtime.CheckString(L, 1, "zfs.list"))
			if err != nil {
				runtime.Raise(L, "zfs.list", err)
			}
			t := L.NewTable()
			for _, s := range snaps {
				e := L.NewTable()
				e.RawSetString("name", lua.LString(s.Name))
				e.RawSetString("created", lua.LNumber(s.Created.Unix()))
				t.Append(e)
			}
			L.Push(t)
			return 1
		},
		"send": func(L *lua.LState) int {
			snap := runtime.CheckString(L, 1, "zfs.send")
			o := runtime.OptsAt(L, 2, "zfs.send")
			base := o.String("base", "")
			o.Done(false)
			if h.DryRun() {
				if base != "" {
					h.DryRunf("zfs send -i %s %s", base, snap)
				} else {
					h.DryRunf("zfs send %s", snap)
				}
				ud := L.NewUserData()
				ud.Value = "zfs send " + snap
				L.Push(ud)
				return 1
			}
			r, err := Send(h.Context(), snap, base)
			if err != nil {
				runtime.Raise(L, "zfs.send", err)
			}
			h.Defer("stop zfs send "+snap, func(context.Context) error { r.Close(); return nil })
			ud := L.NewUserData()
			ud.Value = r
			L.Push(ud)
			return 1
		},
		"receive": func(L *lua.LState) int {
			const fn = "zfs.receive"
			target := runtime.CheckString(L, 1, fn)
			o := runtime.OptsAt(L, 3, fn)
			force := o.Bool("force", false)
			o.Done(false)
			var r io.Reader
			switch v := L.Get(2).(type) {
			case lua.LString:
				if h.DryRun() {
					break
				}
				f, err := os.Open(string(v))
				if err != nil {
					runtime.Raise(L, fn, err)
				}
				defer f.Close()
				codec := "none"
				if strings.HasSuffix(string(v), ".lz4") {
					codec = "lz4"
				} else if strings.HasSuffix(string(v), ".zst") {
					codec = "zstd"
				}
				d, err := stream.NewDecoder(codec, f)
				if err != nil {
					runtime.Raise(L, fn, err)
				}
				defer d.Close()
				r = d
			case *lua.LUserData:
				if sr, ok := v.Value.(io.Reader); ok {
					r = sr
					// A zfs.send that the receive does not read to
					// the end stops as soon as it returns.
					defer runtime.CloseConsumed(sr)
				} else if !h.DryRun() {
					runtime.ArgError(L, 2, fn, "a send stream (zfs.send) or a stream file path expected")
				}
			default:
				runtime.TypeError(L, 2, fn, "source or file path")
			}
			if h.DryRun() {
				h.DryRunf("zfs receive%s %s", map[bool]string{true: " -F", false: ""}[force], target)
				return 0
			}
			if err := Receive(h.Context(), target, r, force); err != nil {
				runtime.Raise(L, fn, err)
			}
			return 0
		},
	})
}
