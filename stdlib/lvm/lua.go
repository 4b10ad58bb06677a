package lvm

import (
	"context"
	"fmt"

	"github.com/bkrun/bkrun/runtime"
	lua "github.com/yuin/gopher-lua"
)

// Module binds lvm to Lua.
var Module = &runtime.Module{
	Name:    "lvm",
	Summary: "LVM snapshots: created with their free-space check, removed by the clean-up stack",
	Doc: `lvm.snapshot runs "vgs" to check the volume group has room, then
"lvcreate --snapshot --size SIZE --name NAME VG/LV", and reads the device path
back with "lvs -o lv_path". The snapshot is removed ("lvremove --force") by the
clean-up stack when the run ends, whatever the outcome, unless snap:remove()
removed it first. Under --dry-run the lvcreate and lvremove commands are
printed, not run (vgs still runs: it changes nothing).`,
	Funcs: []runtime.Func{
		{Name: "snapshot", Sig: `lvm.snapshot{vg=, lv=, size="3G", name=} -> snap`,
			Doc: "Snapshot VG/LV. snap.path is the device, snap.vg, snap.name, snap.origin, snap.size (bytes); snap:remove() removes it now."},
		{Name: "remove", Sig: `lvm.remove(vg, name)`, Doc: "Remove a logical volume (recovery: a snapshot left by something else)."},
		{Name: "free", Sig: `lvm.free(vg) -> bytes`, Doc: "Free space of a volume group."},
		{Name: "list", Sig: `lvm.list(vg) -> {{name=, path=, size=, origin=}, ...}`, Doc: "The logical volumes of a volume group; origin is set for snapshots (to find one left behind)."},
	},
	Open: open,
}

const snapType = "lvm.snapshot"

type luaSnap struct {
	s    *Snapshot
	step *runtime.Step
	dry  bool
}

func open(h *runtime.Host, L *lua.LState) *lua.LTable {
	mt := L.NewTypeMetatable(snapType)
	L.SetField(mt, "__index", L.NewFunction(func(L *lua.LState) int {
		ls := checkSnap(L)
		switch L.CheckString(2) {
		case "path":
			L.Push(lua.LString(ls.s.Path))
		case "vg":
			L.Push(lua.LString(ls.s.VG))
		case "name":
			L.Push(lua.LString(ls.s.Name))
		case "origin":
			L.Push(lua.LString(ls.s.Origin))
		case "size":
			L.Push(lua.LNumber(ls.s.Size))
		case "remove":
			L.Push(L.NewFunction(func(L *lua.LState) int {
				ls := checkSnap(L)
				if ls.dry {
					h.DryRunf("lvremove --force %s/%s", ls.s.VG, ls.s.Name)
					return 0
				}
				ls.step.Cancel()
				if err := Remove(h.Context(), ls.s.VG, ls.s.Name); err != nil {
					runtime.Raise(L, "snap:remove", err)
				}
				return 0
			}))
		default:
			L.Push(lua.LNil)
		}
		return 1
	}))
	return runtime.Table(L, map[string]lua.LGFunction{
		"snapshot": func(L *lua.LState) int { return snapshot(h, L) },
		"remove": func(L *lua.LState) int {
			vg, name := runtime.CheckString(L, 1, "lvm.remove"), runtime.CheckString(L, 2, "lvm.remove")
			if h.DryRun() {
				h.DryRunf("lvremove --force %s/%s", vg, name)
				return 0
			}
			if err := Remove(h.Context(), vg, name); err != nil {
				runtime.Raise(L, "lvm.remove", err)
			}
			return 0
		},
		"list": func(L *lua.LState) int {
			lvs, err := List(h.Context(), runtime.CheckString(L, 1, "lvm.list"))
			if err != nil {
				runtime.Raise(L, "lvm.list", err)
			}
			t := L.NewTable()
			for _, lv := range lvs {
				e := L.NewTable()
				e.RawSetString("name", lua.LString(lv.Name))
				e.RawSetString("path", lua.LString(lv.Path))
				e.RawSetString("size", lua.LNumber(lv.Size))
				e.RawSetString("origin", lua.LString(lv.Origin))
				t.Append(e)
			}
			L.Push(t)
			return 1
		},
		"free": func(L *lua.LState) int {
			n, err := Free(h.Context(), runtime.CheckString(L, 1, "lvm.free"))
			if err != nil {
				runtime.Raise(L, "lvm.free", err)
			}
			L.Push(lua.LNumber(n))
			return 1
		},
	})
}

func checkSnap(L *lua.LState) *luaSnap {
	if ud, ok := L.Get(1).(*lua.LUserData); ok {
		if s, ok := ud.Value.(*luaSnap); ok {
			return s
		}
	}
	runtime.TypeError(L, 1, "lvm.snapshot method", "lvm snapshot")
	return nil
}

func snapshot(h *runtime.Host, L *lua.LState) int {
	const fn = "lvm.snapshot"
	t, ok := L.Get(1).(*lua.LTable)
	if !ok {
		runtime.TypeError(L, 1, fn, "table")
	}
	o := runtime.OptsOf(L, t, 1, fn)
	vg, lv, size, name := o.String("vg", ""), o.String("lv", ""), o.String("size", ""), o.String("name", "")
	o.Done(false)
	if vg == "" || lv == "" || size == "" {
		runtime.ArgError(L, 1, fn, "options 'vg', 'lv' and 'size' are required")
	}
	if name == "" {
		name = lv + "_snap"
	}
	bytes, err := ParseSize(size)
	if err != nil {
		runtime.ArgError(L, 1, fn, "option 'size': "+err.Error())
	}
	if h.DryRun() {
		h.DryRunf("lvcreate --snapshot --size %s --name %s %s/%s", size, name, vg, lv)
		ls := &luaSnap{s: &Snapshot{VG: vg, Name: name, Origin: lv, Size: bytes, Path: fmt.Sprintf("/dev/%s/%s", vg, name)}, dry: true}
		runtime.PushObject(L, ls, snapType)
		return 1
	}
	s, err := CreateSnapshot(h.Context(), vg, lv, name, size)
	if err != nil {
		runtime.Raise(L, fn, err)
	}
	h.Logger().Info("lvm snapshot created", "snapshot", vg+"/"+name, "path", s.Path, "size", size)
	ls := &luaSnap{s: s}
	ls.step = h.Defer("lvremove "+vg+"/"+name, func(ctx context.Context) error { return Remove(ctx, vg, name) })
	runtime.PushObject(L, ls, snapType)
	return 1
}
