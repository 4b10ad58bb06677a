package part

import (
	"context"
	"fmt"

	"github.com/bkrun/bkrun/runtime"
	"github.com/bkrun/bkrun/stdlib/disk"
	"github.com/bkrun/bkrun/stdlib/exec"
	lua "github.com/yuin/gopher-lua"
)

// Module binds part to Lua.
var Module = &runtime.Module{
	Name:    "part",
	Summary: "MBR and GPT partition tables: list partitions, read one as a range, attach one as a loop device",
	Doc: `part replaces kpartx: it parses MBR (primary, extended and logical
partitions) and GPT partition tables natively, from a disk image or a block
device such as an LVM snapshot, and hands a partition to the next tool either
as a byte range (part.range, a disk source for stream.copy) or as a read-only
loop device (part.attach, for dump, mount, fsck).

The table is never trusted: GPT headers and entry arrays are checked with
their CRC32s, a damaged primary GPT header is replaced by the backup at the
end of the disk (with a warning in the log), a looping chain of extended boot
records or a partition past the end of the disk is an error naming what is
wrong: "part.list: snap.img: part: MBR partition 2 ends beyond the disk (...)".

An MBR extended partition is a container, not data: part.list leaves it out.
Logical partitions are numbered from 5, as Linux does; GPT partitions carry
their entry number.

Loop devices made by part.attach are detached (losetup -d) when the run
ends, on success, error or signal. Under --dry-run part.list and part.range
read as usual (reading changes nothing); part.attach prints the losetup
command and returns "/dev/loopX".`,
	Funcs: []runtime.Func{
		{Name: "list", Sig: "part.list(path_or_source) -> {{index=, start=, size=, type=, type_name=, name=, uuid=, bootable=}, ...}",
			Doc: `The partitions of an image file or block device (opened read-only), or of a
disk source from disk.open, in index order. start and size are in bytes;
type is "0x83" for MBR, the type GUID for GPT; type_name is a friendly name
for common types ("linux", "swap", "lvm", "efi", "bios-boot",
"microsoft-basic-data", ...) or ""; name and uuid are the GPT partition name
and unique GUID ("" for MBR); bootable is the MBR boot flag or GPT legacy
BIOS bootable attribute. The table itself also has fields kind ("gpt" or
"mbr") and disk_id (GPT disk GUID or MBR signature "0x1234abcd"). Problems
worked around (backup GPT header used) are logged as warnings.`},
		{Name: "range", Sig: "part.range(path, index [, {direct=true}]) -> source",
			Doc: `Partition index of the image or device as a disk source (see disk.open):
the bytes of that partition only, ready for stream.copy{from = ...}. Closed
when the run ends or by src:close().`},
		{Name: "attach", Sig: `part.attach(path, index [, {readonly=true}]) -> "/dev/loopN"`,
			Doc: `Attach partition index as a loop device (losetup --find --show --read-only
--offset START --sizelimit SIZE PATH) and return its path. readonly=false
attaches it read-write. The device is detached (losetup -d) when the run
ends, on success, error or signal. Under --dry-run the losetup command is
printed and "/dev/loopX" returned.`},
	},
	Open: open,
}

type binding struct{ h *runtime.Host }

func open(h *runtime.Host, L *lua.LState) *lua.LTable {
	b := &binding{h: h}
	return runtime.Table(L, map[string]lua.LGFunction{
		"list":   b.list,
		"range":  b.rangeOf,
		"attach": b.attach,
	})
}

// table reads the partition table of a path or disk source at argument 1.
func (b *binding) table(L *lua.LState, fn string) (string, *Table) {
	var (
		t    *Table
		err  error
		path string
	)
	if src, ok := disk.FromLua(L.Get(1)); ok {
		path = src.Path()
		t, err = ReadSource(src)
	} else {
		if _, ok := L.Get(1).(lua.LString); !ok {
			runtime.TypeError(L, 1, fn, "path or disk source")
		}
		path = runtime.CheckPath(L, 1, fn)
		t, err = ReadFile(path)
	}
	if err != nil {
		runtime.Raise(L, fn, err)
	}
	for _, w := range t.Warnings {
		b.h.Logger().Warn("part: "+w, "path", path)
	}
	return path, t
}

