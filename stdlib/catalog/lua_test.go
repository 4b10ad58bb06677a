package catalog_test

import (
	"os"
	"strings"
	"testing"

	"github.com/bkrun/bkrun/runtime/luatest"
	"github.com/bkrun/bkrun/stdlib/catalog"
	"github.com/bkrun/bkrun/stdlib/fs"
	"github.com/bkrun/bkrun/stdlib/stream"
)

// catalog_test.lua writes its backups with the real stream.copy.
func TestLua(t *testing.T) {
	luatest.Run(t, "catalog_test.lua", catalog.Module, stream.Module, fs.Module)
}

// Simulated days (Go-written entries) seen from Lua: grouping, levels,
// dates and the chain error as a recipe or the REPL gets it.
func TestLuaSimulatedDays(t *testing.T) {
	d := t.TempDir()
	p := dumps(t, d, 5)
	h := luatest.NewHost(t, luatest.HostOptions{Globals: map[string]string{"D": d, "P5": p[4], "P1": p[0]},
		Prelude: `local catalog = require "catalog"; `}, catalog.Module)
	h.Run(t, `
		local cat = catalog.scan(D)
		local s = cat:sources()
		assert(#s == 2 and s[1].source == "master/1" and s[2].source == "master/2", #s)
		local b = s[1].backups
		assert(#b == 5 and b[1].path == P5 and b[1].level == 4 and b[1].kind == "dump", b[1].path)
		assert(b[1].date == "2026-11-05T03:00:00Z" and b[1].codec == "lz4" and #b[1].hash == 64, b[1].date)
		assert(b[1].base and b[5].base == nil and b[5].level == 0)
		assert(b[1].extra.domain == "master" and b[1].extra.partition == 1)
		local ch = cat:chain(P5)
		assert(#ch == 3 and ch[1] == P1 and ch[3] == P5, #ch)
		assert(#cat:chain(b[1]) == 3)
		assert(tostring(cat):find("10 backups, 0 problems, 0 unknown", 1, true), tostring(cat))
	`)
	if err := os.Remove(p[0]); err != nil {
		t.Fatal(err)
	}
	msg := h.RunErr(t, `catalog.scan(D):chain(P5)`)
	if !strings.Contains(msg, "cat:chain: master/1: level 2 of 2026-11-03 needs a lower-level dump before it; none found (missing level 0?)") {
		t.Errorf("error %q", msg)
	}
}
