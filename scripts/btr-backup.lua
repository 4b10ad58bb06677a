description = [[
Snapshot backups on btrfs (seed 000): rsync SOURCE into the subvolume
BASE/<host>/<path>/cur (created if missing), then keep a read-only snapshot of it
named by the time (BASE/<host>/<path>/2026-11-22T03:00:00Z) with its catalogue entry
(2026-11-22T03:00:00Z.json, for bkrun recover), and prune old snapshots with a
retention policy. Unchanged files share their blocks between snapshots, so each
snapshot costs only what changed: pdumpfs or rsync --link-dest, done by the filesystem.

SOURCE is a local directory, or host:dir to pull from another host over ssh (rsync's
own transport). rsync's exit status 24 (files vanished while copying) is accepted and
logged; any other failure stops the run before the snapshot, so a snapshot is always
of a complete copy.
]]
args = {
  { name = "source", help = "directory to back up, or host:dir" },
  { name = "base", help = "directory on a btrfs filesystem holding the backups, e.g. /backup" },
  { name = "keep", default = "last=7 daily=14 weekly=8 monthly=12", help = "retention policy (retain.plan)" },
  { name = "rsync_opt", type = "list", help = "extra rsync option, e.g. --exclude=/proc" },
}

local exec, fs, log = require "exec", require "fs", require "log"
local btrfs, catalog = require "btrfs", require "catalog"
local snapshots = require "bkrun.snapshots"

local function where(source)
  local host, dir = source:match("^([%w%.%-]+):(.+)$")
  if not host then host, dir = exec.output({"hostname"}, {safe = true}), source end
  local name = dir:gsub("/+$", ""):gsub("^/+", ""):gsub("/", "_")
  return host, (name == "" and "root" or name)
end

function run(a)
  local host, name = where(a.source)
  local dest = ("%s/%s/%s"):format(a.base, host, name)
  fs.mkdir(dest)
  local lock = fs.lock(dest .. "/.lock")
  local cur = dest .. "/cur"
  if not btrfs.is_subvolume(cur) then btrfs.create(cur) end

  local argv = {"rsync", "-aHAX", "--delete", "--numeric-ids"}
  for _, o in ipairs(a.rsync_opt) do argv[#argv + 1] = o end
  argv[#argv + 1] = a.source:gsub("/*$", "/")
  argv[#argv + 1] = cur .. "/"
  local r = exec.run(argv, {check = false})
  if r.status == 24 then
    log.warn("rsync: some files vanished while copying", {source = a.source})
  elseif not r.ok then
    error(("rsync exited %d: the copy in %s is incomplete; no snapshot taken"):format(r.status, cur), 0)
  end

  local stamp = snapshots.stamp()
  local snap = dest .. "/" .. stamp
  local previous = snapshots.list(fs.exists(dest) and fs.list(dest) or {})
  btrfs.snapshot(cur, snap, {readonly = true})
  -- The catalogue entry (SNAP.json): bkrun recover and catalog.lua list it.
  catalog.record(snap, {source = a.source, started = stamp, parent = previous[#previous]})
  print("snapshot " .. snap)

  if bkrun.dry_run and not fs.exists(dest) then return end
  snapshots.prune(fs.list(dest), a.keep, function(n)
    if fs.exists(dest .. "/" .. n .. ".json") then fs.remove(dest .. "/" .. n .. ".json") end
    btrfs.delete(dest .. "/" .. n)
  end)
  lock:release()
end
