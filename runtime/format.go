package runtime

import (
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"

	lua "github.com/yuin/gopher-lua"
)

// Limits that keep one printed value to something a person can read: the
// REPL shows results on one line, and a recipe's table can be arbitrarily
// large or deep (a directory listing, a parsed manifest).
const (
	formatMaxDepth   = 4   // nested tables deeper than this show as {…}
	formatMaxEntries = 50  // entries shown per table before "…"
	formatMaxString  = 200 // bytes of a nested string before "…"
)

// FormatValues renders values the way the REPL shows results: each value
// formatted with FormatValue, separated by tabs as print separates them.
//
// It has no Lua state to run metamethods on, so a __tostring metamethod is
// called on a scratch state made only when one is met. Inside the REPL the
// host's own state is used instead (Host.FormatValues), which lets Ctrl-C
// stop a __tostring that never returns.
func FormatValues(vals []lua.LValue) string {
	f := &formatter{}
	defer f.close()
	return f.values(vals)
}

// FormatValue renders one value for a person: strings as they are, tables
// as { 1, 2, key = "v", nested = { … } } with array entries first and the
// other keys sorted, functions with where they were defined, and values
// with a __tostring metamethod through it.
func FormatValue(v lua.LValue) string {
	f := &formatter{}
	defer f.close()
	return f.top(v)
}

// FormatValues is the package-level FormatValues with metamethods run on
// the host's Lua state, under whatever context the caller has set (the REPL
// calls it inside Interruptible). It must be called from the goroutine that
// owns h.L.
func (h *Host) FormatValues(vals []lua.LValue) string {
	f := &formatter{L: h.L}
	return f.values(vals)
}

// formatter carries the state of one formatting call.
type formatter struct {
	// L runs __tostring. When nil, a scratch state is made on first use
	// and closed by close.
	L       *lua.LState
	scratch bool
	// open holds the tables on the path from the top value to the one
	// being written: meeting one of them again is a cycle. A table that is
	// merely shared (reachable twice, not through itself) is printed twice.
	open []*lua.LTable
	b    strings.Builder
}

func (f *formatter) close() {
	if f.scratch {
		f.L.Close()
	}
}

func (f *formatter) values(vals []lua.LValue) string {
	parts := make([]string, len(vals))
	for i, v := range vals {
		parts[i] = f.top(v)
	}
	return strings.Join(parts, "\t")
}

// top formats a value in top-level position, where a string is shown as
// it is: `fs.read(path)` should print the text, not a Go-quoted literal.
func (f *formatter) top(v lua.LValue) string {
	if s, ok := v.(lua.LString); ok {
		return string(s)
	}
	f.b.Reset()
	f.open = f.open[:0]
	f.write(v, 0)
	return f.b.String()
}

// write appends v at nesting depth depth (0 for the top value).
func (f *formatter) write(v lua.LValue, depth int) {
	if s, ok := f.tostring(v); ok {
		f.b.WriteString(s)
		return
	}
	switch v := v.(type) {
	case lua.LString:
		f.b.WriteString(quote(string(v)))
	case *lua.LFunction:
		f.b.WriteString(funcName(v))
	case *lua.LTable:
		f.table(v, depth)
	default:
		// nil, booleans, numbers as print shows them; userdata, threads
		// and channels by address, which is all Lua knows about them.
		f.b.WriteString(v.String())
	}
}

// tostring runs v's __tostring metamethod, if it has one. A metamethod
// that fails is ignored: showing a value must not raise a second error.
func (f *formatter) tostring(v lua.LValue) (string, bool) {
	mtt := metatableOf(v)
	if mtt == nil {
		return "", false
	}
	fn, ok := mtt.RawGetString("__tostring").(*lua.LFunction)
	if !ok {
		return "", false
	}
	if f.L == nil {
		f.L = lua.NewState(lua.Options{SkipOpenLibs: true})
		f.scratch = true
	}
	if err := f.L.CallByParam(lua.P{Fn: fn, NRet: 1, Protect: true}, v); err != nil {
		return "", false
	}
	ret := f.L.Get(-1)
	f.L.Pop(1)
	return ret.String(), true
}

