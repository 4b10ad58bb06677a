-- The session `bkrun recover DIR` opens: DIR's catalogue loaded and a few
-- short commands over the catalog and recover modules. Backups are
-- numbered as ls() shows them; every command takes a number, a path
-- (relative to DIR or absolute) or a backup table.
local catalog, recover = require "catalog", require "recover"
local DIR = ...

local verified = {} -- path -> "ok" or "FAILED"

local function human(n)
  local units, i = { "B", "KiB", "MiB", "GiB", "TiB" }, 1
  while n >= 1024 and i < #units do n, i = n / 1024, i + 1 end
  return (i == 1 and "%d %s" or "%.1f %s"):format(n, units[i])
end

local function rel(path)
  if path:sub(1, #DIR + 1) == DIR .. "/" then return path:sub(#DIR + 2) end
  return path
end

-- table prints rows (lists of strings) under a header, columns aligned.
local function table_print(header, rows)
  local w = {}
  for _, r in ipairs({ header, unpack(rows) }) do
    for i, c in ipairs(r) do w[i] = math.max(w[i] or 0, #c) end
  end
  local function line(r)
    local out = {}
    for i, c in ipairs(r) do
      -- Numbers and sizes right-aligned, text left-aligned; the last column is not padded.
      if i == #r then out[i] = c
      elseif header[i] == "#" or header[i] == "size" then out[i] = (" "):rep(w[i] - #c) .. c
      else out[i] = c .. (" "):rep(w[i] - #c) end
    end
    print(table.concat(out, "  "))
  end
  line(header)
  for _, r in ipairs(rows) do line(r) end
end

function rescan()
  cat = catalog.scan(DIR)
  backups = cat:backups()
  return cat
end

local function pick(x, fn)
  if type(x) == "number" then
    local b = backups[x]
    if not b then error(("%s: no backup #%d (ls() lists 1 to %d)"):format(fn, x, #backups), 3) end
    return b
  elseif type(x) == "string" then
    local b = cat:find(x)
    if not b then error(("%s: %s is not a backup in %s"):format(fn, x, DIR), 3) end
    return b
  elseif type(x) == "table" and x.path then
    return x
  end
  error(("%s: a backup number, path or table expected, got %s"):format(fn, type(x)), 3)
end

local function with_catalog(opts)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.catalog = o.catalog or cat
  return o
end

function ls(filter)
  local rows = {}
  for i, b in ipairs(backups) do
    if not filter or b.source:find(filter, 1, true) or b.path:find(filter, 1, true) then
      rows[#rows + 1] = { tostring(i), b.source, b.date, b.kind, b.level and tostring(b.level) or "-",
        b.kind == "snapshot" and "-" or human(b.size), verified[b.path] or "-", rel(b.path) }
    end
  end
  table_print({ "#", "source", "time", "kind", "level", "size", "verified", "path" }, rows)
  local p = cat:problems()
  if #p > 0 then print(("%d problem(s): problems()"):format(#p)) end
end

function problems()
  local rows = {}
  for _, p in ipairs(cat:problems()) do rows[#rows + 1] = { rel(p.path), p.reason } end
  if #rows == 0 then print("no problems") return end
  table_print({ "path", "problem" }, rows)
end

function chain(x)
  local b = pick(x, "chain")
  local rows = {}
  for _, p in ipairs(cat:chain(b)) do
    local c = cat:find(p)
    rows[#rows + 1] = { c.date, c.level and tostring(c.level) or "-", human(c.bytes), rel(p) }
  end
  table_print({ "time", "level", "size", "path" }, rows)
end

-- verify(x) checks one backup; verify() checks them all and says which failed.
function verify(x)
  local list = x and { pick(x, "verify") } or backups
  local failed = 0
  for _, b in ipairs(list) do
    local ok, r = pcall(recover.verify, b, { catalog = cat })
    verified[b.path] = ok and "ok" or "FAILED"
    if ok and r.kind == "snapshot" then
      print(("%s: ok (read-only subvolume %s)"):format(rel(b.path), r.uuid))
    elseif ok then
      print(("%s: ok (%s%s)"):format(rel(b.path), human(r.bytes or b.size), r.entries and (", " .. r.entries .. " entries") or ""))
    else
      failed = failed + 1
      print(("%s: FAILED: %s"):format(rel(b.path), tostring(r)))
    end
  end
  if failed > 0 then error(("%d of %d backup(s) failed verification"):format(failed, #list), 0) end
end

function restore(x, target, opts)
  local r = recover.restore(pick(x, "restore"), target, with_catalog(opts))
  if r.applied then
    for i, p in ipairs(r.applied) do print(("applied %d/%d: %s"):format(i, #r.applied, rel(p))) end
  end
  print(("restored to %s"):format(r.path or target))
end

function attach(x, opts)
  local mp = recover.attach(pick(x, "attach"), opts)
  print(("mounted read-only on %s (detach(%q) or leave: it is undone at exit)"):format(mp, mp))
  return mp
end

function detach(mp) recover.detach(mp) end

function files(x, opts)
  local list = recover.files(pick(x, "files"), with_catalog(opts))
  for _, f in ipairs(list) do print(f) end
  print(("%d names"):format(#list))
end

function extract(x, paths, dest, opts)
  for _, p in ipairs(recover.extract(pick(x, "extract"), paths, dest, with_catalog(opts))) do print(p) end
end

function help()
  print([[
  ls([filter])                 the backups, numbered: source, time, kind, level, size, verified
  problems()                   damaged entries and incomplete uploads
  chain(n)                     the dumps a restore of backup n applies, oldest first
  verify(n) / verify()         decode and check one backup / all of them (nothing written)
  restore(n, target)           an image onto a file or device; a dump chain into a directory;
                               a btrfs snapshot as a new writable subvolume (the rollback)
  attach(n [, {partition=p}])  mount an image read-only; returns the mount point (a snapshot: its path)
  files(n)                     the names in a dump chain, an image or a snapshot
  extract(n, paths, dest)      copy some files out (paths: a name or a list)
  rescan()                     read the directory again
  n is a number from ls(), a path (Tab completes inside quotes) or a backup table;
  cat is the catalogue, backups the list; every module is loaded (bkrun help recover).]])
end

rescan()
return #backups, #cat:problems()
