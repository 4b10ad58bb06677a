description = [[
The bkrun demo: whole-disk image backups of a generated filesystem image, without
root or network.

It builds a small ext4 image from a generated directory tree (mkfs.ext4 -d; a raw
image if mkfs.ext4 is missing), then takes RUNS image backups of it under a lock,
each compressed with lz4 on all cores and described by a catalogue entry, keeps the
newest KEEP, verifies the newest and restores it, checking the hash. Everything
lives in a temporary directory that the clean-up stack removes on exit, unless DEST
is given.
]]
args = {
  { name = "dest", required = false, help = "directory for the backups (default: a temp dir)" },
  { name = "runs", type = "integer", default = 3, help = "how many backups to take" },
  { name = "keep", type = "integer", default = 2, help = "backups to keep" },
}

local exec, fs, log = require "exec", require "fs", require "log"
local stream = require "stream"

-- A small tree: config files, a log, 2 MiB of random data (incompressible).
local function generate(dir)
  fs.mkdir(dir .. "/etc/app")
  fs.write(dir .. "/etc/app/app.conf", "listen = 127.0.0.1:8080\nworkers = 4\n")
  fs.write(dir .. "/etc/hostname", "daisy\n")
  fs.write(dir .. "/var.log", string.rep("GET /index.html 200 1042\n", 20000))
  exec.run{"dd", "if=/dev/urandom", "of=" .. dir .. "/blob", "bs=1M", "count=2", "status=none"}
  return dir
end

local function make_image(src, img)
  if exec.lookpath("mkfs.ext4") then
    exec.run{"mkfs.ext4", "-q", "-F", "-d", src, img, "32M", capture = true}
  else
    exec.run{"dd", "if=/dev/zero", "of=" .. img, "bs=1M", "count=32", "status=none"}
    exec.run{"dd", "if=" .. src .. "/blob", "of=" .. img, "conv=notrunc", "status=none"}
  end
  return img
end

-- Keep the newest `keep` backups (names sort by time), with their catalogue entries.
local function prune(dest, keep)
  local images = fs.glob(dest .. "/disk-*.img.lz4")
  for i = 1, #images - keep do
    fs.remove(images[i])
    fs.remove(images[i] .. ".json")
    log.info("pruned", {image = images[i]})
  end
end

function run(a)
  local work = fs.tempdir("bkrun-demo-")        -- removed by the clean-up stack
  local img = make_image(generate(work .. "/source"), work .. "/disk.img")
  local dest = a.dest or work .. "/backup"
  fs.mkdir(dest)
  local lock = fs.lock(dest .. "/.lock")        -- a second demo on DEST fails: "locked by pid N"
  local newest
  for n = 1, a.runs do
    newest = ("%s/disk-%s-%02d.img.lz4"):format(dest, os.date("!%Y%m%dT%H%M%S"), n)
    local r = stream.copy { from = img, to = newest, codec = "lz4" }
    if not r.dry_run then print("backup:  " .. stream.summary(r)) end
    prune(dest, a.keep)
  end
  lock:release()
  if bkrun.dry_run then return end

  print("verify:  " .. stream.summary(stream.verify(newest)))
  local r = stream.restore { from = newest, to = work .. "/restored.img" }
  print("restore: " .. stream.summary(r))
  print(("hash:    %s (catalogue %s.json)"):format(r.hash, newest))
  print(("kept in %s: %s"):format(dest, table.concat(fs.list(dest), " ")))
  if not a.dest then print("(temporary: removed on exit; pass DEST to keep the backups)") end
end
