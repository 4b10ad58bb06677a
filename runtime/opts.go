package runtime

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// Opts reads an options table passed to a primitive, with type checks and
// a check for unknown keys, so that a typo such as `timout=5` is an error
// instead of a silently ignored option.
type Opts struct {
	L    *lua.LState
	fn   string
	argn int
	t    *lua.LTable
	seen map[string]bool
}

// OptsAt reads argument n as an options table (nil or absent means empty).
func OptsAt(L *lua.LState, n int, fn string) *Opts {
	o := &Opts{L: L, fn: fn, argn: n, seen: map[string]bool{}}
	switch v := L.Get(n).(type) {
	case *lua.LTable:
		o.t = v
	case *lua.LNilType:
	default:
		TypeError(L, n, fn, "table")
	}
	return o
}

// OptsOf wraps an existing table (for example the hash part of an argv
// table such as exec.run{"ls", dir="/"}).
func OptsOf(L *lua.LState, t *lua.LTable, n int, fn string) *Opts {
	return &Opts{L: L, fn: fn, argn: n, t: t, seen: map[string]bool{}}
}

func (o *Opts) get(key string) lua.LValue {
	o.seen[key] = true
	if o.t == nil {
		return lua.LNil
	}
	return o.t.RawGetString(key)
}

func (o *Opts) bad(key, want string, v lua.LValue) {
	ArgError(o.L, o.argn, o.fn, fmt.Sprintf("option '%s': %s expected, got %s", key, want, v.Type()))
}

// Table is the underlying table, or nil.
func (o *Opts) Table() *lua.LTable { return o.t }

// Value is the raw value of key (nil when unset), for options that take
// objects such as a connection or a source; the key counts as known.
func (o *Opts) Value(key string) lua.LValue { return o.get(key) }

// Has reports whether key is set.
func (o *Opts) Has(key string) bool { return o.get(key) != lua.LNil }

// String reads a string option (numbers are accepted and converted).
func (o *Opts) String(key, def string) string {
	switch v := o.get(key).(type) {
	case *lua.LNilType:
		return def
	case lua.LString:
		return string(v)
	case lua.LNumber:
		return v.String()
	default:
		o.bad(key, "string", v)
		return ""
	}
}

// Bool reads a boolean option.
func (o *Opts) Bool(key string, def bool) bool {
	switch v := o.get(key).(type) {
	case *lua.LNilType:
		return def
	case lua.LBool:
		return bool(v)
	default:
		o.bad(key, "boolean", v)
		return false
	}
}

// Int reads an integer option.
func (o *Opts) Int(key string, def int64) int64 {
	switch v := o.get(key).(type) {
	case *lua.LNilType:
		return def
	case lua.LNumber:
		if float64(v) != float64(int64(v)) {
			o.bad(key, "integer", v)
		}
		return int64(v)
	default:
		o.bad(key, "integer", v)
		return 0
	}
}

// Duration reads a duration given as seconds (number) or a Go duration
// string ("90s", "1m30s").
func (o *Opts) Duration(key string, def time.Duration) time.Duration {
	v := o.get(key)
	if v == lua.LNil {
		return def
	}
	d, err := ToDuration(v)
	if err != nil {
		ArgError(o.L, o.argn, o.fn, fmt.Sprintf("option '%s': %v", key, err))
	}
	return d
}

// ToDuration converts seconds or a duration string to a time.Duration.
func ToDuration(v lua.LValue) (time.Duration, error) {
	switch x := v.(type) {
	case lua.LNumber:
		if x < 0 {
			return 0, fmt.Errorf("negative duration %v", x)
		}
		return time.Duration(float64(x) * float64(time.Second)), nil
	case lua.LString:
		s := strings.TrimSpace(string(x))
		if f, err := strconv.ParseFloat(s, 64); err == nil {
			return ToDuration(lua.LNumber(f))
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q (want seconds or e.g. \"90s\", \"5m\")", s)
		}
		if d < 0 {
			return 0, fmt.Errorf("negative duration %q", s)
		}
		return d, nil
	default:
		return 0, fmt.Errorf("duration expected (seconds or \"90s\"), got %s", v.Type())
	}
}

// StringMap reads a table of string keys to string values.
func (o *Opts) StringMap(key string) map[string]string {
	v := o.get(key)
	if v == lua.LNil {
		return nil
	}
	t, ok := v.(*lua.LTable)
	if !ok {
		o.bad(key, "table", v)
	}
	out := map[string]string{}
	t.ForEach(func(k, val lua.LValue) {
		ks, ok1 := k.(lua.LString)
		if !ok1 {
			o.bad(key+"[...]", "string key", k)
		}
		switch x := val.(type) {
		case lua.LString, lua.LNumber:
			out[string(ks)] = x.String()
		case lua.LBool:
			out[string(ks)] = strconv.FormatBool(bool(x))
		default:
			o.bad(key+"."+string(ks), "string", val)
		}
	})
	return out
}

// Done fails on keys the primitive does not know. ignoreArray skips the
// array part (for argv tables that carry options in their hash part).
func (o *Opts) Done(ignoreArray bool) {
	if o.t == nil {
		return
	}
	var unknown []string
	n := o.t.Len()
	o.t.ForEach(func(k, _ lua.LValue) {
		if num, ok := k.(lua.LNumber); ok && ignoreArray && int(num) >= 1 && int(num) <= n {
			return
		}
		ks := k.String()
		if !o.seen[ks] {
			unknown = append(unknown, ks)
		}
	})
	if len(unknown) > 0 {
		sort.Strings(unknown)
		known := make([]string, 0, len(o.seen))
		for k := range o.seen {
			known = append(known, k)
		}
		sort.Strings(known)
		ArgError(o.L, o.argn, o.fn, fmt.Sprintf("unknown option '%s' (known: %s)", strings.Join(unknown, "', '"), strings.Join(known, ", ")))
	}
}
