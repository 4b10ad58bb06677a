package dump

import (
	"context"
	"os"
	"strings"
	"time"

	"github.com/bkrun/bkrun/runtime"
	"github.com/bkrun/bkrun/stdlib/exec"
	lua "github.com/yuin/gopher-lua"
)

// Module binds dump to Lua.
var Module = &runtime.Module{
	Name:    "dump",
	Summary: "dump(8) as a stream source that knows its own date, for incremental chains that restore",
	Doc: `dump.stream runs dump(8) on a device (a partition attached with part.attach,
an LVM snapshot, ...) and returns its archive as a source for stream.copy.
Once the copy has read the archive's first record, the source knows the date
the dump was taken, its level and its base: record src.date in the history
(retain.history) and give it as base to the next incremental.

That date, not the clock, is what matters: restore -r accepts an
incremental only when its -T date is exactly the "Dump date" of the dump
below it, to the second ("Incremental tape too high/low" otherwise, after
the lower dumps were already restored). The dump starts a moment after the
recipe looked at the clock (pause, snapshot, attach), so a date taken from
os.time() makes a chain that cannot be restored. recover.restore checks the
dates of a chain before writing anything.`,
	Funcs: []runtime.Func{
		{Name: "stream", Sig: "dump.stream(device [, {level=0, base=unix_seconds}]) -> source",
			Doc: `Start "dump -LEVEL -q -f - [-T BASE] DEVICE" and return its standard output
as a source (for stream.copy{from = ...}). base, required for level > 0, is
the date of the dump this incremental is taken against (src.date of that
run). A failing dump fails the copy with its exit status and the tail of its
stderr. After the copy: src.date (Unix seconds, from the archive's header),
src.level and src.base (nil for a full dump); src.command is the command
line. The dump is stopped when the run ends. Under --dry-run the command is
printed, nothing runs, and src.date stays nil.`},
	},
	Open: open,
}

const sourceType = "dump.source"

// dryRun stands in for the archive under --dry-run.
type dryRun struct{ *strings.Reader }

func open(h *runtime.Host, L *lua.LState) *lua.LTable {
	mt := L.NewTypeMetatable(sourceType)
	L.SetField(mt, "__index", L.NewFunction(func(L *lua.LState) int {
		s, _ := L.CheckUserData(1).Value.(*Source)
		if s == nil {
			L.Push(lua.LNil)
			return 1
		}
		key := L.CheckString(2)
		if key == "command" {
			L.Push(lua.LString(s.Path()))
			return 1
		}
		hd, err := s.Header()
		if err != nil {
			L.Push(lua.LNil) // not read yet (or a dry run)
			return 1
		}
		switch key {
		case "date":
			L.Push(lua.LNumber(hd.Date.Unix()))
		case "level":
			L.Push(lua.LNumber(hd.Level))
		case "base":
			if hd.Base.IsZero() {
				L.Push(lua.LNil)
			} else {
				L.Push(lua.LNumber(hd.Base.Unix()))
			}
		default:
			L.Push(lua.LNil)
		}
		return 1
	}))
	L.SetField(mt, "__tostring", L.NewFunction(func(L *lua.LState) int {
		s, _ := L.CheckUserData(1).Value.(*Source)
		L.Push(lua.LString("dump.source(" + s.Path() + ")"))
		return 1
	}))
	return runtime.Table(L, map[string]lua.LGFunction{
		"stream": func(L *lua.LState) int {
			const fn = "dump.stream"
			device := runtime.CheckPath(L, 1, fn)
			o := runtime.OptsAt(L, 2, fn)
			level := o.Int("level", 0)
			baseSec := o.Int("base", 0)
			o.Done(false)
			if level < 0 || level > 9 {
				runtime.ArgError(L, 2, fn, "option 'level': a dump level is 0 to 9")
			}
			if level > 0 && baseSec <= 0 {
				runtime.ArgError(L, 2, fn, "option 'base': an incremental (level > 0) needs the date of the dump it is taken against (src.date of that run)")
			}
			var base time.Time
			if baseSec > 0 {
				base = time.Unix(int64(baseSec), 0)
			}
			argv := Command(device, int(level), base)
			name := exec.Quote(argv)
			if h.DryRun() {
				h.DryRunf("exec: %s |", name)
				runtime.PushObject(L, NewSource(dryRun{strings.NewReader("")}, name), sourceType)
				return 1
			}
			// dump reads a missing path as a directory of the root
			// filesystem and says so confusingly; name the path instead.
			if _, err := os.Stat(device); err != nil {
				runtime.Raise(L, fn, err)
			}
			h.Logger().Debug("dump", "cmd", name)
			r, err := exec.Stream(h.Context(), exec.Cmd{Argv: argv})
			if err != nil {
				runtime.Raise(L, fn, err)
			}
			h.Defer("stop dump of "+device, func(context.Context) error { r.Close(); return nil })
			runtime.PushObject(L, NewSource(r, name), sourceType)
			return 1
		},
	})
}
