-- Lua-level tests of the retain module, run by lua_test.go through luatest.
local retain = require "retain"

function TestHanoiMonth(t)
  local got = {}
  for d = 1, 31 do
    got[#got + 1] = retain.hanoi(("2026-01-%02d"):format(d))
  end
  t:eq(got, {0, 3, 2, 5, 4, 7, 6, 9, 8, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9})
  t:eq(retain.hanoi("2026-02-01"), 0)
  t:eq(retain.hanoi("2026-03-09", {cycle = "monthly"}), 8)
end

function TestHanoiWeeklyAndTime(t)
  -- 2026-01-05 is a Monday.
  t:eq(retain.hanoi("2026-01-05", {cycle = "weekly"}), 0)
  t:eq(retain.hanoi("2026-01-06", {cycle = "weekly"}), 3)
  t:eq(retain.hanoi("2026-01-11", {cycle = "weekly"}), 6)
  t:eq(retain.hanoi("2026-01-12", {cycle = "monthly-weekly"}), 1)
  t:eq(retain.hanoi("2026-01-13", {cycle = "monthly-weekly"}), 3)
  -- os.time() numbers: noon, so any local zone gives the same day.
  t:eq(retain.hanoi(os.time{year = 2026, month = 1, day = 3, hour = 12}), 2)
  t:eq(retain.hanoi(os.time()), retain.hanoi(os.date("%Y-%m-%d")))
end

function TestHistory(t)
  local path = t:tempdir() .. "/dumps.json"
  local h = retain.history(path)
  t:eq(h.path, path)
  t:eq(h:base("master/1", 3), nil)
  h:record("master/1", "2026-01-01", 0)
  h:record("master/1", "2026-01-03", 2)
  local t0 = os.time{year = 2026, month = 1, day = 2, hour = 12}
  h:record("master/1", t0, 3)
  t:eq(h:base("master/1", 0), nil)
  t:eq(h:base("master/1", 3), h:base("master/1", 1) + 2 * 86400)
  t:eq(h:base("master/1", 9), t0 + 86400 / 2) -- 2026-01-03 00:00 local
  t:eq(h:base("master/2", 9), nil)
  -- A second handle reads the file.
  t:eq(retain.history(path):base("master/1", 4), h:base("master/1", 4))
  t:ok(tostring(h):find("retain.history", 1, true), tostring(h))
end

local now = "2026-11-20T12:00:00Z"

function TestPlan(t)
  local items = {
    "snap-2026-11-20T11:00:00Z",
    "snap-2026-11-20T10:00:00Z",
    "snap-2026-11-19T23:00:00Z",
    "snap-2026-11-19T22:00:00Z",
    "snap-2026-10-01T00:00:00Z",
    "mine-2020-01-01",
    {name = "snap-given", time = os.time{year = 2026, month = 11, day = 18, hour = 12}},
  }
  local plan = retain.plan(items, "last=1 daily=2 pattern=snap-", {now = now})
  local got = {}
  for _, d in ipairs(plan) do
    got[#got + 1] = ("%s %s %s"):format(d.keep and "keep" or "delete", d.name, d.reason)
  end
  t:eq(got, {
    "keep snap-2026-11-20T11:00:00Z last 1, daily 2026-11-20",
    "delete snap-2026-11-20T10:00:00Z no rule keeps it",
    "keep snap-2026-11-19T23:00:00Z daily 2026-11-19",
    "delete snap-2026-11-19T22:00:00Z no rule keeps it",
    "delete snap-given no rule keeps it",
    "delete snap-2026-10-01T00:00:00Z no rule keeps it",
    "keep mine-2020-01-01 not matched by pattern",
  })
  t:ok(type(plan[1].time) == "number", "time is a number")
end

function TestPlanTablePolicyAndHammer(t)
  local items = {"snap-2026-11-20T06:00:00Z", "snap-2026-11-18T06:00:00Z", "snap-2026-09-01T06:00:00Z"}
  local p = retain.plan(items, {min_age = "1d", max_age = 30 * 86400}, {now = now})
  t:eq(p[1].reason, "younger than 1d")
  t:eq(p[2].reason, "within 30d")
  t:eq(p[3].keep, false)
  t:eq(p[3].reason, "older than 30d")
  p = retain.plan(items, "1d 60d", {now = now})
  t:eq(p[2].reason, "daily 2026-11-18")
  t:eq(p[3].reason, "older than 60d")
end

function TestBadArguments(t)
  t:raises(function() retain.hanoi() end, "bad argument #1 to 'retain.hanoi' (time (number) or date string expected, got no value)")
  t:raises(function() retain.hanoi({}) end, "time (number) or date string expected, got table")
  t:raises(function() retain.hanoi("yesterday") end, "invalid date \"yesterday\"")
  t:raises(function() retain.hanoi("2026-01-01", {cycle = "daily"}) end, "unknown cycle \"daily\"")
  t:raises(function() retain.hanoi("2026-01-01", {cylce = "weekly"}) end, "unknown option 'cylce'")
  t:raises(function() retain.hanoi("2026-01-01", "weekly") end, "bad argument #2 to 'retain.hanoi' (table expected, got string)")
  t:raises(function() retain.history(42) end, "bad argument #1 to 'retain.history' (string expected, got number)")
  t:raises(function() retain.history("") end, "empty path")
  local h = retain.history(t:tempdir() .. "/h.json")
  t:raises(function() h:record("x", "2026-01-01", 10) end, "dump level must be an integer 0..9, got 10")
  t:raises(function() h:record("x", "2026-01-01", 1.5) end, "dump level must be an integer 0..9")
  t:raises(function() h:record("x", "2026-01-01") end, "bad argument #4 to 'history:record' (level (number) expected, got no value)")
  t:raises(function() h:record(nil, "2026-01-01", 1) end, "bad argument #2 to 'history:record' (string expected, got nil)")
  t:raises(function() h:record("", "2026-01-01", 1) end, "empty identity")
  t:raises(function() h.base({}, "x", 1) end, "retain.history expected, got table")
  t:raises(function() retain.plan("snap", "last=1") end, "bad argument #1 to 'retain.plan' (table (list of names or {name=, time=}) expected, got string)")
  t:raises(function() retain.plan({1}, "last=1") end, "items[1]: string or {name=, time=} expected, got number")
  t:raises(function() retain.plan({{time = 1}}, "last=1") end, "items[1].name: string expected, got nil")
  t:raises(function() retain.plan({{name = "a", time = "soon"}}, "last=1") end, "items[1].time: invalid time \"soon\"")
  t:raises(function() retain.plan({}) end, "bad argument #2 to 'retain.plan' (policy (table or string) expected, got no value)")
  t:raises(function() retain.plan({}, "dialy=3") end, "unknown key \"dialy\"")
  t:raises(function() retain.plan({}, {dialy = 3}) end, "unknown option 'dialy'")
  t:raises(function() retain.plan({}, {daily = true}) end, "option 'daily': number or string expected, got boolean")
  t:raises(function() retain.plan({}, {daily = -1}) end, "want a count >= 0")
  t:raises(function() retain.plan({}, {pattern = "snap-"}) end, "no rule")
  t:raises(function() retain.plan({}, "last=1", {now = {}}) end, "option 'now'")
end
