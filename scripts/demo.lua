description = [[
The bkrun demo: snapshot-style backups of a directory tree, without root or network.

Each run archives SOURCE into DEST/<name>-<n>.tar with a manifest beside it, under a
lock, then keeps only the newest KEEP archives. With no arguments it generates a
source tree in a temporary directory, runs three times, prints what it made and
removes everything on exit (the clean-up stack).
]]
args = {
  { name = "source", required = false, help = "directory to back up (default: a generated tree)" },
  { name = "dest", required = false, help = "directory for archives (default: a temp dir)" },
  { name = "runs", type = "integer", default = 3, help = "how many backups to take" },
  { name = "keep", type = "integer", default = 2, help = "archives to keep" },
}

local exec, fs, log = require "exec", require "fs", require "log"

-- A small tree with a few kinds of files: text, a binary blob, a subdirectory.
local function generate(dir)
  fs.mkdir(dir .. "/etc/app")
  fs.write(dir .. "/etc/app/app.conf", "listen = 127.0.0.1:8080\nworkers = 4\n")
  fs.write(dir .. "/etc/hostname", "daisy\n")
  exec.run{"dd", "if=/dev/urandom", "of=" .. dir .. "/blob", "bs=64k", "count=1", "status=none"}
  fs.write(dir .. "/var.log", string.rep("GET / 200\n", 2000))
  return dir
end

local function backup(src, dest, n)
  local name = ("%s/demo-%02d.tar"):format(dest, n)
  local tmp = name .. ".partial"
  defer(function() fs.remove(tmp) end)         -- never leave a half-written archive
  exec.run{"tar", "-C", src, "-cf", tmp, "."}
  if bkrun.dry_run then return name end        -- nothing was written to measure
  local size = fs.stat(tmp).size
  local sum = exec.output{"sha256sum", tmp}:match("^(%x+)")
  fs.rename(tmp, name)
  fs.write(name .. ".json", ('{"source":%q,"bytes":%d,"sha256":%q,"time":%d}\n'):format(src, size, sum, os.time()))
  log.info("backup written", {archive = name, bytes = size})
  return name
end

local function prune(dest, keep)
  local archives = fs.glob(dest .. "/demo-*.tar")
  for i = 1, #archives - keep do
    fs.remove(archives[i])
    fs.remove(archives[i] .. ".json")
    log.info("pruned", {archive = archives[i]})
  end
end

function run(a)
  local work = fs.tempdir("bkrun-demo-")       -- removed by the clean-up stack
  local src = a.source or generate(work .. "/source")
  local dest = a.dest or work .. "/backup"
  fs.mkdir(dest)
  local lock = fs.lock(dest .. "/.lock")       -- a second demo on DEST fails: "locked by pid N"
  for n = 1, a.runs do
    backup(src, dest, n)
    prune(dest, a.keep)
  end
  lock:release()
  if bkrun.dry_run then return end
  print(("kept in %s:"):format(dest))
  for _, name in ipairs(fs.list(dest)) do
    local st = fs.stat(dest .. "/" .. name)
    print(("  %-22s %8d bytes"):format(name, st.size))
  end
  if not a.dest then print("(temporary: removed on exit; pass DEST to keep them)") end
end
