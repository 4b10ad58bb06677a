package retain

import (
	"fmt"
	"time"

	"github.com/bkrun/bkrun/runtime"
	lua "github.com/yuin/gopher-lua"
)

// Module binds retain to Lua.
var Module = &runtime.Module{
	Name:    "retain",
	Summary: "dump levels by date (Tower of Hanoi) and retention plans",
	Doc: `Dump levels: retain.hanoi gives the dump(8) level for a date. Let n be the
number of days since the start of the date's cycle (0 on the 1st of the month
for cycle="monthly", the default; 0 on Monday for "weekly"). Day n = 0 is
level 0; days n = 1..8 are 3 2 5 4 7 6 9 8 and every later day is 9: dump(8)'s
"3 2 5 4 7 6 9 8 9 9 ...". A 31-day month reads

  day    1  2  3  4  5  6  7  8  9  10 .. 31
  level  0  3  2  5  4  7  6  9  8  9  ..  9

cycle="monthly-weekly" is dump(8)'s full scheme: level 0 on the 1st, level 1
on every other Monday, then 3 2 5 4 7 6 after either. Dates are calendar days
in local time. dump's own dumpdates keys history by device name, which changes
for loop devices and snapshots; retain.history keys it by an identity you
choose ("master/1") and gives the base date for dump -T.

Retention: retain.plan returns keep/delete with a reason for each item, newest
first; it deletes nothing (the recipe does), and under --dry-run prints each
decision. Policies, as a table or a string "last=3 daily=7 weekly=4 monthly=12":

  last=N       keep the N newest items
  hourly=N, daily=N, weekly=N, monthly=N, yearly=N
               keep the newest item of each of the N most recent hours, days,
               ISO weeks (from Monday), months, years that have an item
               (calendar periods in local time; like restic/borg forget)
  min_age=AGE  keep every item younger than AGE ("1d", "12h", "1w", seconds)
  max_age=AGE  delete every item older than AGE unless last=N keeps it
  pattern=P    only names matching P are considered (a glob if P has * ? [,
               otherwise a prefix); every other name is kept, "not matched by
               pattern", so a plan never deletes what bkrun did not make

Rules are independent: an item is kept if any rule keeps it (all reasons are
listed) — except that max_age deletes whatever only a bucket keeps. With no
count rule, everything up to max_age is kept. HAMMER's form "1d 60d" (or
"snapshots 1d 60d") means min_age=1d, max_age=60d and one item per period in
between (daily=61 for 1d; hourly for 1h, weekly for 1w).`,
	Funcs: []runtime.Func{
		{Name: "hanoi", Sig: `retain.hanoi(time_or_date [, {cycle="monthly"}]) -> level`,
			Doc: `The dump level (0..9) for a day: time_or_date is a time (os.time()) or
"YYYY-MM-DD"; cycle is "monthly" (default), "weekly" or "monthly-weekly".`},
		{Name: "history", Sig: "retain.history(path) -> history",
			Doc: `Open a dump history file (JSON; created on the first record). Concurrent
recipes sharing one file should hold an fs.lock around record.`},
		{Name: "history:record", Sig: "history:record(id, time_or_date, level)",
			Doc: `Record a dump of level 0..9 of id (a stable identity such as "master/1",
not a device name) at the time; replaces id's earlier entry of that level.
The file is replaced atomically. Under --dry-run it is printed, not written.`},
		{Name: "history:base", Sig: "history:base(id, level) -> time | nil",
			Doc: `The time (as os.time()) of id's most recent recorded dump with a level
below level — the date to pass to dump -T; nil when there is none (level 0,
or no lower level recorded yet: take a full dump).`},
		{Name: "plan", Sig: "retain.plan(items, policy [, {now=time}]) -> {{name=, time=, keep=, reason=}, ...}",
			Doc: `Plan retention. items is a list of names, whose time is read from an embedded
ISO 8601 timestamp (snap-2026-11-20T13:00:00Z, 2026-11-20_1300, 20261120T130000Z;
local time without a zone), or of {name=, time=} tables. policy is a table or a
string (see above). The result is newest first, items without a time last
(they are kept). Reasons read "last 3", "daily 2026-11-20", "weekly 2026-W47",
"monthly 2026-10", "younger than 1d", "older than 60d", "not matched by
pattern", "no rule keeps it". now (default: the current time) is for tests.`},
	},
	Open: open,
}

const historyType = "retain.history"

