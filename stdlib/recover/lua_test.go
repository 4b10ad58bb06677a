package recover

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bkrun/bkrun/runtime/luatest"
	"github.com/bkrun/bkrun/stdlib/catalog"
)

const prelude = `local recover, catalog = require "recover", require "catalog"; `

func TestLuaArguments(t *testing.T) {
	d := t.TempDir()
	h := luatest.NewHost(t, luatest.HostOptions{Globals: map[string]string{"D": d}, Prelude: prelude}, Module, catalog.Module)
	for src, want := range map[string]string{
		`recover.verify(42)`:                          "bad argument #1 to 'recover.verify' (backup (table from catalog) or path expected, got number)",
		`recover.verify({})`:                          "bad argument #1 to 'recover.verify' (a backup table without a path)",
		`recover.verify("")`:                          "bad argument #1 to 'recover.verify' (empty path)",
		`recover.verify("x", {catalog = 5})`:          "bad argument #2 to 'recover.verify' (option 'catalog': a catalogue (catalog.scan) expected, got number)",
		`recover.restore(D .. "/b")`:                  "bad argument #2 to 'recover.restore' (string expected, got no value)",
		`recover.attach("x", {partition = "one"})`:    "bad argument #2 to 'recover.attach' (option 'partition': integer expected, got string)",
		`recover.attach("x", {partition = -1})`:       "option 'partition': a positive index expected, got -1",
		`recover.files("x", {bogus = 1})`:             "unknown option 'bogus'",
		`recover.extract("x", {1}, D)`:                "bad argument #2 to 'recover.extract' (paths[1]: string expected, got number)",
		`recover.extract("x", {}, D)`:                 "empty list of paths",
		`recover.extract("x", 7, D)`:                  "bad argument #2 to 'recover.extract' (path or list of paths expected, got number)",
		`recover.extract("x", "../etc/passwd", D)`:    "'..' is not allowed",
		`recover.extract("x", "etc")`:                 "bad argument #3 to 'recover.extract' (string expected, got no value)",
		`recover.detach("/nope")`:                     "recover.detach: /nope: not a mount made by recover.attach in this run",
		`recover.verify(D .. "/missing")`:             "recover.verify: " + d + "/missing: no such file or directory",
		`recover.restore(D .. "/missing", D .. "/t")`: "recover.restore: " + d + "/missing: no such file or directory",
	} {
		if msg := h.RunErr(t, src); !strings.Contains(msg, want) {
			t.Errorf("%s:\n got %s\nwant %s", src, msg, want)
		}
	}
	os.WriteFile(filepath.Join(d, "plain"), []byte("x"), 0o644)
	if msg := h.RunErr(t, `recover.verify(D .. "/plain")`); !strings.Contains(msg, "plain: no catalogue entry plain.json") {
		t.Errorf("no entry: %s", msg)
	}
}

// An image backup needs no root to verify and restore.
func TestLuaImage(t *testing.T) {
	d := t.TempDir()
	data := bytes.Repeat([]byte("bkrun image "), 300000)
	copy(data[2<<20:], make([]byte, 1<<20)) // a zero block
	img := filepath.Join(d, "src.img")
	os.WriteFile(img, data, 0o644)
	bdir := filepath.Join(d, "backup")
	os.Mkdir(bdir, 0o755)
	imageBackup(t, img, filepath.Join(bdir, "src.img.lz4"), "lz4")
	h := luatest.NewHost(t, luatest.HostOptions{Globals: map[string]string{"D": d, "B": bdir}, Prelude: prelude}, Module, catalog.Module)
	h.Run(t, `
		local cat = catalog.scan(B)
		local b = cat:backups()[1]
		local r = recover.verify(b, {catalog = cat})
		assert(r.ok and r.kind == "image" and r.bytes == 3600000 and #r.hash == 64 and r.entries == nil, r.bytes)
		local res = recover.restore(b.path, D .. "/out.img")
		assert(res.kind == "image" and res.bytes == 3600000 and res.applied[1] == b.path, res.bytes)
		local ok, err = pcall(recover.restore, b, D .. "/out.img")
		assert(not ok and err:find("already exists", 1, true), err)
		recover.restore(b, D .. "/out.img", {overwrite = true})
	`)
	got, err := os.ReadFile(filepath.Join(d, "out.img"))
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("restored image differs (%v)", err)
	}
}

