package runtime

import (
	"strings"
	"testing"

	lua "github.com/yuin/gopher-lua"
)

// luaValues evaluates "return <exprs>" in a fresh state and returns the
// values, so that cases read as Lua.
func luaValues(t *testing.T, L *lua.LState, exprs string) []lua.LValue {
	t.Helper()
	top := L.GetTop()
	if err := L.DoString("return " + exprs); err != nil {
		t.Fatalf("%s: %v", exprs, err)
	}
	n := L.GetTop() - top
	vals := make([]lua.LValue, n)
	for i := range vals {
		vals[i] = L.Get(top + 1 + i)
	}
	L.SetTop(top)
	return vals
}

func TestFormatValue(t *testing.T) {
	L := lua.NewState()
	defer L.Close()
	for _, c := range []struct{ expr, want string }{
		{`nil`, `nil`},
		{`true`, `true`},
		{`42`, `42`},
		{`1.5`, `1.5`},
		// Top-level strings are shown as they are; nested ones quoted.
		{`"a\tb"`, "a\tb"},
		{`{}`, `{}`},
		{`{1, 2, 3}`, `{ 1, 2, 3 }`},
		{`{1, 2, a = "b"}`, `{ 1, 2, a = "b" }`},
		{`{z = 1, a = 2, m = 3}`, `{ a = 2, m = 3, z = 1 }`},
		// Array part first, then numbers, strings, booleans; keys that
		// are not names are bracketed.
		{`{"x", [10] = "ten", [3.5] = 1, ["two words"] = 2, ["end"] = 3, [true] = 4}`,
			`{ "x", [3.5] = 1, [10] = "ten", ["end"] = 3, ["two words"] = 2, [true] = 4 }`},
		// A hole ends the array part; what follows is keyed.
		{`{1, nil, 3}`, `{ 1, [3] = 3 }`},
		{`{nested = {deeper = {"x"}}}`, `{ nested = { deeper = { "x" } } }`},
		{`{a = {b = {c = {d = {e = 1}}}}}`, `{ a = { b = { c = { d = {…} } } } }`},
		{`{a = {b = {c = {d = {}}}}}`, `{ a = { b = { c = { d = {} } } } }`},
		{`{s = "line\nbreak \"q\""}`, `{ s = "line\nbreak \"q\"" }`},
		{`print`, `function: builtin`},
		{`{f = string.len}`, `{ f = function: builtin }`},
		{`setmetatable({}, {__tostring = function() return "<obj>" end})`, `<obj>`},
		{`{setmetatable({}, {__tostring = function() return "<obj>" end})}`, `{ <obj> }`},
		// A failing __tostring falls back to the contents.
		{`setmetatable({1}, {__tostring = function() error("no") end})`, `{ 1 }`},
	} {
		if got := FormatValue(luaValues(t, L, c.expr)[0]); got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.expr, got, c.want)
		}
	}
}

func TestFormatLuaFunction(t *testing.T) {
	L := lua.NewState()
	defer L.Close()
	if err := L.DoString("\n\nfunction f() end"); err != nil {
		t.Fatal(err)
	}
	if got := FormatValue(L.GetGlobal("f")); got != "function: <string>:3" {
		t.Errorf("got %q", got)
	}
}

func TestFormatCyclesAndSharing(t *testing.T) {
	L := lua.NewState()
	defer L.Close()
	v := luaValues(t, L, `(function()
		local t = {name = "t"}
		t.self = t
		return t
	end)()`)[0]
	if got, want := FormatValue(v), `{ name = "t", self = <cycle> }`; got != want {
		t.Errorf("cycle: got %s, want %s", got, want)
	}
	// The same table twice is not a cycle.
	v = luaValues(t, L, `(function() local s = {1} return {a = s, b = s} end)()`)[0]
	if got, want := FormatValue(v), `{ a = { 1 }, b = { 1 } }`; got != want {
		t.Errorf("shared: got %s, want %s", got, want)
	}
}

func TestFormatLimits(t *testing.T) {
	L := lua.NewState()
	defer L.Close()
	v := luaValues(t, L, `(function() local t = {} for i = 1, 120 do t[i] = i end t.k = 1 return t end)()`)[0]
	got := FormatValue(v)
	if !strings.HasPrefix(got, "{ 1, 2, 3, ") || !strings.HasSuffix(got, ", 49, 50, … 71 more }") {
		t.Errorf("long table: %s", got)
	}
	v = luaValues(t, L, `{string.rep("é", 300)}`)[0]
	got = FormatValue(v)
	if !strings.HasSuffix(got, `"… }`) || len(got) > 2*formatMaxString {
		t.Errorf("long string: %s", got)
	}
	if !strings.Contains(got, strings.Repeat("é", 100)) {
		t.Errorf("long string cut inside a character: %s", got)
	}
}

func TestFormatValues(t *testing.T) {
	L := lua.NewState()
	defer L.Close()
	if got, want := FormatValues(luaValues(t, L, `1, "two", nil, {3}`)), "1\ttwo\tnil\t{ 3 }"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := FormatValues(nil); got != "" {
		t.Errorf("no values: %q", got)
	}
}

// Userdata made by a Go binding prints through its Go __tostring, also
// without the host's state (bkrun -e uses the package-level function).
func TestFormatUserdata(t *testing.T) {
	L := lua.NewState()
	defer L.Close()
	ud := L.NewUserData()
	ud.Value = "/dev/loop3"
	mt := L.NewTable()
	L.SetField(mt, "__tostring", L.NewFunction(func(L *lua.LState) int {
		L.Push(lua.LString("loop(" + L.CheckUserData(1).Value.(string) + ")"))
		return 1
	}))
	ud.Metatable = mt
	if got := FormatValue(ud); got != "loop(/dev/loop3)" {
		t.Errorf("got %q", got)
	}
	plain := L.NewUserData()
	if got := FormatValue(plain); !strings.HasPrefix(got, "userdata: 0x") {
		t.Errorf("plain userdata: %q", got)
	}
}
