description = [[
Replicate a ZFS dataset with snapshots and incremental sends, and keep snapshots by
age on both sides — what seed 001 did with HAMMER's mirror-copy and "snapshots 1d 60d".

Each run takes DATASET@bkrun-<time>, sends it to TARGET — incrementally from the newest
snapshot both sides have, in full the first time — and receives it there (zfs receive -F:
TARGET is a replica, not to be written to). Then snapshots named bkrun-* are pruned on
both sides with --keep (retain.plan; "1d 60d" keeps everything younger than a day, then
one a day up to 60 days). The newest common snapshot is never pruned from the source:
it is the base of the next incremental send.
]]
args = {
  { name = "dataset", help = "dataset to replicate, e.g. tank/vm" },
  { name = "target", help = "dataset receiving the replica, e.g. backup/vm" },
  { name = "keep", default = "1d 60d", help = "retention of bkrun-* snapshots on both sides" },
}

local zfs = require "zfs"
local snapshots = require "bkrun.snapshots"

local PREFIX = "bkrun-"

-- The snapshot names (after @) of a dataset, oldest first.
local function names(dataset)
  local out = {}
  for _, s in ipairs(zfs.list(dataset)) do out[#out + 1] = s.name:match("@(.+)$") end
  return out
end

local function prune(dataset, keep, protect)
  snapshots.prune(names(dataset), keep, function(n) zfs.destroy(dataset .. "@" .. n) end,
    { prefix = PREFIX, protect = protect, label = dataset .. "@" })
end

function run(a)
  local stamp = PREFIX .. snapshots.stamp()
  local have = {}
  for _, n in ipairs(names(a.target)) do have[n] = true end
  local base
  for _, n in ipairs(names(a.dataset)) do
    if have[n] then base = a.dataset .. "@" .. n end
  end
  local snap = a.dataset .. "@" .. stamp
  zfs.snapshot(snap)
  local ok, err = pcall(function()
    zfs.receive(a.target, zfs.send(snap, { base = base }), { force = true })
  end)
  if not ok then
    -- The new snapshot is not on the target: drop it, so the next run's
    -- base stays the last one both sides have.
    zfs.destroy(snap)
    error(err, 0)
  end
  print(("sent %s to %s (%s)"):format(snap, a.target, base and ("incremental from " .. base) or "full"))
  prune(a.dataset, a.keep, stamp)
  prune(a.target, a.keep, stamp)
end