// Under --dry-run a dump chain restore prints its plan and writes nothing.
func TestLuaDryRun(t *testing.T) {
	d := t.TempDir()
	dir := filepath.Join(d, "backup", "vm")
	os.MkdirAll(dir, 0o755)
	var paths []string
	for i, level := range []int{0, 3, 2} {
		at := day1.AddDate(0, 0, i)
		p := filepath.Join(dir, "1."+at.Format("0102")+".dump.lz4")
		base := 0.0
		if level > 0 {
			base = float64(day1.Unix())
		}
		writeBackup(t, strings.NewReader("not really a dump"), p, "lz4", "", at,
			map[string]any{"domain": "vm", "partition": float64(1), "level": float64(level), "base": base})
		paths = append(paths, p)
	}
	h := luatest.NewHost(t, luatest.HostOptions{DryRun: true, Globals: map[string]string{"D": d, "P": paths[2]}, Prelude: prelude}, Module, catalog.Module)
	h.Run(t, `
		local r = recover.restore(P, D .. "/target")
		assert(r.dry_run and #r.applied == 2 and r.kind == "dump", #r.applied)
		assert(recover.attach(P):find("bkrun-mnt-X", 1, true))
		recover.extract(P, "etc/fstab", D .. "/x")
	`)
	out := h.Out.String()
	for _, want := range []string{
		"[dry-run] recover.restore: verify 2 dump(s), then restore into " + d + "/target",
		"[dry-run] cd " + d + "/target && restore -r -f - < decoded " + paths[0] + " (level 0)",
		"[dry-run] cd " + d + "/target && restore -r -f - < decoded " + paths[2] + " (level 2)",
		"[dry-run] recover.extract " + paths[2] + ": etc/fstab -> " + d + "/x",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dry-run output lacks %q:\n%s", want, out)
		}
	}
	for _, p := range []string{"target", "x"} {
		if _, err := os.Stat(filepath.Join(d, p)); err == nil {
			t.Errorf("%s written under --dry-run", p)
		}
	}
}

// recover.attach from Lua: the mount is readable, recover.detach undoes it
// at once, and what is left attached is undone by the host's clean-up.
func TestLuaAttach(t *testing.T) {
	needTools(t, "mkfs.ext4", "sfdisk", "losetup", "mount", "umount", "dd")
	dir := t.TempDir()
	img, _, _ := diskImage(t, dir, twoParts)
	backup := filepath.Join(dir, "disk.img.lz4")
	imageBackup(t, img, backup, "lz4")
	scratch := filepath.Join(dir, "scratch")
	os.Mkdir(scratch, 0o755)
	t.Cleanup(func() { leftovers(t, scratch, img) })
	h := luatest.NewHost(t, luatest.HostOptions{Globals: map[string]string{"B": backup, "S": scratch}, Prelude: prelude}, Module, catalog.Module)
	h.Run(t, `
		local m = recover.attach(B, {partition = 1, scratch = S})
		local f = assert(io.open(m .. "/etc/hosts"))
		assert(f:read("*a") == "127.0.0.1 localhost\n")
		f:close()
		recover.detach(m)
		assert(io.open(m .. "/etc/hosts") == nil)
		local ok, err = pcall(recover.detach, m)
		assert(not ok and err:find("not a mount made by recover.attach", 1, true), err)
		local files = recover.files(B, {scratch = S})
		local seen = {}
		for _, p in ipairs(files) do seen[p] = true end
		assert(seen["etc/hosts"] and seen["data/random.bin"] and seen["home/u"], #files)
		KEPT = recover.attach(B, {scratch = S})
	`)
	if b, _ := os.ReadFile("/proc/mounts"); !strings.Contains(string(b), scratch) {
		t.Fatal("the second attach is not mounted")
	}
	if err := h.RunCleanup(); err != nil {
		t.Fatal(err)
	}
	leftovers(t, scratch, img)
}

// A real dump chain from Lua: header, restore with the catalogue, files
// and extract.
func TestLuaDumpChain(t *testing.T) {
	c := buildChain(t)
	d := t.TempDir()
	h := luatest.NewHost(t, luatest.HostOptions{Globals: map[string]string{"D": d, "DIR": c.dir, "P5": c.paths[4], "P1": c.paths[0]}, Prelude: prelude}, Module, catalog.Module)
	h.Run(t, `
		local cat = catalog.scan(DIR)
		local b5 = cat:find(P5)
		local h5, h1 = recover.header(b5), recover.header(P1)
		assert(h5.level == 4 and h1.level == 0 and h1.base == nil and h5.base and h5.date > h1.date, h5.level)
		local r = recover.restore(b5, D .. "/t", {catalog = cat})
		assert(r.kind == "dump" and #r.applied == 3 and r.applied[1] == P1 and r.applied[3] == P5, #r.applied)
		local f = assert(io.open(D .. "/t/z"))
		assert(f:read("*a") == "z on day 5\n")
		f:close()
		assert(io.open(D .. "/t/restoresymtable") == nil)
		local files = recover.files(b5, {catalog = cat})
		local seen = {}
		for _, p in ipairs(files) do seen[p] = true end
		assert(seen["z"] and seen["d1/sub/b"] and seen["top2"], #files)
		local out = recover.extract(b5, {"z", "d2/c"}, D .. "/x", {catalog = cat})
		assert(#out == 2 and out[1] == D .. "/x/z", out[1])
		local ok, err = pcall(recover.extract, b5, "nothere", D .. "/x")
		assert(not ok and err:find("recover.extract: " .. P5 .. ": not in the backup (dump chain of 3): nothere", 1, true), err)
		local v = recover.verify(P5)
		assert(v.ok and v.kind == "dump" and v.entries > 0, v.entries)
		ok, err = pcall(recover.header, D .. "/t/z")
		assert(not ok and err:find("no catalogue entry", 1, true), err)
	`)
	got, _ := os.ReadFile(filepath.Join(d, "x", "d2", "c"))
	if string(got) != "c of day 2, longer\n" {
		t.Errorf("extracted d2/c: %q", got)
	}
}
