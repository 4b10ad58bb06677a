description = [[
Get data back from any backup bkrun wrote, from the shell or cron (bkrun recover DIR is
the interactive way to do the same).

BACKUP is a backup file (or snapshot directory) with its catalogue entry next to it:
  - a dump (xen-backup.lua) is restored with its whole chain — the level 0 and the
    incrementals leading to it, each verified first, applied oldest first with
    restore -r — into the directory TARGET (created; an existing one must be empty);
  - an image (disk-image.lua) is decoded onto the file or block device TARGET
    (verified; a file appears only once its hash matched);
  - a btrfs snapshot (btrfs-snapsync.lua, btr-backup.lua) becomes a writable snapshot
    at TARGET on the same filesystem: the rollback.
With --path (repeatable) only those files or directories are copied into TARGET,
keeping their place in the tree: from the newest dump of the chain holding each, or
from the image mounted read-only. With --list the names in the backup are printed and
TARGET is not needed. A missing level of a chain, a corrupt backup or a name that is not
in the backup is refused before anything is written.
]]
args = {
  { name = "backup", help = "the backup, e.g. /backup/master/1.1105.dump.lz4" },
  { name = "target", required = false, positional = true, help = "where to restore (a directory, file, device or new snapshot path)" },
  { name = "path", type = "list", help = "restore only this name (relative to the filesystem's root); repeatable" },
  { name = "list", type = "boolean", help = "print the names in the backup instead of restoring" },
  { name = "partition", type = "integer", required = false, help = "partition of a disk image to read names from (default: the only Linux one)" },
  { name = "overwrite", type = "boolean", help = "replace an existing target file (images)" },
}

local recover = require "recover"

function run(a)
  local opts = { partition = a.partition }
  if a.list then
    for _, name in ipairs(recover.files(a.backup, opts)) do print(name) end
    return
  end
  if not a.target then bkrun.usage("missing argument TARGET (or give --list)") end
  if #a.path > 0 then
    for _, p in ipairs(recover.extract(a.backup, a.path, a.target, opts)) do print(p) end
    return
  end
  local r = recover.restore(a.backup, a.target, { overwrite = a.overwrite })
  for i, p in ipairs(r.applied or {}) do print(("applied %d/%d: %s"):format(i, #r.applied, p)) end
  print(("restored %s to %s"):format(a.backup, r.path or a.target))
end