// partition reads argument 2 as an index into the table of argument 1.
func (b *binding) partition(L *lua.LState, fn string) (string, Partition) {
	n, ok := L.Get(2).(lua.LNumber)
	if !ok {
		runtime.TypeError(L, 2, fn, "number")
	}
	if float64(n) != float64(int(n)) || n < 1 {
		runtime.ArgError(L, 2, fn, fmt.Sprintf("partition index must be a positive integer, got %v", n))
	}
	path, t := b.table(L, fn)
	p, ok := t.Lookup(int(n))
	if !ok {
		L.RaiseError("%s: %s: no partition %d (%s table, partitions: %s)", fn, path, int(n), t.Kind, t.Indexes())
	}
	return path, p
}

func (b *binding) list(L *lua.LState) int {
	_, t := b.table(L, "part.list")
	out := L.NewTable()
	for _, p := range t.Partitions {
		e := L.NewTable()
		e.RawSetString("index", lua.LNumber(p.Index))
		e.RawSetString("start", lua.LNumber(p.Start))
		e.RawSetString("size", lua.LNumber(p.Size))
		e.RawSetString("type", lua.LString(p.Type))
		e.RawSetString("type_name", lua.LString(p.TypeName))
		e.RawSetString("name", lua.LString(p.Name))
		e.RawSetString("uuid", lua.LString(p.UUID))
		e.RawSetString("bootable", lua.LBool(p.Bootable))
		out.Append(e)
	}
	out.RawSetString("kind", lua.LString(t.Kind))
	out.RawSetString("disk_id", lua.LString(t.DiskGUID))
	L.Push(out)
	return 1
}

// rangeOf opens the partition through the disk module's own disk.open, so
// the source is a disk.source like any other (fields, :close, clean-up).
func (b *binding) rangeOf(L *lua.LState) int {
	const fn = "part.range"
	path, p := b.partition(L, fn)
	o := runtime.OptsAt(L, 3, fn)
	direct := o.Bool("direct", true)
	o.Done(false)
	L.Push(L.GetGlobal("require"))
	L.Push(lua.LString("disk"))
	L.Call(1, 1)
	mod, ok := L.Get(-1).(*lua.LTable)
	L.Pop(1)
	if !ok {
		L.RaiseError("%s: the disk module is not available", fn)
	}
	opts := L.NewTable()
	opts.RawSetString("offset", lua.LNumber(p.Start))
	opts.RawSetString("length", lua.LNumber(p.Size))
	opts.RawSetString("direct", lua.LBool(direct))
	L.Push(mod.RawGetString("open"))
	L.Push(lua.LString(path))
	L.Push(opts)
	L.Call(2, 1)
	return 1
}

func (b *binding) attach(L *lua.LState) int {
	const fn = "part.attach"
	path, p := b.partition(L, fn)
	o := runtime.OptsAt(L, 3, fn)
	ao := AttachOptions{Writable: !o.Bool("readonly", true)}
	o.Done(false)
	if b.h.DryRun() {
		b.h.DryRunf("%s", exec.Quote(AttachArgs(path, p, ao)))
		L.Push(lua.LString("/dev/loopX"))
		return 1
	}
	dev, detach, err := AttachWith(b.h.Context(), path, p, ao)
	if err != nil {
		L.RaiseError("%s", err.Error())
	}
	b.h.Defer("losetup -d "+dev, func(context.Context) error { return detach() })
	b.h.Logger().Debug("part: attached", "path", path, "partition", p.Index, "device", dev)
	L.Push(lua.LString(dev))
	return 1
}
