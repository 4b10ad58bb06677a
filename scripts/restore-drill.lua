description = [[
Restore drill: prove that the newest backup of every source in a backup directory can
be restored, without restoring it. For each source, the newest backup is decoded and
checked against its catalogue entry (a dump with its whole chain: the level 0 and the
incrementals it needs, each also read by restore -t). With --look, the names inside are
listed too: an image is mounted read-only from a sparse scratch copy (the only Linux
partition, or the one given with --partition) and walked, then unmounted and detached.

Prints one line per source and exits 1 if any of them cannot be restored — run it from
cron once a week: a backup that was never restored is a hope, not a backup.
]]
args = {
  { name = "dir", help = "backup directory, e.g. /backup" },
  { name = "source", required = false, help = "only sources whose name contains this text" },
  { name = "look", type = "boolean", help = "also list the names inside each newest backup (mounts images read-only)" },
  { name = "partition", type = "integer", required = false, help = "partition of disk images to look into (default: the only Linux one)" },
  { name = "scratch", required = false, help = "directory for decoded scratch images (default $TMPDIR)" },
}

local catalog, recover = require "catalog", require "recover"

-- check verifies b (and the chain it needs) and, with look, counts its names.
local function check(cat, b, a)
  local chain = cat:chain(b)
  for _, p in ipairs(chain) do recover.verify(p, { catalog = cat }) end
  local what = #chain > 1 and ("chain of %d verified"):format(#chain) or "verified"
  if a.look then
    local names = recover.files(b, { catalog = cat, partition = a.partition, scratch = a.scratch })
    what = what .. (", %d names inside"):format(#names)
  end
  return what
end

function run(a)
  local cat = catalog.scan(a.dir)
  local failed, checked = 0, 0
  for _, s in ipairs(cat:sources()) do
    if not a.source or s.source:find(a.source, 1, true) then
      local b = s.backups[1]
      checked = checked + 1
      local ok, what = pcall(check, cat, b, a)
      if not ok then failed = failed + 1 end
      print(("%-4s %-24s %s  %s: %s"):format(ok and "ok" or "FAIL", s.source, b.date, b.path, tostring(what)))
    end
  end
  for _, p in ipairs(cat:problems()) do print(("note %s: %s"):format(p.path, p.reason)) end
  if checked == 0 then error(("no backups%s in %s"):format(a.source and (" of " .. a.source) or "", a.dir), 0) end
  if failed > 0 then error(("%d of %d source(s) cannot be restored from their newest backup"):format(failed, checked), 0) end
  print(("%d source(s): newest backups restorable"):format(checked))
end
