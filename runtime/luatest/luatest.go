// Package luatest runs Lua test files as Go tests, so modules can be tested
// from Lua the way recipes use them.
//
// A file x_test.lua defines global functions TestSomething(t); each becomes a
// subtest with a fresh bkrun host (and its own clean-up stack, which must
// run cleanly). The t object offers:
//
//	t:log(...)              t:error(...)          t:fatal(...)       t:skip(...)
//	t:ok(cond, msg)         t:eq(got, want, msg)  (deep equality for tables)
//	t:raises(fn, substr)    -> the error message; fails unless fn raises an error containing substr
//	t:tempdir()             -> a fresh directory removed after the test
//	t:name()                -> the subtest's name
package luatest

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/bkrun/bkrun/runtime"
	lua "github.com/yuin/gopher-lua"
)

// Options tune a run.
type Options struct {
	DryRun bool
}

// RunDir runs every *_test.lua file in dir.
func RunDir(t *testing.T, dir string, mods ...*runtime.Module) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*_test.lua"))
	if err != nil || len(files) == 0 {
		t.Fatalf("luatest: no *_test.lua files in %s", dir)
	}
	for _, f := range files {
		f := f
		t.Run(filepath.Base(f), func(t *testing.T) { Run(t, f, mods...) })
	}
}

// Run runs every TestXxx function of one Lua file as a subtest.
func Run(t *testing.T, path string, mods ...*runtime.Module) {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("luatest: %v", err)
	}
	names := testNames(t, path, string(src), mods)
	if len(names) == 0 {
		t.Fatalf("luatest: %s defines no Test functions", path)
	}
	for _, name := range names {
		name := name
		t.Run(name, func(t *testing.T) { runOne(t, path, string(src), name, mods) })
	}
}

func newHost(path string, mods []*runtime.Module, out *bytes.Buffer) *runtime.Host {
	return runtime.New(runtime.Options{
		Modules:   mods,
		ScriptDir: runtime.ScriptDirOf(path),
		Stdout:    out,
		Stderr:    out,
	})
}

// testNames loads the file once to find its Test functions, in name order.
func testNames(t *testing.T, path, src string, mods []*runtime.Module) []string {
	var out bytes.Buffer
	h := newHost(path, mods, &out)
	defer h.Close()
	if _, err := h.RunChunk(src, path, nil); err != nil {
		t.Fatalf("luatest: loading %s: %s\n%s", path, runtime.Describe(err, true), out.String())
	}
	if err := h.RunCleanup(); err != nil {
		t.Fatalf("luatest: loading %s: clean-up: %v", path, err)
	}
	var names []string
	h.L.G.Global.ForEach(func(k, v lua.LValue) {
		if s, ok := k.(lua.LString); ok && strings.HasPrefix(string(s), "Test") {
			if _, isFn := v.(*lua.LFunction); isFn {
				names = append(names, string(s))
			}
		}
	})
	sort.Strings(names)
	return names
}

// fatalMarker ends a Lua test after t:fatal without counting as an error.
const fatalMarker = "\x00luatest-fatal"

func runOne(t *testing.T, path, src, name string, mods []*runtime.Module) {
	var out bytes.Buffer
	h := newHost(path, mods, &out)
	defer h.Close()
	defer func() {
		if t.Failed() && out.Len() > 0 {
			t.Logf("output:\n%s", out.String())
		}
	}()
	if _, err := h.RunChunk(src, path, nil); err != nil {
		t.Fatalf("loading %s: %s", path, runtime.Describe(err, true))
	}
	skipped := ""
	tobj := newT(h.L, t, &skipped)
	_, err := h.CallLua(h.L.GetGlobal(name), 0, tobj)
	if err != nil && !strings.Contains(err.Error(), fatalMarker) {
		t.Errorf("%s", runtime.Describe(err, true))
	}
	if cerr := h.RunCleanup(); cerr != nil {
		t.Errorf("clean-up failed: %v", cerr)
	}
	if skipped != "" {
		t.Skip(skipped)
	}
}

func newT(L *lua.LState, t *testing.T, skipped *string) *lua.LTable {
	obj := L.NewTable()
	msg := func(L *lua.LState, from int) string {
		var parts []string
		for i := from; i <= L.GetTop(); i++ {
			parts = append(parts, L.ToStringMeta(L.Get(i)).String())
		}
		return strings.Join(parts, " ")
	}
	where := func(L *lua.LState) string { return L.Where(1) }
	fns := map[string]lua.LGFunction{
		"log":   func(L *lua.LState) int { t.Log(where(L), msg(L, 2)); return 0 },
		"error": func(L *lua.LState) int { t.Error(where(L), msg(L, 2)); return 0 },
		"fatal": func(L *lua.LState) int {
			t.Error(where(L), msg(L, 2))
			L.RaiseError("%s", fatalMarker)
			return 0
		},
		"skip": func(L *lua.LState) int {
			*skipped = msg(L, 2)
			if *skipped == "" {
				*skipped = "skipped"
			}
			L.RaiseError("%s", fatalMarker)
			return 0
		},
		"name": func(L *lua.LState) int { L.Push(lua.LString(t.Name())); return 1 },
		"ok": func(L *lua.LState) int {
			if !lua.LVAsBool(L.Get(2)) {
				t.Error(where(L), "not ok:", msg(L, 3))
			}
			return 0
		},
		"eq": func(L *lua.LState) int {
			got, want := L.Get(2), L.Get(3)
			if !deepEqual(got, want, 0) {
				t.Errorf("%s %s\n  got:  %s\n  want: %s", where(L), msg(L, 4), runtime.FormatValue(got), runtime.FormatValue(want))
			}
			return 0
		},
		"raises": func(L *lua.LState) int {
			fn := L.CheckFunction(2)
			want := L.OptString(3, "")
			L.Push(fn)
			err := L.PCall(0, 0, nil)
			if err == nil {
				t.Errorf("%s expected an error containing %q, got none", where(L), want)
				L.Push(lua.LNil)
				return 1
			}
			m := err.Error()
			if ae, ok := err.(*lua.ApiError); ok {
				m = ae.Object.String()
			}
			if !strings.Contains(m, want) {
				t.Errorf("%s error %q does not contain %q", where(L), m, want)
			}
			L.Push(lua.LString(m))
			return 1
		},
		"tempdir": func(L *lua.LState) int { L.Push(lua.LString(t.TempDir())); return 1 },
	}
	for k, f := range fns {
		f := f
		// Methods are called as t:fn(...), so argument 1 is t itself.
		obj.RawSetString(k, L.NewFunction(f))
	}
	return obj
}

func deepEqual(a, b lua.LValue, depth int) bool {
	if depth > 32 {
		return false
	}
	ta, ok1 := a.(*lua.LTable)
	tb, ok2 := b.(*lua.LTable)
	if !ok1 || !ok2 {
		return a.Type() == b.Type() && lua.LVAsString(a) == lua.LVAsString(b) && fmt.Sprint(a) == fmt.Sprint(b)
	}
	equal := true
	count := 0
	ta.ForEach(func(k, v lua.LValue) {
		count++
		if equal && !deepEqual(v, tb.RawGet(k), depth+1) {
			equal = false
		}
	})
	tb.ForEach(func(_, _ lua.LValue) { count-- })
	return equal && count == 0
}