func open(h *runtime.Host, L *lua.LState) *lua.LTable {
	mt := L.NewTypeMetatable(historyType)
	methods := runtime.Table(L, map[string]lua.LGFunction{
		"record": func(L *lua.LState) int { return historyRecord(h, L) },
		"base":   historyBase,
	})
	L.SetField(mt, "__index", L.NewFunction(func(L *lua.LState) int {
		hi := checkHistory(L, "retain.history")
		if k := L.CheckString(2); k == "path" {
			L.Push(lua.LString(hi.Path))
		} else {
			L.Push(methods.RawGetString(k))
		}
		return 1
	}))
	L.SetField(mt, "__tostring", L.NewFunction(func(L *lua.LState) int {
		L.Push(lua.LString(fmt.Sprintf("retain.history(%s)", checkHistory(L, "tostring").Path)))
		return 1
	}))
	return runtime.Table(L, map[string]lua.LGFunction{
		"hanoi":   hanoi,
		"history": history,
		"plan":    func(L *lua.LState) int { return plan(h, L) },
	})
}

// checkTime reads argument n as os.time() seconds or a date/timestamp
// string ("2026-11-20", "2026-11-20T13:00:00Z").
func checkTime(L *lua.LState, n int, fn string) time.Time {
	switch v := L.Get(n).(type) {
	case lua.LNumber:
		return unixTime(float64(v))
	case lua.LString:
		t, ok := ParseNameTime(string(v), time.Local)
		if !ok {
			runtime.ArgError(L, n, fn, fmt.Sprintf("invalid date %q (want YYYY-MM-DD or an ISO 8601 time)", string(v)))
		}
		return t
	default:
		runtime.TypeError(L, n, fn, "time (number) or date string")
		return time.Time{}
	}
}

func unixTime(f float64) time.Time {
	sec := int64(f)
	return time.Unix(sec, int64((f-float64(sec))*1e9))
}

func unixValue(t time.Time) lua.LNumber {
	return lua.LNumber(float64(t.UnixNano()) / 1e9)
}

func hanoi(L *lua.LState) int {
	const fn = "retain.hanoi"
	t := checkTime(L, 1, fn)
	o := runtime.OptsAt(L, 2, fn)
	c, err := ParseCycle(o.String("cycle", "monthly"))
	if err != nil {
		runtime.ArgError(L, 2, fn, "option 'cycle': "+err.Error())
	}
	o.Done(false)
	L.Push(lua.LNumber(Level(t, HanoiOptions{Cycle: c})))
	return 1
}

func history(L *lua.LState) int {
	const fn = "retain.history"
	hi := &History{Path: runtime.CheckPath(L, 1, fn)}
	if err := hi.Load(); err != nil {
		runtime.Raise(L, fn, err)
	}
	runtime.PushObject(L, hi, historyType)
	return 1
}

func checkHistory(L *lua.LState, fn string) *History {
	if ud, ok := L.Get(1).(*lua.LUserData); ok {
		if hi, ok := ud.Value.(*History); ok {
			return hi
		}
	}
	runtime.TypeError(L, 1, fn, historyType)
	return nil
}

func checkLevelArg(L *lua.LState, n int, fn string) int {
	v, ok := L.Get(n).(lua.LNumber)
	if !ok {
		runtime.TypeError(L, n, fn, "level (number)")
	}
	if float64(v) != float64(int(v)) || checkLevel(int(v)) != nil {
		runtime.ArgError(L, n, fn, fmt.Sprintf("dump level must be an integer 0..9, got %v", v))
	}
	return int(v)
}

func historyRecord(h *runtime.Host, L *lua.LState) int {
	const fn = "history:record"
	hi := checkHistory(L, fn)
	id := runtime.CheckString(L, 2, fn)
	if id == "" {
		runtime.ArgError(L, 2, fn, "empty identity")
	}
	t := checkTime(L, 3, fn)
	level := checkLevelArg(L, 4, fn)
	if h.DryRun() {
		h.DryRunf("retain: record %s level %d at %s in %s", id, level, t.Format(time.RFC3339), hi.Path)
		return 0
	}
	if err := hi.Record(id, t, level); err != nil {
		runtime.Raise(L, fn, err)
	}
	return 0
}

func historyBase(L *lua.LState) int {
	const fn = "history:base"
	hi := checkHistory(L, fn)
	id := runtime.CheckString(L, 2, fn)
	level := checkLevelArg(L, 3, fn)
	if t, ok := hi.Base(id, level); ok {
		L.Push(unixValue(t))
	} else {
		L.Push(lua.LNil)
	}
	return 1
}

