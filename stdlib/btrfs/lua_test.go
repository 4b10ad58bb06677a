package btrfs

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bkrun/bkrun/internal/testenv"
	"github.com/bkrun/bkrun/runtime/luatest"
	"github.com/bkrun/bkrun/stdlib/stream"
)

const prelude = `local btrfs, stream = require "btrfs", require "stream"; `

func TestLuaSnapshotSendReceive(t *testing.T) {
	src, dst := testenv.BtrfsMount(t), testenv.BtrfsMount(t)
	if err := Create(context.Background(), filepath.Join(src, "cur")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(src, "cur", "f"), strings.Repeat("data ", 50000))
	out := t.TempDir()
	h := luatest.NewHost(t, luatest.HostOptions{
		Globals: map[string]string{"SRC": src, "DST": dst, "OUT": out},
		Prelude: prelude,
	}, Module, stream.Module)
	h.Run(t, `
		assert(btrfs.is_subvolume(SRC .. "/cur"))
		local snap = btrfs.snapshot(SRC .. "/cur", SRC .. "/s1", {readonly = true})
		assert(snap == SRC .. "/s1")
		local info = btrfs.show(snap)
		assert(info.readonly and info.uuid and info.received_uuid == nil and info.created > 0, "show")
		local l = btrfs.list(SRC)
		assert(#l == 2 and l[2].path == "s1" and l[2].readonly and l[2].id > 0 and l[2].gen > 0, "list")
		local r = stream.copy{from = btrfs.send(snap), to = OUT .. "/s1.btrfs.lz4", codec = "lz4"}
		assert(r.size > 0)
		local got = btrfs.receive(DST, OUT .. "/s1.btrfs.lz4")
		assert(got == DST .. "/s1", got)
		assert(btrfs.show(got).received_uuid == info.uuid)
		-- incremental, source to receive directly
		btrfs.create(SRC .. "/cur/sub")
		btrfs.snapshot(SRC .. "/cur", SRC .. "/s2", {readonly = true})
		local got2 = btrfs.receive(DST, btrfs.send(SRC .. "/s2", {parent = snap}))
		assert(got2 == DST .. "/s2", got2)
		btrfs.delete(SRC .. "/cur/sub")
	`)
	sameTree(t, filepath.Join(src, "s1"), filepath.Join(dst, "s1"))
	sameTree(t, filepath.Join(src, "s2"), filepath.Join(dst, "s2"))
	msg := h.RunErr(t, `btrfs.send(SRC .. "/cur"):close(); stream.copy{from = btrfs.send(SRC .. "/cur"), to = OUT .. "/bad.lz4"}`)
	if !strings.Contains(msg, "not read-only") {
		t.Errorf("send of a writable subvolume: %s", msg)
	}
	if _, err := os.Stat(filepath.Join(out, "bad.lz4")); err == nil {
		t.Error("partial output left")
	}
	msg = h.RunErr(t, `btrfs.delete(SRC)`)
	t.Log(msg)
	os.Mkdir(filepath.Join(src, "plain"), 0o755)
	msg = h.RunErr(t, `btrfs.delete(SRC .. "/plain")`)
	if !strings.Contains(msg, "btrfs.delete: btrfs subvolume delete "+src+"/plain: not a btrfs subvolume") {
		t.Errorf("delete plain: %s", msg)
	}
}

// A receive that fails (a destination that is not btrfs) closes its
// source: the send it abandoned is stopped and waited for, so the recipe
// can delete the snapshot at once. Before, the send went on until the end
// of the run and btrfs refused the delete ("send may be in progress").
func TestLuaFailedReceiveStopsTheSend(t *testing.T) {
	src := testenv.BtrfsMount(t)
	if err := Create(context.Background(), filepath.Join(src, "cur")); err != nil {
		t.Fatal(err)
	}
	// More than the pipes hold: the send cannot finish by itself once
	// nobody reads it.
	big := make([]byte, 16<<20)
	for i := range big {
		big[i] = byte(i * 7 >> 3)
	}
	writeFile(t, filepath.Join(src, "cur", "f"), string(big))
	h := luatest.NewHost(t, luatest.HostOptions{
		Globals: map[string]string{"SRC": src, "PLAIN": t.TempDir()},
		Prelude: prelude,
	}, Module, stream.Module)
	h.Run(t, `
		local snap = btrfs.snapshot(SRC .. "/cur", SRC .. "/s1", {readonly = true})
		for i = 1, 3 do
			local ok, err = pcall(btrfs.receive, PLAIN, btrfs.send(snap))
			assert(not ok and tostring(err):find("btrfs receive"), tostring(err))
		end
		btrfs.delete(snap)
		assert(not btrfs.is_subvolume(snap))
	`)
}

func TestLuaDryRun(t *testing.T) {
	dir := t.TempDir()
	h := luatest.NewHost(t, luatest.HostOptions{DryRun: true, Globals: map[string]string{"D": dir}, Prelude: prelude}, Module, stream.Module)
	h.Run(t, `
		btrfs.create(D .. "/cur")
		assert(btrfs.snapshot(D .. "/cur", D .. "/snap 1", {readonly = true}) == D .. "/snap 1")
		btrfs.delete(D .. "/old")
		stream.copy{from = btrfs.send(D .. "/snap 1", {parent = D .. "/old"}), to = D .. "/x.lz4"}
		btrfs.receive(D .. "/in", D .. "/x.lz4")
		assert(btrfs.is_subvolume(D) == false)
	`)
	want := []string{
		"[dry-run] btrfs subvolume create " + dir + "/cur",
		"[dry-run] btrfs subvolume snapshot -r " + dir + "/cur '" + dir + "/snap 1'",
		"[dry-run] btrfs subvolume delete " + dir + "/old",
		"[dry-run] btrfs send -p " + dir + "/old '" + dir + "/snap 1'",
		"[dry-run] stream.copy " + dir + "/snap 1 -> " + dir + "/x.lz4",
		"[dry-run] btrfs receive " + dir + "/in   (stream from " + dir + "/x.lz4)",
	}
	out := h.Out.String()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("dry-run output lacks %q:\n%s", w, out)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("dry run changed %s", dir)
	}
}

func TestLuaBadArguments(t *testing.T) {
	h := luatest.NewHost(t, luatest.HostOptions{Prelude: prelude}, Module, stream.Module)
	for src, want := range map[string]string{
		`btrfs.create(1)`:                           "bad argument #1 to 'btrfs.create' (string expected, got number)",
		`btrfs.delete()`:                            "bad argument #1 to 'btrfs.delete' (string expected, got no value)",
		`btrfs.snapshot("/a", "")`:                  "bad argument #2 to 'btrfs.snapshot' (empty path)",
		`btrfs.snapshot("/a", "/b", {ro=true})`:     "bad argument #3 to 'btrfs.snapshot' (unknown option 'ro'",
		`btrfs.send("/a", {parent={}})`:             "bad argument #2 to 'btrfs.send' (option 'parent'",
		`btrfs.receive("/a", 5)`:                    "bad argument #2 to 'btrfs.receive' (stream source or file path expected, got number)",
		`btrfs.receive("/a", newproxy and 1 or {})`: "bad argument #2 to 'btrfs.receive'",
		`btrfs.list({})`:                            "bad argument #1 to 'btrfs.list' (string expected, got table)",
		`btrfs.send("/nonexistent")`:                "btrfs.send: btrfs send /nonexistent: ",
	} {
		if msg := h.RunErr(t, src); !strings.Contains(msg, want) {
			t.Errorf("%s:\n got %s\nwant %s", src, msg, want)
		}
	}
}
