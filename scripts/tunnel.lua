description = [[
Keep an SSH tunnel up until stopped: seed 000's autossh + daemontools tunnel for
MySQL replication, in one process.

--local LPORT:HOST:PORT listens on 127.0.0.1:LPORT here and connects to HOST:PORT
from the server (ssh -L); --remote RPORT:HOST:PORT listens on the server's
127.0.0.1:RPORT and connects to HOST:PORT from here (ssh -R). Both may be repeated.
A keepalive every --poll seconds notices a dead or hung link; reconnects back off
from 1 s to 60 s and never give up on network errors. A bad key or an unknown or
changed host key at first start fails at once. SIGUSR1 reconnects now;
SIGTERM/SIGINT close the listeners and exit 0. See docs/TUNNEL.md for the systemd unit.
]]
usage = "[--port N] [--identity FILE] [--known-hosts FILE] [--poll SECONDS] --local 13306:localhost:3306 [--remote SPEC] [user@]host"
args = {
  { name = "dest", help = "[user@]host[:port] or a Host alias of ~/.ssh/config" },
  { name = "local", type = "list", help = "LPORT:HOST:PORT, as ssh -L" },
  { name = "remote", type = "list", help = "RPORT:HOST:PORT, as ssh -R" },
  { name = "port", type = "integer", required = false, help = "SSH port (default: ssh config, then 22)" },
  { name = "identity", required = false, help = "private key file (default: ssh-agent, then ~/.ssh/id_*)" },
  { name = "known_hosts", required = false, help = "known_hosts file (default ~/.ssh/known_hosts)" },
  { name = "poll", type = "integer", default = 30, help = "keepalive interval in seconds" },
}

local tunnel = require "tunnel"

function run(a)
  if #a["local"] == 0 and #a.remote == 0 then
    bkrun.usage("give at least one --local or --remote")
  end
  if a.poll <= 0 then bkrun.usage("--poll must be at least 1 second") end
  tunnel.run {
    dest = a.dest,
    forward = a["local"],
    reverse = a.remote,
    poll = a.poll,
    port = a.port,
    identity = a.identity,
    known_hosts = a.known_hosts,
  }
  -- Not reached after SIGTERM/SIGINT: tunnel.run then exits 0 itself,
  -- after the clean-up stack, so that systemd sees a clean stop.
end
