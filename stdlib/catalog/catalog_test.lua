-- Lua-level tests of the catalog module, run by lua_test.go through
-- luatest. Backups are written with the real stream.copy.
local catalog, stream, fs = require "catalog", require "stream", require "fs"

local function file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

-- A dump-shaped backup, as xen-backup.lua writes it (times are the real
-- ones: each copy finishes after the previous one).
local function dump(dir, src, name, level)
  return stream.copy { from = src, to = dir .. "/" .. name, codec = "lz4",
    meta = { domain = "master", partition = 1, level = level, base = 0 } }.path
end

function TestScanChainsProblems(t)
  local d = t:tempdir()
  local src = d .. "/src.bin"
  file(src, string.rep("data", 4096))
  fs.mkdir(d .. "/b/master"); fs.mkdir(d .. "/b/img")
  local b = d .. "/b"
  local p = {}
  for i, lvl in ipairs { 0, 3, 2, 5, 4 } do
    p[i] = dump(b .. "/master", src, ("11%02d.1.dump.lz4"):format(i), lvl)
  end
  local img = stream.copy { from = src, to = b .. "/img/disk.img.zst", codec = "zstd" }
  file(b .. "/img/broken.img", "x")
  file(b .. "/img/broken.img.json", "{not json")
  file(b .. "/img/README", "hello")
  file(b .. "/img/.disk2.img.partial-abc", "half")

  local cat = catalog.scan(b)
  t:eq(cat.dir, b)
  local s = cat:sources()
  t:eq(#s, 2)
  t:eq(s[1].source, src)
  t:eq(s[1].backups[1].kind, "image")
  t:eq(s[1].backups[1].codec, "zstd")
  t:eq(s[1].backups[1].level, nil)
  t:eq(s[1].backups[1].size, 16384)
  t:eq(s[1].backups[1].hash, img.hash)
  t:eq(s[2].source, "master/1")
  local levels, paths = {}, {}
  for _, x in ipairs(s[2].backups) do
    levels[#levels + 1] = x.level
    paths[#paths + 1] = x.path
    t:ok(x.time > 0 and x.kind == "dump", x.path)
  end
  t:eq(levels, { 4, 5, 2, 3, 0 }) -- newest first
  t:eq(paths, { p[5], p[4], p[3], p[2], p[1] })
  t:eq(#cat:backups(), 6)
  t:eq(cat:find(p[3]).level, 2)
  t:eq(cat:find(b .. "/nope"), nil)

  t:eq(cat:chain(p[5]), { p[1], p[3], p[5] })
  t:eq(cat:chain(p[4]), { p[1], p[3], p[4] })
  t:eq(cat:chain(p[2]), { p[1], p[2] })
  t:eq(cat:chain(p[1]), { p[1] })
  t:eq(cat:chain(img.path), { img.path })

  t:eq(cat:problems(), {
    { path = b .. "/img/.disk2.img.partial-abc", reason = "incomplete upload (temporary file)" },
    { path = b .. "/img/broken.img.json",
      reason = "damaged catalogue entry: not a bkrun catalogue file: invalid character 'n' looking for beginning of object key string" },
  })
  t:eq(cat:unknown(), { b .. "/img/README" })

  t:raises(function() cat:chain(b .. "/img/README") end, "cat:chain: " .. b .. "/img/README: not a backup in the catalogue of " .. b)
  t:raises(function() cat.sources() end, "bad argument #1 to 'cat:sources'")

  -- The level 0 lost: every incremental names what it misses.
  fs.remove(p[1])
  local m = t:raises(function() catalog.scan(b):chain(p[5]) end,
    "needs a lower-level dump before it; none found (missing level 0?)")
  t:ok(m:find("cat:chain: master/1: level 2 of %d%d%d%d%-%d%d%-%d%d"), m)
  t:eq(catalog.scan(b):problems()[3].reason, "data file 1101.1.dump.lz4 is missing")
end

function TestScanErrors(t)
  t:raises(function() catalog.scan(t:tempdir() .. "/nope") end, "/nope: no such file or directory")
  t:raises(function() catalog.scan(7) end, "bad argument #1 to 'catalog.scan' (string expected, got number)")
end
