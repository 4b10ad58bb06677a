description = [[
Restore a disk image written by disk-image.lua onto a file or a block device.

The backup is decoded and checked against its catalogue entry BACKUP.json (size and
BLAKE3 tree hash). A file TARGET is written under a temporary name, sparse (holes for
zero blocks), and renamed only after the hash matches, so it is never left
half-written; an existing file is replaced only with --overwrite. A block device is
written in place and synced: check the device name twice.
]]
args = {
  { name = "backup", help = "the backup file, e.g. /backup/sda.img.lz4" },
  { name = "target", required = false, positional = true, help = "file or block device to restore onto" },
  { name = "overwrite", type = "boolean", help = "replace an existing target file" },
  { name = "verify_only", type = "boolean", help = "only check the backup against its catalogue entry" },
}

local stream = require "stream"

function run(a)
  if a.verify_only then
    print(stream.summary(stream.verify(a.backup)) .. ": OK")
    return
  end
  if not a.target then bkrun.usage("missing argument TARGET (or give --verify-only)") end
  local r = stream.restore { from = a.backup, to = a.target, overwrite = a.overwrite }
  if r.dry_run then return end
  print(stream.summary(r))
  print(("verified: hash %s matches %s.json"):format(r.hash, a.backup))
end
