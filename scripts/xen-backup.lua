description = [[
Back up a Xen domU (seed 003): pause it, take an LVM snapshot of its disk, unpause
it — the pause window is logged and bounded by a watchdog — then dump(8) each
filesystem partition of the snapshot at the Tower-of-Hanoi level for today, streamed
through compression to DEST/DOMAIN/INDEX.MMDD.dump.lz4 (atomic, with a catalogue
entry). Partitions are read natively from the snapshot's partition table and attached
as read-only loop devices (no kpartx). The snapshot and the loop devices are removed
whatever happens; the VM never stays paused.

Dump history is kept by DOMAIN/PARTITION in --history, not by device name (a loop
device's name changes between runs): incrementals get their base date with dump -T.
Restore: bkrun recover DEST (restore(n, dir) applies the chain a dump needs), or by
hand: lz4 -dc FILE | restore -r -f - for each dump of the chain, oldest first.
]]
args = {
  { name = "domain", help = "domU name; its disk is the logical volume VG/DOMAIN" },
  { name = "vg", default = "VGatom", help = "volume group holding the domU's disk" },
  { name = "snap_size", default = "3G", help = "copy-on-write size of the snapshot" },
  { name = "dest", default = "/backup", help = "directory for the dumps, local or [user@]host:dir" },
  { name = "hypervisor", choices = { "xl", "xm", "virsh" }, required = false, help = "tool to pause the domU (default: detected)" },
  { name = "max_pause", default = "10s", help = "longest the domU may stay paused" },
  { name = "codec", choices = { "lz4", "zstd", "none" }, default = "lz4" },
  { name = "history", default = "/var/lib/bkrun/dump-history.json", help = "dump history file (levels and dates by domain/partition)" },
  { name = "overwrite", type = "boolean", help = "replace a dump already taken today" },
  { name = "level", type = "integer", required = false, help = "dump level instead of today's Hanoi level (0: a full dump)" },
  { name = "port", type = "integer", required = false, help = "ssh port of a remote DEST" },
  { name = "identity", required = false, help = "ssh private key for a remote DEST" },
  { name = "known_hosts", required = false, help = "known_hosts file for a remote DEST" },
}

local vm, lvm, part = require "vm", require "lvm", require "part"
local fs, log = require "fs", require "log"
local retain, stream, dump = require "retain", require "stream", require "dump"
local dests = require "bkrun.dest"

-- Partition types worth dumping: Linux filesystems (not swap, LVM, extended).
local DUMPABLE = { ["0x83"] = true, ["linux"] = true }

function run(a)
  if a.level and (a.level < 0 or a.level > 9) then bkrun.usage("--level must be 0 to 9") end
  local dest = dests.mkdir(a.dest .. "/" .. a.domain, a)   -- where the dumps go: DEST/DOMAIN, made here or there

  local snap
  vm.paused(a.domain, { max = a.max_pause, driver = a.hypervisor }, function()
    snap = lvm.snapshot { vg = a.vg, lv = a.domain, size = a.snap_size, name = a.domain .. "_snap" }
  end)                                   -- unpaused here; the snapshot is removed when the run ends

  if bkrun.dry_run and not fs.exists(snap.path) then
    print("(dry run: no snapshot was taken, so its partitions cannot be listed; each would be attached read-only and dumped)")
    return
  end
  local now = os.time()
  local level = a.level or retain.hanoi(now)
  fs.mkdir((a.history:gsub("/[^/]*$", "")))
  local hist = retain.history(a.history)
  for _, p in ipairs(part.list(snap.path)) do
    local id = a.domain .. "/" .. p.index
    if not (DUMPABLE[p.type] or DUMPABLE[p.type_name]) then
      log.info("skipping partition", { partition = id, type = p.type_name ~= "" and p.type_name or p.type })
    else
      local lvl, base = level, nil
      if lvl > 0 then
        base = hist:base(id, lvl)
        if not base then lvl = 0 end   -- no lower dump recorded yet: start a chain
      end
      -- The archive's own date (src.date, read from its header) is what the
      -- next incremental's -T must be: restore -r refuses any other.
      local src = dump.stream(part.attach(snap.path, p.index, { readonly = true }), { level = lvl, base = base })
      local ext = ({ lz4 = ".lz4", zstd = ".zst", none = "" })[a.codec]
      local r = stream.copy {
        from = src, to = dest:path(("%d.%s.dump%s"):format(p.index, os.date("%m%d", now), ext)),
        codec = a.codec, overwrite = a.overwrite, ssh = dest.conn,
        verify = not dest.host,        -- a local dump is decoded and hash-checked before the rename
        meta = { domain = a.domain, partition = p.index, level = lvl, base = base or 0 },
      }
      if not r.dry_run then
        hist:record(id, src.date, lvl)
        print(("%s: level %d, %s"):format(id, lvl, stream.summary(r)))
      end
    end
  end
end