func checkItems(L *lua.LState, fn string) []Item {
	tb, ok := L.Get(1).(*lua.LTable)
	if !ok {
		runtime.TypeError(L, 1, fn, "table (list of names or {name=, time=})")
	}
	n := tb.Len()
	items := make([]Item, 0, n)
	for i := 1; i <= n; i++ {
		switch v := tb.RawGetInt(i).(type) {
		case lua.LString:
			t, _ := ParseNameTime(string(v), time.Local)
			items = append(items, Item{Name: string(v), Time: t})
		case *lua.LTable:
			name, ok := v.RawGetString("name").(lua.LString)
			if !ok {
				runtime.ArgError(L, 1, fn, fmt.Sprintf("items[%d].name: string expected, got %s", i, v.RawGetString("name").Type()))
			}
			it := Item{Name: string(name)}
			switch tv := v.RawGetString("time").(type) {
			case *lua.LNilType:
				it.Time, _ = ParseNameTime(it.Name, time.Local)
			case lua.LNumber:
				it.Time = unixTime(float64(tv))
			case lua.LString:
				t, ok := ParseNameTime(string(tv), time.Local)
				if !ok {
					runtime.ArgError(L, 1, fn, fmt.Sprintf("items[%d].time: invalid time %q", i, string(tv)))
				}
				it.Time = t
			default:
				runtime.ArgError(L, 1, fn, fmt.Sprintf("items[%d].time: time (number) or string expected, got %s", i, tv.Type()))
			}
			items = append(items, it)
		default:
			runtime.ArgError(L, 1, fn, fmt.Sprintf("items[%d]: string or {name=, time=} expected, got %s", i, v.Type()))
		}
	}
	return items
}

func checkPolicy(L *lua.LState, n int, fn string) Policy {
	var p Policy
	var err error
	switch v := L.Get(n).(type) {
	case lua.LString:
		p, err = ParsePolicy(string(v))
	case *lua.LTable:
		o := runtime.OptsOf(L, v, n, fn)
		for _, k := range Keys {
			if !o.Has(k) {
				continue
			}
			var s string
			if k == "pattern" {
				s = o.String(k, "")
			} else {
				switch x := v.RawGetString(k).(type) {
				case lua.LNumber, lua.LString:
					s = x.String()
				default:
					runtime.ArgError(L, n, fn, fmt.Sprintf("option '%s': number or string expected, got %s", k, x.Type()))
				}
			}
			if err = p.Set(k, s); err != nil {
				break
			}
		}
		o.Done(false)
		if err == nil {
			err = p.Validate()
		}
	default:
		runtime.TypeError(L, n, fn, "policy (table or string)")
	}
	if err != nil {
		runtime.ArgError(L, n, fn, err.Error())
	}
	return p
}

func plan(h *runtime.Host, L *lua.LState) int {
	const fn = "retain.plan"
	items := checkItems(L, fn)
	p := checkPolicy(L, 2, fn)
	o := runtime.OptsAt(L, 3, fn)
	now := time.Now()
	if o.Has("now") {
		now = checkTimeValue(L, o.Table().RawGetString("now"), 3, fn)
	}
	o.Done(false)
	ds := Plan(items, p, now)
	out := L.CreateTable(len(ds), 0)
	for _, d := range ds {
		if h.DryRun() {
			verb := "delete"
			if d.Keep {
				verb = "keep"
			}
			h.DryRunf("retain: %s %s (%s)", verb, d.Name, d.Reason)
		}
		r := L.CreateTable(0, 4)
		r.RawSetString("name", lua.LString(d.Name))
		if !d.Time.IsZero() {
			r.RawSetString("time", unixValue(d.Time))
		}
		r.RawSetString("keep", lua.LBool(d.Keep))
		r.RawSetString("reason", lua.LString(d.Reason))
		out.Append(r)
	}
	L.Push(out)
	return 1
}

func checkTimeValue(L *lua.LState, v lua.LValue, n int, fn string) time.Time {
	switch x := v.(type) {
	case lua.LNumber:
		return unixTime(float64(x))
	case lua.LString:
		if t, ok := ParseNameTime(string(x), time.Local); ok {
			return t
		}
	}
	runtime.ArgError(L, n, fn, fmt.Sprintf("option 'now': time (number) or ISO 8601 string expected, got %s", v.Type()))
	return time.Time{}
}
