-- bkrun.dest: where a recipe's output goes, a local directory or a
-- directory on another host written as [user@]host:dir, reached over SSH
-- with the recipe's usual --port, --identity and --known-hosts arguments.
--
--   local dest = require "bkrun.dest"
--   local host, dir = dest.split("backup@daisy:/backup")   --> "backup@daisy", "/backup"
--   local d = dest.mkdir(a.dest .. "/" .. a.domain, a)     -- local fs.mkdir or remote mkdir -p
--   stream.copy { from = src, to = d:path("1.dump.lz4"), ssh = d.conn }
local M = {}

-- dest.split(spec) -> host or nil, dir. "host:dir" and "user@host:dir" are
-- remote; anything with a / before the first : ("/backup", "./x:y") is local.
function M.split(spec)
  local host, dir = spec:match("^([^/:]+):(.+)$")
  if host then return host, dir end
  return nil, spec
end

-- dest.ssh_options(a) -> {port=, identity=, known_hosts=} from a recipe's
-- arguments (each may be nil: ssh.connect then uses its defaults).
function M.ssh_options(a)
  return { port = a.port, identity = a.identity, known_hosts = a.known_hosts }
end

-- dest.connect(host, a) -> an ssh connection to host with dest.ssh_options(a).
function M.connect(host, a)
  return require("ssh").connect(host, M.ssh_options(a or {}))
end

local Dest = {}
Dest.__index = Dest

-- d:path(name) -> "dir/name", or "host:dir/name" for a remote destination
-- (what stream.copy's to= takes, with ssh = d.conn).
function Dest:path(name)
  local p = self.dir .. "/" .. name
  if self.host then return self.host .. ":" .. p end
  return p
end

-- dest.mkdir(spec, a) -> d with d.host (nil when local), d.dir, d.conn (the
-- ssh connection, nil when local). The directory is created if missing:
-- fs.mkdir here, "mkdir -p" over SSH there.
function M.mkdir(spec, a)
  local host, dir = M.split(spec)
  local d = setmetatable({ host = host, dir = dir }, Dest)
  if host then
    d.conn = M.connect(host, a)
    d.conn:exec(require("exec").quote { "mkdir", "-p", dir })
  else
    require("fs").mkdir(dir)
  end
  return d
end

return M