func (f *formatter) table(t *lua.LTable, depth int) {
	for _, o := range f.open {
		if o == t {
			f.b.WriteString("<cycle>")
			return
		}
	}
	// The array part: 1..n up to the first nil, as ipairs sees it.
	n := 0
	for t.RawGetInt(n+1) != lua.LNil {
		n++
	}
	var keys []lua.LValue
	t.ForEach(func(k, _ lua.LValue) {
		if i, ok := k.(lua.LNumber); ok && float64(i) == float64(int(i)) && int(i) >= 1 && int(i) <= n {
			return
		}
		keys = append(keys, k)
	})
	total := n + len(keys)
	if total == 0 {
		f.b.WriteString("{}")
		return
	}
	if depth >= formatMaxDepth {
		f.b.WriteString("{…}")
		return
	}
	sortKeys(keys)

	f.open = append(f.open, t)
	defer func() { f.open = f.open[:len(f.open)-1] }()
	f.b.WriteString("{ ")
	shown := 0
	// more writes the separator before the next entry, or the count of
	// what is left once the limit is reached, after which it says no.
	more := func() bool {
		if shown > formatMaxEntries {
			return false
		}
		if shown == formatMaxEntries {
			fmt.Fprintf(&f.b, ", … %d more", total-shown)
			shown++
			return false
		}
		if shown > 0 {
			f.b.WriteString(", ")
		}
		shown++
		return true
	}
	for i := 1; i <= n && more(); i++ {
		f.write(t.RawGetInt(i), depth+1)
	}
	for _, k := range keys {
		if !more() {
			break
		}
		f.key(k)
		f.b.WriteString(" = ")
		f.write(t.RawGet(k), depth+1)
	}
	f.b.WriteString(" }")
}

// key writes a table key as it would be written in a constructor:
// name = …, ["not a name"] = …, [3] = ….
func (f *formatter) key(k lua.LValue) {
	if s, ok := k.(lua.LString); ok && isIdent(string(s)) {
		f.b.WriteString(string(s))
		return
	}
	f.b.WriteByte('[')
	switch k := k.(type) {
	case lua.LString:
		f.b.WriteString(quote(string(k)))
	case *lua.LTable:
		// A table used as a key: its address identifies it; its contents
		// would make the line unreadable.
		f.b.WriteString(k.String())
	default:
		f.write(k, formatMaxDepth)
	}
	f.b.WriteByte(']')
}

// sortKeys orders keys so that output is stable: numbers, then strings,
// then booleans, then everything else by its printed form.
func sortKeys(keys []lua.LValue) {
	rank := func(v lua.LValue) int {
		switch v.(type) {
		case lua.LNumber:
			return 0
		case lua.LString:
			return 1
		case lua.LBool:
			return 2
		}
		return 3
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra < rb
		}
		switch a := a.(type) {
		case lua.LNumber:
			return a < b.(lua.LNumber)
		case lua.LString:
			return a < b.(lua.LString)
		case lua.LBool:
			return !bool(a) && bool(b.(lua.LBool))
		}
		return a.String() < b.String()
	})
}

// quote writes a nested string as a Go-quoted literal (close enough to
// Lua's to be read back), cut short when it is long.
func quote(s string) string {
	if len(s) <= formatMaxString {
		return fmt.Sprintf("%q", s)
	}
	cut := formatMaxString
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%q…", s[:cut])
}

// funcName says where a function comes from: Go functions have no source
// to point at; Lua functions are shown as file:line of their definition.
func funcName(fn *lua.LFunction) string {
	if fn.IsG || fn.Proto == nil {
		return "function: builtin"
	}
	return fmt.Sprintf("function: %s:%d", fn.Proto.SourceName, fn.Proto.LineDefined)
}

var luaKeywords = map[string]bool{
	"and": true, "break": true, "do": true, "else": true, "elseif": true,
	"end": true, "false": true, "for": true, "function": true, "if": true,
	"in": true, "local": true, "nil": true, "not": true, "or": true,
	"repeat": true, "return": true, "then": true, "true": true, "until": true,
	"while": true,
}

// isIdent reports whether s can be written as a bare Lua name.
func isIdent(s string) bool {
	if s == "" || luaKeywords[s] {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || i > 0 && '0' <= c && c <= '9' {
			continue
		}
		return false
	}
	return true
}

// metatableOf is the metatable of a table or userdata, or nil.
func metatableOf(v lua.LValue) *lua.LTable {
	var mt lua.LValue
	switch v := v.(type) {
	case *lua.LTable:
		mt = v.Metatable
	case *lua.LUserData:
		mt = v.Metatable
	}
	t, _ := mt.(*lua.LTable)
	return t
}
