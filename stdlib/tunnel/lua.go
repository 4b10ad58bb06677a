package tunnel

import (
	"fmt"
	"strings"

	"github.com/bkrun/bkrun/runtime"
	"github.com/bkrun/bkrun/stdlib/ssh"
	lua "github.com/yuin/gopher-lua"
)

// Module binds tunnel to Lua.
var Module = &runtime.Module{
	Name:    "tunnel",
	Summary: "a persistent SSH tunnel (-L/-R forwards) that never gives up",
	Doc: `tunnel.run keeps SSH port forwards up until the run is cancelled (SIGTERM or
SIGINT), then closes its listeners and returns. It replaces autossh under
daemontools: one process, no "first ssh died too fast" exit.

Local forwards ("-L", option forward) listen on 127.0.0.1:LPORT here and
connect to HOST:PORT from the server; remote forwards ("-R", option reverse)
listen on the server's 127.0.0.1:RPORT and connect to HOST:PORT from here.
A spec is "LPORT:HOST:PORT" or "BIND:LPORT:HOST:PORT" where BIND must be a
loopback address (127.0.0.1, ::1, localhost): other addresses are refused.
Local listeners stay bound across reconnects; a client that arrives while
the link is down waits up to timeout for it, then is closed.

Every poll seconds a keepalive request must be answered within timeout, or
the connection is closed and made again. Reconnects wait 1 s, doubling up to
backoff_max (jittered); the wait goes back to 1 s once a connection has
stayed up for stable seconds. Network errors are retried forever, even on
the first connect. An authentication failure or an unknown or changed host
key at first start raises an error at once (a configuration error must not
loop silently); after the tunnel has been up once they are retried and
logged at error level. A remote forward the server refuses to bind (a stale
session still holds the port) is retried every poll with a warning while the
rest of the tunnel stays up. SIGUSR1 reconnects now.

Each connect and disconnect is logged with its reason ("tunnel up",
"tunnel down" reason=..., "retrying in 4s"). Under --dry-run, run prints
"[dry-run] tunnel DEST -L ... -R ..." and returns. When SIGTERM or SIGINT
stops it, the run ends with exit status 0 after its clean-up stack: a
stopped tunnel is a clean stop for systemd, not a failure (in the REPL,
where Ctrl-C stops only the statement, run just returns).`,
	Funcs: []runtime.Func{
		{Name: "run", Sig: "tunnel.run{dest=, forward={specs}, reverse={specs}, poll=30, timeout=10, backoff_max=60, stable=120, port=, user=, identity=, known_hosts=, config=}",
			Doc: `Keep the forwards up until cancelled; returns nothing. dest is
"[user@]host[:port]" (a Host alias of ~/.ssh/config works); identity is a
key file or a list of them; config is the ssh_config to read ("none": none).
Durations are seconds or strings such as "90s".`},
	},
	Open: func(h *runtime.Host, L *lua.LState) *lua.LTable {
		return runtime.Table(L, map[string]lua.LGFunction{"run": func(L *lua.LState) int { return luaRun(h, L) }})
	},
}

const fn = "tunnel.run"

func stringList(L *lua.LState, key string, v lua.LValue) []string {
	switch x := v.(type) {
	case *lua.LNilType:
		return nil
	case lua.LString:
		return []string{string(x)}
	case *lua.LTable:
		var out []string
		for i := 1; i <= x.Len(); i++ {
			s, ok := x.RawGetInt(i).(lua.LString)
			if !ok {
				runtime.ArgError(L, 1, fn, fmt.Sprintf("option '%s': item %d is %s, not a string", key, i, x.RawGetInt(i).Type()))
			}
			out = append(out, string(s))
		}
		return out
	default:
		runtime.ArgError(L, 1, fn, fmt.Sprintf("option '%s': string or list of strings expected, got %s", key, v.Type()))
		return nil
	}
}

func luaRun(h *runtime.Host, L *lua.LState) int {
	if _, ok := L.Get(1).(*lua.LTable); !ok {
		runtime.TypeError(L, 1, fn, "table {dest=..., forward={...}}")
	}
	t := L.Get(1).(*lua.LTable)
	o := runtime.OptsAt(L, 1, fn)
	cfg := Config{
		Dest:       o.String("dest", ""),
		Poll:       o.Duration("poll", DefaultPoll),
		Timeout:    o.Duration("timeout", DefaultTimeout),
		BackoffMax: o.Duration("backoff_max", DefaultBackoffMax),
		Stable:     o.Duration("stable", DefaultStable),
	}
	cfg.SSH = ssh.Options{
		User:       o.String("user", ""),
		Port:       int(o.Int("port", 0)),
		KnownHosts: o.String("known_hosts", ""),
		ConfigFile: o.String("config", ""),
	}
	for _, k := range []string{"identity", "forward", "reverse"} {
		o.Has(k)
	}
	o.Done(false)
	if cfg.Dest == "" {
		runtime.ArgError(L, 1, fn, "option 'dest' is required ([user@]host[:port])")
	}
	if cfg.SSH.Port < 0 || cfg.SSH.Port > 65535 {
		runtime.ArgError(L, 1, fn, fmt.Sprintf("option 'port': %d is not a port", cfg.SSH.Port))
	}
	for key, d := range map[string]int64{"poll": int64(cfg.Poll), "timeout": int64(cfg.Timeout), "backoff_max": int64(cfg.BackoffMax), "stable": int64(cfg.Stable)} {
		if d <= 0 {
			runtime.ArgError(L, 1, fn, fmt.Sprintf("option '%s': must be more than 0", key))
		}
	}
	cfg.SSH.Identity = stringList(L, "identity", t.RawGetString("identity"))
	parse := func(key string) []Forward {
		var out []Forward
		for _, s := range stringList(L, key, t.RawGetString(key)) {
			f, err := ParseForward(s)
			if err != nil {
				runtime.ArgError(L, 1, fn, fmt.Sprintf("option '%s': %v", key, err))
			}
			out = append(out, f)
		}
		return out
	}
	cfg.Local = parse("forward")
	cfg.Remote = parse("reverse")
	if len(cfg.Local)+len(cfg.Remote) == 0 {
		runtime.ArgError(L, 1, fn, "no forward: give forward={\"LPORT:HOST:PORT\"} or reverse={...}")
	}
	if h.DryRun() {
		h.DryRunf("tunnel %s %s", cfg.Dest, cfg.Specs())
		return 0
	}
	if err := Run(h.Context(), cfg, h.Logger()); err != nil {
		runtime.Raise(L, fn, errorsTrim(err))
	}
	if h.Cause() != nil {
		// SIGTERM/SIGINT is how a tunnel ends: exit 0, not 143.
		h.StopCleanly()
	}
	return 0
}

// errorsTrim drops the "tunnel: " prefix the Go error carries, since the
// Lua error already starts with "tunnel.run: ".
func errorsTrim(err error) error {
	if s, ok := strings.CutPrefix(err.Error(), "tunnel: "); ok {
		return fmt.Errorf("%s", s)
	}
	return err
}
