package disk

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/bkrun/bkrun/runtime/luatest"
	lua "github.com/yuin/gopher-lua"
)

// newHost builds a real host with the disk module; D is set to dir in Lua.
func newHost(t *testing.T, dir string, dryRun bool) *luatest.Host {
	t.Helper()
	return luatest.NewHost(t, luatest.HostOptions{DryRun: dryRun, Globals: map[string]string{"D": dir}, Prelude: `local disk = require "disk"; `}, Module)
}

func TestLuaOpen(t *testing.T) {
	dir := directDir(t)
	img := filepath.Join(dir, "disk.img")
	writeImage(t, img, 10*MiB+1234, 20)
	h := newHost(t, dir, false)

	vals := h.Run(t, `
		src = disk.open(D .. "/disk.img")
		part = disk.open(D .. "/disk.img", { offset = 1048576, length = 3 * 1048576 + 512, direct = false })
		return src.path, src.kind, src.size, src.offset, src.direct, src.sparse, tostring(src),
			part.size, part.offset, part.direct, disk.size(D .. "/disk.img"), src.nosuchfield`)
	want := fmt.Sprintf("[%[1]s file %[2]d 0 true true disk.source(%[1]s, file, %[2]d bytes, direct) %[3]d 1048576 false %[2]d nil]",
		img, 10*MiB+1234, 3*MiB+512)
	if got := fmt.Sprint(vals); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if !strings.Contains(h.Log.String(), "msg=\"disk: open\" path="+img+" kind=file") {
		t.Errorf("open not logged at debug level:\n%s", h.Log)
	}

	// stream.copy{from = src} gets the *Source out of the userdata.
	src, ok := FromLua(h.L.GetGlobal("src"))
	part, ok2 := FromLua(h.L.GetGlobal("part"))
	if !ok || !ok2 || src.Size() != 10*MiB+1234 || part.Offset() != MiB || part.Direct() {
		t.Fatalf("FromLua: %v %v %+v %+v", ok, ok2, src, part)
	}
	if _, ok := FromLua(lua.LString("/dev/sda")); ok {
		t.Error("FromLua accepted a string")
	}
	p := AlignedBuffer(MiB)
	if _, _, err := part.ReadBlock(p, 0); err != nil {
		t.Fatal(err)
	}

	// Both are on the clean-up stack; :close takes one off, twice is fine.
	if n := h.PendingCleanup(); n != 2 {
		t.Errorf("%d clean-up steps, want 2", n)
	}
	h.Run(t, `part:close(); part:close(); return part.size`)
	if n := h.PendingCleanup(); n != 1 {
		t.Errorf("%d clean-up steps after close, want 1", n)
	}
	if _, _, err := part.ReadBlock(p, 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("read after src:close(): %v", err)
	}
	// The clean-up stack closes the other.
	if err := h.RunCleanup(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := src.ReadBlock(p, 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("read after the clean-up ran: %v", err)
	}
}

func TestLuaDryRunOpens(t *testing.T) {
	dir := t.TempDir()
	writeImage(t, filepath.Join(dir, "disk.img"), 8192, 21)
	h := newHost(t, dir, true)
	vals := h.Run(t, `local s = disk.open(D .. "/disk.img"); return s.size, disk.size(D .. "/disk.img")`)
	if got := fmt.Sprint(vals); got != "[8192 8192]" {
		t.Errorf("got %s", got)
	}
	if got := h.RunErr(t, `disk.open(D .. "/missing")`); !strings.HasSuffix(got, "disk.open: "+dir+"/missing: no such file or directory") {
		t.Errorf("dry run, missing image: %s", got)
	}
	if h.Out.Len() != 0 {
		t.Errorf("dry run printed %q: reading is not an action", h.Out)
	}
}

func TestLuaErrors(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	writeImage(t, img, 10000, 22)
	h := newHost(t, dir, false)
	for _, c := range []struct{ src, want string }{
		{`disk.open()`, `bad argument #1 to 'disk.open' (string expected, got no value)`},
		{`disk.open(1)`, `bad argument #1 to 'disk.open' (string expected, got number)`},
		{`disk.open("")`, `bad argument #1 to 'disk.open' (empty path)`},
		{`disk.open(D .. "/disk.img", 4096)`, `bad argument #2 to 'disk.open' (table expected, got number)`},
		{`disk.open(D .. "/disk.img", { offset = "1M" })`, `bad argument #2 to 'disk.open' (option 'offset': integer expected, got string)`},
		{`disk.open(D .. "/disk.img", { offset = 1.5 })`, `bad argument #2 to 'disk.open' (option 'offset': integer expected, got number)`},
		{`disk.open(D .. "/disk.img", { direct = "no" })`, `bad argument #2 to 'disk.open' (option 'direct': boolean expected, got string)`},
		{`disk.open(D .. "/disk.img", { ofset = 4096 })`, `bad argument #2 to 'disk.open' (unknown option 'ofset' (known: direct, length, offset))`},
		{`disk.size({})`, `bad argument #1 to 'disk.size' (string expected, got table)`},
		{`local s = disk.open(D .. "/disk.img"); s.close(5)`, `bad argument #1 to 'src:close' (disk.source expected, got number)`},
		{`disk.open(D .. "/missing")`, `disk.open: ` + dir + `/missing: no such file or directory`},
		{`disk.open(D)`, `disk.open: ` + dir + `: is a directory, not a block device or image file`},
		{`disk.open("/dev/null")`, `disk.open: /dev/null: is a character device, not a block device or image file`},
		{`disk.open(D .. "/disk.img", { offset = 8192, length = 4096 })`, `disk.open: ` + img + `: range offset 8192 length 4096 ends at 12288, beyond the end (size 10000)`},
		{`disk.size(D .. "/missing")`, `disk.size: ` + dir + `/missing: no such file or directory`},
	} {
		if got := h.RunErr(t, c.src); got != "test:1: "+c.want {
			t.Errorf("%s\n got: %s\nwant: test:1: %s", c.src, got, c.want)
		}
	}
}

// Every function the module table has is documented, and the other way round.
func TestLuaDocumented(t *testing.T) {
	h := newHost(t, t.TempDir(), false)
	var have []string
	h.Run(t, `return disk`)[0].(*lua.LTable).ForEach(func(k, _ lua.LValue) { have = append(have, k.String()) })
	sort.Strings(have)
	var documented []string
	for _, f := range Module.Funcs {
		if !strings.Contains(f.Name, ":") {
			documented = append(documented, f.Name)
		}
	}
	sort.Strings(documented)
	if fmt.Sprint(have) != fmt.Sprint(documented) {
		t.Errorf("module table %v, documented %v", have, documented)
	}
}
