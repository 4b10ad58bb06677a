description = [[
Whole-disk image backup (seed 002: dd if=/dev/sda iflag=direct bs=1M | lzop -1 | ftp put).

Reads SOURCE (a block device or an image file) with O_DIRECT and several reads in
flight, compresses it on all cores, and writes DEST with a catalogue entry DEST.json
(size, codec, BLAKE3 tree hash, byte counts, times). Zeroed space costs neither
compression nor hashing, so zero-fill free space in the guest first (as the seed did)
for a small image. DEST appears only when complete; an existing DEST is kept unless
--overwrite. Restore with disk-restore.lua, or without bkrun: lz4 -d DEST > disk.img

DEST may be on another host, [user@]host:/path (the seed's ftp put): the image is
streamed read -> compress -> encrypt -> send over SSH, with no temporary file on either
side but the remote .NAME.partial-XXXX, which is renamed into place with its catalogue
entry once the server has all of it. The server needs only OpenSSH (SFTP); with
--via receive it runs `bkrun receive --root DIR` as a forced command instead, DEST's
path is relative to DIR, and the receiver checks size and hash before the rename
(docs/RECEIVE.md).

SOURCE may also be on another host, [user@]host:/path to an image file (a VM's disk
image on its hypervisor): it is read over SFTP and compressed here (a pull backup, run
from the backup server). --port, --identity and --known-hosts apply to both hosts.
]]
args = {
  { name = "source", help = "block device or image file, e.g. /dev/sda, or [user@]host:/path of an image file" },
  { name = "dest", help = "backup file to write, e.g. /backup/sda.img.lz4" },
  { name = "codec", choices = { "lz4", "zstd", "none" }, default = "lz4", help = "compression" },
  { name = "offset", type = "integer", default = 0, help = "start of the byte range to read" },
  { name = "length", type = "integer", default = 0, help = "length of the range (0: to the end)" },
  { name = "overwrite", type = "boolean", help = "replace an existing DEST (only once the new one is complete)" },
  { name = "verify", type = "boolean", help = "decode the written file and check its hash before renaming it into place" },
  { name = "port", type = "integer", required = false, help = "ssh port of a remote SOURCE or DEST" },
  { name = "identity", required = false, help = "ssh private key for a remote SOURCE or DEST" },
  { name = "known_hosts", required = false, help = "known_hosts file for a remote SOURCE or DEST" },
  { name = "via", choices = { "sftp", "receive" }, default = "sftp", help = "how a remote DEST is written" },
}

local disk, stream = require "disk", require "stream"
local dests = require "bkrun.dest"

function run(a)
  local src_host, src_path = dests.split(a.source)
  local dst_host, dst_path = dests.split(a.dest)
  if src_host and (a.offset ~= 0 or a.length ~= 0) then
    bkrun.usage("--offset and --length need a local SOURCE")
  end
  -- One connection per host, shared when SOURCE and DEST are on the same one.
  local conns = {}
  local function conn(host)
    conns[host] = conns[host] or dests.connect(host, a)
    return conns[host]
  end

  local src
  if src_host then
    src = conn(src_host):open(src_path)   -- pull: a remote image read over SFTP
  else
    src = disk.open(a.source, { offset = a.offset, length = a.length })
  end
  local to = a.dest
  if dst_host and a.via == "sftp" then
    to = conn(dst_host):create(dst_path, { overwrite = a.overwrite })
  end
  local r = stream.copy {
    from = src, to = to, codec = a.codec,
    overwrite = a.overwrite, verify = a.verify,
    ssh = dst_host and conn(dst_host) or nil,
    via = a.via,
  }
  if r.dry_run then return end
  print(stream.summary(r))
  print(("hash %s (%s), catalogue %s"):format(r.hash, "blake3-tree-1MiB", r.catalogue))
end
