description = [[
Mirror a btrfs subvolume to another btrfs filesystem with send/receive (seed 004).

Takes a read-only snapshot SNAPDIR/snapshot-new of SUBVOL and sends it to DEST —
incrementally against SNAPDIR/snapshot-old when that exists — where it is received
and renamed by time (DEST/2026-11-22T03:00:00Z). On success snapshot-old is deleted
and snapshot-new becomes snapshot-old, the parent of the next run; on any failure
snapshot-new is deleted and snapshot-old kept, so the next run retries from the same
parent. Snapshots at DEST are pruned with --keep.

Each snapshot received gets its catalogue entry next to it (DEST/STAMP.json,
catalog.record: source host:path, times, the parent snapshot of an incremental
send, the subvolume's UUIDs), so that catalog.scan and "bkrun recover DEST"
list the mirror and recover.restore rolls a subvolume back; pruning deletes
the entry first, then the snapshot.

DEST is a directory on a local btrfs filesystem, or [user@]host:dir: bkrun connects
over SSH itself and runs "btrfs receive dir" there with the stream on its stdin. With
--via receive the other host runs "bkrun receive --root ROOT" as a forced command
instead (docs/RECEIVE.md): dir is then relative to ROOT, the stream is stored, its size
and hash checked, and only then applied; the entry is uploaded through the receiver
too (without the parent's name and the UUIDs, which that key cannot look up); that key
can do nothing else, so pruning at the destination is left to the destination (a
recipe run there).
]]
args = {
  { name = "subvol", help = "the subvolume to mirror, e.g. /home/foo/share" },
  { name = "snapdir", help = "where snapshot-new/-old live (on SUBVOL's filesystem)" },
  { name = "dest", help = "btrfs directory receiving the snapshots, local or [user@]host:dir" },
  { name = "keep", default = "last=30 daily=14 monthly=12", help = "retention of the snapshots at DEST" },
  { name = "port", type = "integer", required = false, help = "ssh port of a remote DEST" },
  { name = "identity", required = false, help = "ssh private key for a remote DEST" },
  { name = "known_hosts", required = false, help = "known_hosts file for a remote DEST" },
  { name = "via", choices = { "ssh", "receive" }, default = "ssh", help = "remote DEST: run btrfs receive over ssh, or send to bkrun receive" },
}

local btrfs, catalog, exec, fs, log = require "btrfs", require "catalog", require "exec", require "fs", require "log"
local dests, snapshots = require "bkrun.dest", require "bkrun.snapshots"

-- A place to receive into: the local filesystem, or a host reached over SSH.
-- record(name, entry) writes the catalogue entry of DEST/name; delete(name)
-- removes that entry first, then the snapshot (a snapshot left without its
-- entry is retried by the next prune; an entry left alone would stay).
local function local_dest(dir)
  return {
    receive = function(src) return btrfs.receive(dir, src) end,
    rename = function(from, to) fs.rename(from, dir .. "/" .. to) end,
    list = function() return fs.list(dir) end,
    record = function(name, e) catalog.record(dir .. "/" .. name, e) end,
    delete = function(name)
      if fs.exists(dir .. "/" .. name .. ".json") then fs.remove(dir .. "/" .. name .. ".json") end
      btrfs.delete(dir .. "/" .. name)
    end,
  }
end

-- Through "bkrun receive" (a forced command): receive and name in one step.
local function receiver_dest(host, dir, a)
  local c = dests.connect(host, a)
  local pending
  return {
    receive = function(src) pending = src return "" end,
    rename = function(_, to) c:btrfs_receive(dir .. "/" .. to, pending) end,
    list = function() return {} end,
    record = function(name, e)
      e.ssh, e.receiver, e.parent = c, true, nil
      catalog.record(dir .. "/" .. name, e)
    end,
    delete = function() end,
  }
end

local function remote_dest(host, dir, a)
  local c = dests.connect(host, a)
  local function sh(argv, opts) return c:exec(exec.quote(argv), opts) end
  return {
    receive = function(src)
      local r = sh({"btrfs", "receive", dir}, {stdin = src})
      local name = (r.stdout .. "\n" .. r.stderr):match("At %a+ (%S+)")
      if not name then error("btrfs receive on " .. host .. " named no subvolume", 0) end
      return dir .. "/" .. name
    end,
    rename = function(from, to) sh{"mv", "-T", from, dir .. "/" .. to} end,
    list = function()
      local names = {}
      for n in c:output(exec.quote{"ls", "-1", dir}, {safe = true}):gmatch("[^\n]+") do names[#names + 1] = n end
      return names
    end,
    record = function(name, e)
      e.ssh = c
      catalog.record(dir .. "/" .. name, e)
    end,
    delete = function(name)
      sh{"rm", "-f", "--", dir .. "/" .. name .. ".json"}
      sh{"btrfs", "subvolume", "delete", dir .. "/" .. name}
    end,
  }
end

function run(a)
  local host, dir = dests.split(a.dest)
  local dest = local_dest(a.dest)
  if host then dest = (a.via == "receive" and receiver_dest or remote_dest)(host, dir, a) end
  local new, old = a.snapdir .. "/snapshot-new", a.snapdir .. "/snapshot-old"
  local lock = fs.lock(a.snapdir .. "/.snapsync.lock")
  if btrfs.is_subvolume(new) then
    log.warn("removing snapshot-new left by an interrupted run", {path = new})
    btrfs.delete(new)
  end
  btrfs.snapshot(a.subvol, new, {readonly = true})
  local parent = btrfs.is_subvolume(old) and old or nil

  -- The parent's name at DEST: the newest snapshot there, which the last
  -- successful run received from what is now snapshot-old.
  local before = parent and snapshots.list(dest.list()) or {}
  local stamp
  local ok, err = pcall(function()
    stamp = snapshots.stamp()
    local got = dest.receive(btrfs.send(new, {parent = parent}))
    dest.rename(got, stamp)
    print(("sent %s as %s (%s)"):format(new, stamp, parent and "incremental" or "full"))
  end)
  if not ok then
    btrfs.delete(new)
    error(err, 0)
  end
  if parent then btrfs.delete(old) end
  fs.rename(new, old)
  -- After the rotation: a failure here fails the run but leaves the mirror
  -- consistent (the snapshot is there, listed as unknown without its entry).
  dest.record(stamp, {source = a.subvol, started = stamp, parent = before[#before]})

  snapshots.prune(dest.list(), a.keep, dest.delete)
  lock:release()
end
