-- bkrun.snapshots: snapshots named by the time they were taken, and their
-- pruning with a retention policy (retain.plan).
--
--   local snapshots = require "bkrun.snapshots"
--   local name = snapshots.stamp()                 --> "2026-11-22T03:00:00Z" (UTC)
--   snapshots.prune(fs.list(dir), "last=7 daily=14", function(n) btrfs.delete(dir .. "/" .. n) end)
local M = {}

-- The Lua pattern of a name made by snapshots.stamp().
M.STAMP = "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$"

-- snapshots.stamp([t]) -> the UTC time t (default now) as 2026-11-22T03:00:00Z.
function M.stamp(t)
  if t == nil then return os.date("!%Y-%m-%dT%H:%M:%SZ") end
  return os.date("!%Y-%m-%dT%H:%M:%SZ", t)
end

-- snapshots.list(names) -> the names that are stamps, oldest first.
function M.list(names)
  local out = {}
  for _, n in ipairs(names) do
    if n:match(M.STAMP) then out[#out + 1] = n end
  end
  table.sort(out)
  return out
end

-- snapshots.prune(names, keep, delete [, opts]) -> the pruned names.
-- Of names, those that are snapshots (exactly a stamp, or with opts.prefix:
-- starting with it and not ending in ".json") are planned with
-- retain.plan(_, keep); delete(name) is called for each one the policy
-- does not keep, except opts.protect, and "pruned LABELNAME (reason)" is
-- printed (opts.label: a prefix such as "tank/vm@"). Other names are left
-- alone, catalogue entries (NAME.json) included: delete is expected to
-- remove a snapshot's entry with it (btrfs-snapsync.lua does).
function M.prune(names, keep, delete, opts)
  opts = opts or {}
  local mine = {}
  for _, n in ipairs(names) do
    local ok
    if opts.prefix then ok = n:sub(1, #opts.prefix) == opts.prefix and not n:match("%.json$") else ok = n:match(M.STAMP) end
    if ok then mine[#mine + 1] = n end
  end
  local pruned = {}
  for _, d in ipairs(require("retain").plan(mine, keep)) do
    if not d.keep and d.name ~= opts.protect then
      delete(d.name)
      print(("pruned %s%s (%s)"):format(opts.label or "", d.name, d.reason))
      pruned[#pruned + 1] = d.name
    end
  end
  return pruned
end

return M
