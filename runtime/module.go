package runtime

import (
	"fmt"
	"io"
	"sort"

	lua "github.com/yuin/gopher-lua"
)

// Module is a native Lua module: its documentation and its binding.
// Each stdlib/<name> package exports one, and cmd/bkrun lists them
// explicitly; the documentation here is the only copy (bkrun help and
// docs/MODULES.md are generated from it).
type Module struct {
	Name    string
	Summary string // one line
	Doc     string // paragraphs shown by `bkrun help NAME`
	Funcs   []Func
	// Open builds the module table. It runs once per Lua state, on the
	// first require.
	Open func(h *Host, L *lua.LState) *lua.LTable
}

// Func documents one function of a module.
type Func struct {
	Name string // "run" or, for methods, "lock:release"
	Sig  string // "exec.run(cmd [, opts]) -> result"
	Doc  string
}

// Lookup finds a documented function by name.
func (m *Module) Lookup(name string) (Func, bool) {
	for _, f := range m.Funcs {
		if f.Name == name {
			return f, true
		}
	}
	return Func{}, false
}

// FuncNames lists the module's documented plain functions (not methods).
func (m *Module) FuncNames() []string {
	var out []string
	for _, f := range m.Funcs {
		out = append(out, f.Name)
	}
	sort.Strings(out)
	return out
}

// Table is a helper for bindings: a table holding fns.
func Table(L *lua.LState, fns map[string]lua.LGFunction) *lua.LTable {
	t := L.NewTable()
	L.SetFuncs(t, fns)
	return t
}

// Raise raises a Lua error "<op>: <err>" at the caller's line, the form
// every primitive uses (exec.run: lvcreate exited 5: ...).
func Raise(L *lua.LState, op string, err error) {
	L.RaiseError("%s: %v", op, err)
}

// ArgError raises "bad argument #n to 'fn' (msg)". gopher-lua's own
// ArgError names the function by its local name at the call site, which
// says "run" for exec.run; recipes read better with the full name.
func ArgError(L *lua.LState, n int, fn, msg string) {
	L.RaiseError("bad argument #%d to '%s' (%s)", n, fn, msg)
}

// TypeError raises "bad argument #n to 'fn' (want expected, got type)".
func TypeError(L *lua.LState, n int, fn, want string) {
	got := "no value"
	if n <= L.GetTop() {
		got = L.Get(n).Type().String()
	}
	ArgError(L, n, fn, fmt.Sprintf("%s expected, got %s", want, got))
}

// CheckString reads argument n as a string; numbers are refused (a path
// or a name built from a number is a bug in the recipe).
func CheckString(L *lua.LState, n int, fn string) string {
	s, ok := L.Get(n).(lua.LString)
	if !ok {
		TypeError(L, n, fn, "string")
	}
	return string(s)
}

// CheckPath reads argument n as a non-empty string.
func CheckPath(L *lua.LState, n int, fn string) string {
	s := CheckString(L, n, fn)
	if s == "" {
		ArgError(L, n, fn, "empty path")
	}
	return s
}

// PushObject pushes a userdata carrying v, with the metatable registered
// under typeName (L.NewTypeMetatable), as the bindings' objects are.
func PushObject(L *lua.LState, v any, typeName string) {
	ud := L.NewUserData()
	ud.Value = v
	L.SetMetatable(ud, L.GetTypeMetatable(typeName))
	L.Push(ud)
}

// CloseConsumed closes a one-shot stream source (btrfs.send, zfs.send,
// dump.stream, exec.stream, conn:open) once the function it was passed to
// has read it, successfully or not. Its producer is stopped and waited for
// at once rather than by the clean-up stack at the end of the run: a
// recipe's next step — deleting the snapshot being sent, removing the LVM
// snapshot being dumped — fails while the producer still holds it.
func CloseConsumed(src any) {
	if c, ok := src.(io.Closer); ok {
		c.Close()
	}
}
