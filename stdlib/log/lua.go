// Package log lets recipes write to bkrun's log (log/slog on stderr, text or
// JSON per --log-format) at the four slog levels. There is no core to speak
// of: slog is the core, and this file only converts Lua arguments to
// attributes. Import it as lualog to keep the standard log package in reach.
package log

import (
	"fmt"
	"log/slog"
	"sort"

	"github.com/bkrun/bkrun/runtime"
	lua "github.com/yuin/gopher-lua"
)

// Module binds the logger to Lua.
var Module = &runtime.Module{
	Name:    "log",
	Summary: "write to bkrun's log (stderr; -v shows debug, -q only warnings and errors)",
	Doc: `Each function takes a message and, optionally, fields: either one table
or key, value pairs after the message.

  log.info("snapshot taken", { lv = "master_snap", size = "3G" })
  log.info("copied", "bytes", 123, "seconds", 4.5)

Field values are strings, numbers, booleans or nil; keys are strings. Fields
given as a table are logged in key order. Logging never fails a run, but
malformed arguments are an error, at every level, so a mistake in a
rarely-enabled debug line is found on the first run.`,
	Funcs: []runtime.Func{
		{Name: "debug", Sig: "log.debug(msg [, fields | key, value, ...])",
			Doc: "Log at debug level (shown with -v)."},
		{Name: "info", Sig: "log.info(msg [, fields | key, value, ...])",
			Doc: "Log at info level (shown unless -q)."},
		{Name: "warn", Sig: "log.warn(msg [, fields | key, value, ...])",
			Doc: "Log at warning level."},
		{Name: "error", Sig: "log.error(msg [, fields | key, value, ...])",
			Doc: "Log at error level. It only logs: use error() to fail the run."},
	},
	Open: open,
}

func open(h *runtime.Host, L *lua.LState) *lua.LTable {
	fn := func(name string, level slog.Level) lua.LGFunction {
		return func(L *lua.LState) int {
			msg, attrs := args(L, "log."+name)
			h.Logger().LogAttrs(h.Context(), level, msg, attrs...)
			return 0
		}
	}
	return runtime.Table(L, map[string]lua.LGFunction{
		"debug": fn("debug", slog.LevelDebug),
		"info":  fn("info", slog.LevelInfo),
		"warn":  fn("warn", slog.LevelWarn),
		"error": fn("error", slog.LevelError),
	})
}

// args reads (msg [, fields | key, value, ...]).
func args(L *lua.LState, fn string) (string, []slog.Attr) {
	msg, ok := L.Get(1).(lua.LString)
	if !ok {
		runtime.TypeError(L, 1, fn, "string")
	}
	top := L.GetTop()
	if top < 2 {
		return string(msg), nil
	}
	if t, ok := L.Get(2).(*lua.LTable); ok {
		if top > 2 {
			runtime.ArgError(L, 3, fn, "no arguments expected after the fields table")
		}
		return string(msg), tableAttrs(L, t, fn)
	}
	attrs := make([]slog.Attr, 0, (top-1)/2)
	for i := 2; i <= top; i += 2 {
		key, ok := L.Get(i).(lua.LString)
		if !ok {
			runtime.TypeError(L, i, fn, "string (field name) or table")
		}
		if i+1 > top {
			runtime.ArgError(L, i, fn, fmt.Sprintf("field '%s' has no value", key))
		}
		a, err := attr(string(key), L.Get(i+1))
		if err != nil {
			runtime.ArgError(L, i+1, fn, err.Error())
		}
		attrs = append(attrs, a)
	}
	return string(msg), attrs
}

func tableAttrs(L *lua.LState, t *lua.LTable, fn string) []slog.Attr {
	var keys []string
	vals := map[string]lua.LValue{}
	t.ForEach(func(k, v lua.LValue) {
		ks, ok := k.(lua.LString)
		if !ok {
			runtime.ArgError(L, 2, fn, fmt.Sprintf("fields: string keys expected, got %s key %s", k.Type(), k.String()))
		}
		keys = append(keys, string(ks))
		vals[string(ks)] = v
	})
	sort.Strings(keys)
	attrs := make([]slog.Attr, len(keys))
	for i, k := range keys {
		a, err := attr(k, vals[k])
		if err != nil {
			runtime.ArgError(L, 2, fn, "fields: "+err.Error())
		}
		attrs[i] = a
	}
	return attrs
}

func attr(key string, v lua.LValue) (slog.Attr, error) {
	switch x := v.(type) {
	case lua.LString:
		return slog.String(key, string(x)), nil
	case lua.LNumber:
		f := float64(x)
		if f == float64(int64(f)) {
			return slog.Int64(key, int64(f)), nil
		}
		return slog.Float64(key, f), nil
	case lua.LBool:
		return slog.Bool(key, bool(x)), nil
	case *lua.LNilType:
		return slog.Any(key, nil), nil
	}
	return slog.Attr{}, fmt.Errorf("field '%s': string, number or boolean expected, got %s", key, v.Type())
}
