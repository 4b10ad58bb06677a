-- The stream module as recipes use it (run by lua_test.go through luatest).
local stream, exec, fs = require "stream", require "exec", require "fs"

-- A 5 MiB + 3 byte image: 2 MiB random, 3 MiB zeros, a short tail.
local function image(dir)
  local p = dir .. "/disk.img"
  exec.run{"dd", "if=/dev/urandom", "of=" .. p, "bs=1M", "count=2", "status=none"}
  exec.run{"dd", "if=/dev/zero", "of=" .. p, "bs=1M", "count=3", "seek=2", "status=none"}
  exec.run{"sh", "-c", "printf abc >> " .. p}
  return p
end

function TestCopyVerifyRestore(t)
  local dir = t:tempdir()
  local img = image(dir)
  local r = stream.copy { from = img, to = dir .. "/b.lz4", meta = { site = "daisy" } }
  t:eq(r.size, 5 * 1048576 + 3)
  t:eq(r.zero_bytes, 3 * 1048576)
  t:eq(r.codec, "lz4")
  t:eq(r.catalogue, dir .. "/b.lz4.json")
  t:ok(#r.hash == 64, "hash " .. r.hash)
  local info = stream.info(dir .. "/b.lz4")
  t:eq(info.hash, r.hash)
  t:eq(info.extra, { site = "daisy" })
  t:eq(info.source, img)
  t:eq(stream.verify(dir .. "/b.lz4").hash, r.hash)
  local back = stream.restore { from = dir .. "/b.lz4", to = dir .. "/restored" }
  t:eq(back.hash, r.hash)
  t:eq(exec.output{"cmp", img, dir .. "/restored"}, "")
  t:ok(stream.summary(r):find("5.0 MiB in "), stream.summary(r))
end

function TestRefusals(t)
  local dir = t:tempdir()
  local img = image(dir)
  stream.copy { from = img, to = dir .. "/b.lz4" }
  t:raises(function() stream.copy { from = img, to = dir .. "/b.lz4" } end,
    "stream.copy: " .. dir .. "/b.lz4: already exists (overwrite=true replaces it")
  t:raises(function() stream.copy { from = img, to = "/nonexistent/b.lz4" } end,
    "stream.copy: /nonexistent/b.lz4: directory /nonexistent does not exist")
  t:raises(function() stream.copy { from = dir .. "/missing.img", to = dir .. "/c.lz4" } end,
    "no such file or directory")
  t:raises(function() stream.copy { from = img, to = dir .. "/c.lz4", codec = "lzop" } end,
    [[option 'codec': unknown codec "lzop" (lz4, zstd, none)]])
  t:raises(function() stream.copy { from = img } end, "option 'to' is required")
  t:raises(function() stream.copy { from = 42, to = dir .. "/c" } end, "a source (disk.open(...)) or a device/image path expected, got number")
  t:raises(function() stream.copy { from = img, to = dir .. "/c", level = 9 } end, "unknown option 'level'")
  t:raises(function() stream.copy(img) end, "bad argument #1 to 'stream.copy' (table expected, got string)")
  t:raises(function() stream.restore { from = dir .. "/b.lz4", to = img } end, "already exists")
  t:raises(function() stream.verify(img) end, "no catalogue entry " .. img .. ".json")
  t:eq(fs.glob(dir .. "/.*partial*"), {})
end
