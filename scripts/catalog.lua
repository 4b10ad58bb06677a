description = [[
What is in a backup directory: every backup bkrun wrote, grouped by source, newest
first, with kind, dump level, size and date; the dump chain each needs to restore;
damaged catalogue entries, incomplete uploads and unknown files. With --verify each
backup is also decoded and its hash checked (nothing is written); a btrfs snapshot is
checked to be the read-only subvolume its entry recorded (recover.verify).

Exit status 1 when anything is damaged or fails verification: run it from cron after
the backups, and a broken backup is noticed before it is needed.
]]
args = {
  { name = "dir", help = "backup directory, e.g. /backup, or [user@]host:dir on a backup server (over SFTP)" },
  { name = "verify", type = "boolean", help = "decode every backup and check its hash" },
}

local catalog, recover, stream = require "catalog", require "recover", require "stream"

local function human(n)
  local units, i = { "B", "KiB", "MiB", "GiB", "TiB" }, 1
  while n >= 1024 and i < #units do n, i = n / 1024, i + 1 end
  return (i == 1 and "%d %s" or "%.1f %s"):format(n, units[i])
end

function run(a)
  if a.verify and a.dir:match("^[^/]+:") then
    bkrun.usage("--verify decodes every backup: run it on the backup server (the listing works remotely)")
  end
  local cat = catalog.scan(a.dir)
  local bad = 0
  for _, s in ipairs(cat:sources()) do
    print(s.source)
    for _, b in ipairs(s.backups) do
      local state = ""
      if a.verify then
        local ok, err
        if b.kind == "snapshot" then -- a received btrfs subvolume: nothing to decode
          ok, err = pcall(recover.verify, b, { catalog = cat })
        else
          ok, err = pcall(stream.verify, b.path)
        end
        state = ok and "verified" or ("CORRUPT: " .. tostring(err))
        if not ok then bad = bad + 1 end
      end
      local chain = ""
      if b.level then
        local ok, c = pcall(cat.chain, cat, b.path)
        chain = ok and ("chain of " .. #c) or ("BROKEN CHAIN: " .. tostring(c))
        if not ok then bad = bad + 1 end
      end
      print(("  %-20s %-6s %-7s %10s  %s  %s %s"):format(b.date, b.kind, b.level and ("L" .. b.level) or "",
        human(b.size), b.path:sub(#a.dir + 2), chain, state))
    end
  end
  for _, p in ipairs(cat:problems()) do
    print(("PROBLEM %s: %s"):format(p.path, p.reason))
    bad = bad + 1
  end
  for _, u in ipairs(cat:unknown()) do print("unknown " .. u) end
  if bad > 0 then error(("%d problem(s) in %s"):format(bad, a.dir), 0) end
end
