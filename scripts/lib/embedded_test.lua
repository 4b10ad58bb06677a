-- Tests of the libraries built into bkrun (bkrun/*.lua, require "bkrun.NAME").
local fs = require "fs"
local dest, snapshots = require "bkrun.dest", require "bkrun.snapshots"

function TestDestSplit(t)
  local cases = {
    { "backup@daisy:/backup", "backup@daisy", "/backup" },
    { "daisy:backup/x", "daisy", "backup/x" },
    { "/backup", nil, "/backup" },
    { "./odd:name", nil, "./odd:name" },
    { "/srv/a:b", nil, "/srv/a:b" },
  }
  for _, c in ipairs(cases) do
    local host, dir = dest.split(c[1])
    t:eq(host, c[2], c[1] .. " host")
    t:eq(dir, c[3], c[1] .. " dir")
  end
  t:eq(dest.ssh_options { port = 2222, identity = "/k", other = 1 }, { port = 2222, identity = "/k" })
end

function TestDestMkdirLocal(t)
  local d = dest.mkdir(t:tempdir() .. "/backup/master", {})
  t:ok(fs.exists(d.dir), "directory created")
  t:eq(d.host, nil)
  t:eq(d.conn, nil)
  t:eq(d:path("1.dump"), d.dir .. "/1.dump")
  local remote = setmetatable({ host = "u@h", dir = "/b" }, getmetatable(d))
  t:eq(remote:path("1.dump"), "u@h:/b/1.dump")
end

function TestSnapshotsStamp(t)
  t:eq(snapshots.stamp(0), "1970-01-01T00:00:00Z")
  t:ok(snapshots.stamp():match(snapshots.STAMP), "now matches STAMP")
  t:ok(not ("cur"):match(snapshots.STAMP), "cur is not a snapshot")
end

function TestSnapshotsList(t)
  local got = snapshots.list({ "cur", "2026-11-22T03:00:00Z", "2026-11-22T03:00:00Z.json", "2026-11-21T03:00:00Z", ".lock" })
  t:eq(got, { "2026-11-21T03:00:00Z", "2026-11-22T03:00:00Z" })
end

function TestSnapshotsPrune(t)
  local names = { "cur", ".lock", "2026-11-20T03:00:00Z", "2026-11-21T03:00:00Z", "2026-11-22T03:00:00Z" }
  local deleted = {}
  local pruned = snapshots.prune(names, "last=2", function(n) deleted[#deleted + 1] = n end)
  t:eq(deleted, { "2026-11-20T03:00:00Z" })
  t:eq(pruned, deleted)
end

function TestSnapshotsPrunePrefixProtect(t)
  local names = { "bkrun-2026-11-20T03:00:00Z", "bkrun-2026-11-21T03:00:00Z", "bkrun-2026-11-22T03:00:00Z", "manual" }
  local deleted = {}
  snapshots.prune(names, "last=1", function(n) deleted[#deleted + 1] = n end,
    { prefix = "bkrun-", protect = "bkrun-2026-11-21T03:00:00Z", label = "tank/vm@" })
  t:eq(deleted, { "bkrun-2026-11-20T03:00:00Z" })
end

function TestReservedPrefix(t)
  t:raises(function() require "bkrun.nosuch" end, "reserved for the libraries built into bkrun")
end
