package disk

import (
	"context"
	"fmt"

	"github.com/bkrun/bkrun/runtime"
	lua "github.com/yuin/gopher-lua"
)

// Module binds disk to Lua.
var Module = &runtime.Module{
	Name:    "disk",
	Summary: "read block devices and disk images for image backups (O_DIRECT, sparse files)",
	Doc: `disk.open opens a block device (/dev/sda, /dev/VGatom/master_snap) or a disk
image file read-only, as a source for stream.copy{from = src, ...}. Bytes never
pass through Lua: a source only says what will be read.

Reads bypass the page cache (O_DIRECT, like dd iflag=direct), so backing up a
180 GB disk does not evict what the machine's services keep cached. Where the
file system refuses O_DIRECT (ramfs, some FUSE and network file systems) or
the range offset is not a multiple of 4096, reads go through the page cache
and what was read is dropped from it again (posix_fadvise DONTNEED). -v logs
which mode was chosen and why. Holes of sparse image files are detected
(SEEK_DATA) and not read.

Under --dry-run, disk.open and disk.size run as usual: opening for reading
changes nothing, and the dry run reports a missing device or a range past the
end just as the real run would.

Failures raise "disk.open: /dev/sdz: no such file or directory".`,
	Funcs: []runtime.Func{
		{Name: "open", Sig: "disk.open(path [, {offset=0, length=0, direct=true}]) -> source",
			Doc: `Open a block device or image file read-only. offset and length (bytes)
select a range, for example a partition inside an image (length 0: to the
end); a range past the end is an error. direct=false forces reads through
the page cache. Directories, character devices, pipes and sockets are
refused. Fields: src.path, src.kind ("device" or "file"), src.size (bytes
in the range), src.offset, src.direct (O_DIRECT in use), src.sparse (holes
detected). The source is closed when the run ends (clean-up stack), or
earlier by src:close().`},
		{Name: "size", Sig: "disk.size(path) -> bytes",
			Doc: `The size of a block device (ioctl BLKGETSIZE64) or image file, in bytes.`},
		{Name: "source:close", Sig: "src:close()",
			Doc: `Close the source now instead of at the end of the run (its clean-up step
is dropped). Closing twice is harmless; a closed source cannot be read, its
fields stay readable.`},
	},
	Open: open,
}

const sourceType = "disk.source"

// FromLua returns the Source a disk.open userdata carries, for modules
// that read it (stream.copy{from = src}).
func FromLua(v lua.LValue) (*Source, bool) {
	if ud, ok := v.(*lua.LUserData); ok {
		s, ok := ud.Value.(*Source)
		return s, ok
	}
	return nil, false
}

type binding struct {
	h     *runtime.Host
	steps map[*Source]*runtime.Step // clean-up step of each open source
}

func open(h *runtime.Host, L *lua.LState) *lua.LTable {
	b := &binding{h: h, steps: map[*Source]*runtime.Step{}}
	b.sourceMeta(L)
	return runtime.Table(L, map[string]lua.LGFunction{
		"open": b.open,
		"size": b.size,
	})
}

// raise raises a core error as it is: it already names the operation
// and the path ("disk.open: /dev/sdz: ...").
func raise(L *lua.LState, err error) { L.RaiseError("%s", err.Error()) }

func (b *binding) open(L *lua.LState) int {
	const fn = "disk.open"
	path := runtime.CheckPath(L, 1, fn)
	o := runtime.OptsAt(L, 2, fn)
	opts := Options{
		Offset:   o.Int("offset", 0),
		Length:   o.Int("length", 0),
		NoDirect: !o.Bool("direct", true),
		Logger:   b.h.Logger(),
	}
	o.Done(false)
	s, err := Open(path, opts)
	if err != nil {
		raise(L, err)
	}
	step := b.h.Defer("close "+path, func(context.Context) error { return s.Close() })
	b.steps[s] = step
	runtime.PushObject(L, s, sourceType)
	return 1
}

func (b *binding) size(L *lua.LState) int {
	n, err := Size(runtime.CheckPath(L, 1, "disk.size"))
	if err != nil {
		raise(L, err)
	}
	L.Push(lua.LNumber(n))
	return 1
}

func checkSource(L *lua.LState, fn string) *Source {
	s, ok := FromLua(L.Get(1))
	if !ok {
		runtime.TypeError(L, 1, fn, sourceType)
	}
	return s
}

func (b *binding) sourceMeta(L *lua.LState) {
	mt := L.NewTypeMetatable(sourceType)
	closeFn := L.NewFunction(b.close)
	L.SetField(mt, "__index", L.NewFunction(func(L *lua.LState) int {
		s := checkSource(L, sourceType)
		var v lua.LValue = lua.LNil
		switch L.CheckString(2) {
		case "close":
			v = closeFn
		case "path":
			v = lua.LString(s.Path())
		case "kind":
			v = lua.LString(s.Kind())
		case "size":
			v = lua.LNumber(s.Size())
		case "offset":
			v = lua.LNumber(s.Offset())
		case "direct":
			v = lua.LBool(s.Direct())
		case "sparse":
			v = lua.LBool(s.Sparse())
		}
		L.Push(v)
		return 1
	}))
	L.SetField(mt, "__tostring", L.NewFunction(func(L *lua.LState) int {
		s := checkSource(L, "tostring")
		mode := "buffered"
		if s.Direct() {
			mode = "direct"
		}
		L.Push(lua.LString(fmt.Sprintf("disk.source(%s, %s, %d bytes, %s)", s.Path(), s.Kind(), s.Size(), mode)))
		return 1
	}))
}

func (b *binding) close(L *lua.LState) int {
	s := checkSource(L, "src:close")
	step := b.steps[s]
	delete(b.steps, s)
	if step != nil {
		step.Cancel()
	}
	if err := s.Close(); err != nil {
		raise(L, err)
	}
	return 0
}
