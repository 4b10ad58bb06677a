package part

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/bkrun/bkrun/internal/testenv"
	"github.com/bkrun/bkrun/runtime/luatest"
	"github.com/bkrun/bkrun/stdlib/disk"
)

func newHost(t *testing.T, img string, dryRun bool) *luatest.Host {
	t.Helper()
	return luatest.NewHost(t, luatest.HostOptions{
		DryRun:  dryRun,
		Globals: map[string]string{"IMG": img},
		Prelude: `local part = require "part"; `,
	}, Module, disk.Module)
}

func TestLuaList(t *testing.T) {
	dir := t.TempDir()
	gpt, mbr := gptImage(t, dir), mbrImage(t, dir)
	h := newHost(t, gpt, false)
	vals := h.Run(t, `
		local t = part.list(IMG)
		local out = { t.kind, t.disk_id, #t }
		for _, p in ipairs(t) do
			out[#out + 1] = ("%d:%d+%d:%s:%s:%s:%s:%s"):format(p.index, p.start, p.size, p.type_name, p.name, p.uuid, tostring(p.bootable), p.type)
		end
		return table.concat(out, " ")`)
	got := vals[0].String()
	for _, want := range []string{
		"gpt 01234567-89AB-CDEF-0123-456789ABCDEF 3 ",
		"1:1048576+4194304:linux:root:11111111-2222-3333-4444-555555555555:false:0FC63DAF-8483-4772-8E79-3D69D8477DE4",
		"3:7340032+8388608:lvm:données:",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("got  %s\nwant …%s…", got, want)
		}
	}

	// MBR, and from a disk source instead of a path.
	h = newHost(t, mbr, false)
	vals = h.Run(t, `
		local disk = require "disk"
		local t = part.list(disk.open(IMG))
		local out = { t.kind, t.disk_id }
		for _, p in ipairs(t) do out[#out + 1] = p.index .. "=" .. p.type .. "/" .. p.type_name .. (p.bootable and "*" or "") end
		return table.concat(out, " ")`)
	if got, want := vals[0].String(), "mbr 0x1badcafe 1=0x83/linux* 2=0x82/swap 5=0x83/linux 6=0x8e/lvm 7=0x83/linux"; got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestLuaRange(t *testing.T) {
	img := gptImage(t, t.TempDir())
	h := newHost(t, img, false)
	vals := h.Run(t, `
		src = part.range(IMG, 2, { direct = false })
		return src.offset, src.size, src.direct, src.path`)
	if got, want := fmt.Sprint(vals), fmt.Sprintf("[5242880 2097152 false %s]", img); got != want {
		t.Errorf("got %s want %s", got, want)
	}
	src, ok := disk.FromLua(h.L.GetGlobal("src"))
	if !ok || src.Offset() != 5242880 {
		t.Fatalf("FromLua: %v %+v", ok, src)
	}
	if n := h.PendingCleanup(); n != 1 {
		t.Errorf("%d clean-up steps, want 1 (the source's close)", n)
	}
	h.Run(t, `src:close()`)
}

func TestLuaBadArguments(t *testing.T) {
	img := mbrImage(t, t.TempDir())
	h := newHost(t, img, false)
	for _, tc := range []struct{ src, want string }{
		{`part.list(42)`, "bad argument #1 to 'part.list' (path or disk source expected, got number)"},
		{`part.list()`, "bad argument #1 to 'part.list' (path or disk source expected, got no value)"},
		{`part.list("")`, "bad argument #1 to 'part.list' (empty path)"},
		{`part.list(IMG .. ".missing")`, "part.list: "},
		{`part.attach(IMG, "1")`, "bad argument #2 to 'part.attach' (number expected, got string)"},
		{`part.attach(IMG, 1.5)`, "bad argument #2 to 'part.attach' (partition index must be a positive integer, got 1.5)"},
		{`part.attach(IMG, 0)`, "partition index must be a positive integer, got 0"},
		{`part.attach(IMG, 3)`, "part.attach: " + img + ": no partition 3 (mbr table, partitions: 1, 2, 5, 6, 7)"},
		{`part.attach(IMG, 1, { bogus = true })`, "bogus"},
		{`part.range(IMG, 9)`, "part.range: " + img + ": no partition 9"},
		{`part.range(IMG, 1, "x")`, "bad argument #3 to 'part.range' (table expected, got string)"},
	} {
		if got := h.RunErr(t, tc.src); !strings.Contains(got, tc.want) {
			t.Errorf("%s:\n got  %s\n want …%s…", tc.src, got, tc.want)
		}
	}
}

func TestLuaDryRun(t *testing.T) {
	img := mbrImage(t, t.TempDir())
	h := newHost(t, img, true)
	vals := h.Run(t, `return part.attach(IMG, 6)`)
	if vals[0].String() != "/dev/loopX" {
		t.Errorf("dry-run attach returned %v", vals)
	}
	want := fmt.Sprintf("[dry-run] losetup --find --show --read-only --offset %d --sizelimit %d %s\n", 30720*512, 8192*512, img)
	if h.Out.String() != want {
		t.Errorf("output\n got  %q\n want %q", h.Out.String(), want)
	}
	if n := h.PendingCleanup(); n != 0 {
		t.Errorf("%d clean-up steps after a dry-run attach", n)
	}
	h.Out.Reset()
	h.Run(t, `part.attach(IMG, 1, { readonly = false })`)
	if !strings.Contains(h.Out.String(), "losetup --find --show --offset 1048576") {
		t.Errorf("readonly=false: %q", h.Out.String())
	}
}

func TestLuaAttach(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommand(t, "losetup")
	img := gptImage(t, t.TempDir())
	h := newHost(t, img, false)
	vals := h.Run(t, `return part.attach(IMG, 1), part.attach(IMG, 3, { readonly = true })`)
	for _, v := range vals {
		dev := v.String()
		if !strings.HasPrefix(dev, "/dev/loop") {
			t.Fatalf("attach returned %q", dev)
		}
		out, err := exec.Command("losetup", "--noheadings", "-O", "OFFSET,SIZELIMIT,RO,BACK-FILE", dev).Output()
		if err != nil || !strings.Contains(string(out), img) || !strings.Contains(string(out), " 1 ") {
			t.Errorf("losetup %s: %v %q", dev, err, out)
		}
	}
	if n := h.PendingCleanup(); n != 2 {
		t.Errorf("%d clean-up steps, want 2", n)
	}
	// A failing recipe still detaches on clean-up.
	h.RunErr(t, `part.attach(IMG, 2); error("boom")`)
	if err := h.RunCleanup(); err != nil {
		t.Fatal(err)
	}
	assertNoLoop(t, img)
}
