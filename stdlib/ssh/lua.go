package ssh

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/bkrun/bkrun/runtime"
	"github.com/bkrun/bkrun/stdlib/exec"
	lua "github.com/yuin/gopher-lua"
)

// Module binds ssh to Lua.
var Module = &runtime.Module{
	Name:    "ssh",
	Summary: "SSH connections: remote commands and files, host keys checked",
	Doc: `ssh.connect opens one authenticated connection that later calls reuse.
The destination is "[user@]host[:port]"; host may be a Host alias of
~/.ssh/config, whose HostName, User, Port and IdentityFile apply (explicit
options win). Authentication uses ssh-agent (SSH_AUTH_SOCK) first, then the
identity files (default ~/.ssh/id_ed25519, id_ecdsa, id_rsa). An encrypted
key needs an agent: bkrun never asks for a passphrase.

Host keys are checked against ~/.ssh/known_hosts. An unknown host is an error
unless accept_new=true, which records its key; a CHANGED key is always
refused, naming the known_hosts line. Connect and handshake share one
timeout (default 15 s); a keepalive every 15 s closes the connection after 3
unanswered ones, so a dead peer fails the running call instead of hanging it.

Connections are closed by the clean-up stack at the end of the run, or
earlier by conn:close(). Under --dry-run, connect still connects (it changes
nothing) and commands are printed, not run, unless marked safe=true.`,
	Funcs: []runtime.Func{
		{Name: "connect", Sig: "ssh.connect(dest [, {port=, user=, identity=, known_hosts=, accept_new=false, timeout=15, keepalive=15, config=}]) -> conn",
			Doc: `Connect and authenticate. identity is a key file or a list of them;
config is the ssh_config file to read ("none": none); timeout and keepalive
are seconds or "30s" (keepalive=0 disables it).`},
		{Name: "conn:exec", Sig: "conn:exec(cmd [, {stdin=string|source, stdout=file, check=true, safe=false, timeout=}]) -> {ok, status, signal, stdout, stderr}",
			Doc: `Run a remote shell command line and capture its output (for small outputs;
move data with stream.copy). stdin is a string, or a source such as
disk.open(path) or conn2:open(path) whose bytes stream into the command
without passing through Lua:
conn:exec("cat > /backup/sda.img", {stdin = disk.open("/dev/sda")}).
stdout is a remote file from conn:create (on this or another connection):
the command's output streams into it and the file is committed (renamed into
place) only when the command exits 0; otherwise it is removed:
src:exec("pg_dump db", {stdout = dst:create("/backup/db.sql")}).
A non-zero exit raises "ssh: user@host:port: remote command "cmd" exited N:
<last lines of stderr>" unless check=false.`},
		{Name: "conn:create", Sig: "conn:create(path [, {overwrite=false}]) -> file",
			Doc: `Start writing a remote file over SFTP (a plain OpenSSH server needs nothing
else; when the login may run commands the bytes go through "cat >> TEMP" on a
second channel, twice as fast). The bytes go to DIR/.NAME.partial-RANDOM; nothing appears at path
until the file is committed: by stream.copy{to = file} (which also writes the
catalogue entry path.json), by conn:exec{stdout = file} when the command
succeeds, or by file:commit() (flush, fsync, size check, rename). A missing
directory, or an existing path without overwrite=true, is refused before
anything is written. file:abort() removes it; the clean-up stack removes an
uncommitted file at the end of the run, over a new connection if the old one
died. Fields: file.path, file.temp, file.written, file.done. Under --dry-run
the action is printed and a stand-in returned that stream.copy and conn:exec
accept without writing anything.`},
		{Name: "conn:open", Sig: "conn:open(path) -> source",
			Doc: `Open a remote regular file for reading over SFTP: a source for
stream.copy{from = ...} (e.g. pull a remote image into a local compressed
backup) and for conn:exec{stdin = ...}. Fields: src.path (user@host:port:path),
src.size; src:close(), or the clean-up stack closes it.`},
		{Name: "conn:output", Sig: "conn:output(cmd [, {safe=false, timeout=}]) -> string",
			Doc: "Run a remote command and return its stdout with surrounding white space trimmed."},
		{Name: "conn:btrfs_receive", Sig: `conn:btrfs_receive(dir, source [, {receiver="bkrun receive"}]) -> path`,
			Doc: `Send a btrfs send stream (btrfs.send(...)) to "bkrun receive --root ROOT" on
the other host, which stores it, checks its size and BLAKE3 hash, and only
then applies it with btrfs receive in ROOT/dir. Returns the received
subvolume's path relative to ROOT.`},
		{Name: "conn:close", Sig: "conn:close()",
			Doc: "Close the connection now instead of at the end of the run."},
	},
	Open: open,
}

const connType = "ssh.conn"

type luaConn struct {
	c    *Conn
	step *runtime.Step
}

// FromLua returns the connection inside a conn userdata (for modules such
// as stream that write to a remote host).
func FromLua(v lua.LValue) (*Conn, bool) {
	if ud, ok := v.(*lua.LUserData); ok {
		if lc, ok := ud.Value.(*luaConn); ok {
			return lc.c, true
		}
	}
	return nil, false
}

func open(h *runtime.Host, L *lua.LState) *lua.LTable {
	b := &binding{h: h}
	mt := L.NewTypeMetatable(connType)
	methods := map[string]*lua.LFunction{
		"exec":          L.NewFunction(func(L *lua.LState) int { return b.exec(L, false) }),
		"output":        L.NewFunction(func(L *lua.LState) int { return b.exec(L, true) }),
		"close":         L.NewFunction(b.close),
		"btrfs_receive": L.NewFunction(b.btrfsReceive),
		"create":        L.NewFunction(b.create),
		"open":          L.NewFunction(b.openFile),
	}
	b.fileMetatables(L)
	L.SetField(mt, "__index", L.NewFunction(func(L *lua.LState) int {
		lc := checkConn(L, "ssh.conn")
		switch k := L.CheckString(2); k {
		case "host":
			L.Push(lua.LString(lc.c.Host))
		case "port":
			L.Push(lua.LNumber(lc.c.Port))
		case "user":
			L.Push(lua.LString(lc.c.User))
		default:
			if f, ok := methods[k]; ok {
				L.Push(f)
			} else {
				L.Push(lua.LNil)
			}
		}
		return 1
	}))
	L.SetField(mt, "__tostring", L.NewFunction(func(L *lua.LState) int {
		lc := checkConn(L, "tostring")
		L.Push(lua.LString("ssh.conn(" + lc.c.String() + ")"))
		return 1
	}))
	return runtime.Table(L, map[string]lua.LGFunction{"connect": b.connect})
}

type binding struct{ h *runtime.Host }

func checkConn(L *lua.LState, fn string) *luaConn {
	if ud, ok := L.Get(1).(*lua.LUserData); ok {
		if lc, ok := ud.Value.(*luaConn); ok {
			return lc
		}
	}
	runtime.TypeError(L, 1, fn, "ssh connection (call it as conn:"+strings.TrimPrefix(fn, "conn:")+"(...))")
	return nil
}

func (b *binding) connect(L *lua.LState) int {
	const fn = "ssh.connect"
	dest, ok := L.Get(1).(lua.LString)
	if !ok {
		runtime.TypeError(L, 1, fn, "string ([user@]host[:port])")
	}
	opts := ParseOptions(L, 2, fn)
	log := b.h.Logger()
	if b.h.DryRun() {
		b.h.DryRunf("ssh.connect %s (connecting for real: a connection changes nothing)", string(dest))
	}
	c, err := Dial(b.h.Context(), string(dest), opts)
	if err != nil {
		runtime.Raise(L, fn, err)
	}
	log.Debug("ssh connected", "dest", c.String())
	name := c.String()
	lc := &luaConn{c: c}
	lc.step = b.h.Defer("close ssh connection "+name, func(context.Context) error {
		log.Debug("ssh close", "dest", name)
		return c.Close()
	})
	runtime.PushObject(L, lc, connType)
	return 1
}

func (b *binding) close(L *lua.LState) int {
	lc := checkConn(L, "conn:close")
	lc.step.Cancel()
	if err := lc.c.Close(); err != nil {
		runtime.Raise(L, "conn:close", err)
	}
	return 0
}

func (b *binding) exec(L *lua.LState, output bool) int {
	fn := "conn:exec"
	if output {
		fn = "conn:output"
	}
	lc := checkConn(L, fn)
	cmd, ok := L.Get(2).(lua.LString)
	if !ok {
		runtime.TypeError(L, 2, fn, "string (a remote command line)")
	}
	if strings.TrimSpace(string(cmd)) == "" {
		runtime.ArgError(L, 2, fn, "empty command")
	}
	o := runtime.OptsAt(L, 3, fn)
	safe := o.Bool("safe", false)
	timeout := o.Duration("timeout", 0)
	var stdin io.Reader
	var consumed io.Reader // a one-shot stream source, closed after the command
	var sinkFile *luaFile
	var stdout io.Writer
	check := true
	if !output {
		sinkFile, stdout = stdoutOf(L, o.Value("stdout"), fn)
		switch v := o.Value("stdin").(type) {
		case *lua.LNilType:
		case lua.LString:
			stdin = strings.NewReader(string(v))
		case *lua.LUserData:
			// A source (disk.open) streams into the command: the bytes
			// never pass through Lua.
			switch src := v.Value.(type) {
			case interface{ NewReader() io.Reader }:
				stdin = src.NewReader()
			case io.Reader:
				stdin, consumed = src, src
			default:
				runtime.ArgError(L, 3, fn, "option 'stdin': a string or a source (disk.open) expected")
			}
		default:
			runtime.ArgError(L, 3, fn, "option 'stdin': a string or a source (disk.open) expected, got "+v.Type().String())
		}
		check = o.Bool("check", true)
	}
	o.Done(false)
	c := lc.c
	if b.h.DryRun() && !safe {
		b.h.DryRunf("ssh %s: %s", c.String(), string(cmd))
		if output {
			L.Push(lua.LString(""))
		} else {
			L.Push(resultTable(L, 0, "", "", ""))
		}
		return 1
	}
	ctx := b.h.Context()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, timeout, fmt.Errorf("timed out after %v", timeout))
		defer cancel()
	}
	log := b.h.Logger()
	log.Debug("ssh exec", "dest", c.String(), "cmd", string(cmd))
	if output {
		s, err := c.Output(ctx, string(cmd))
		if err != nil {
			runtime.Raise(L, fn, err)
		}
		L.Push(lua.LString(s))
		return 1
	}
	var out limitedBuffer
	errb := &tailBuffer{max: exec.MaxCapture}
	if stdout == nil {
		stdout = &out
	}
	err := c.Exec(ctx, string(cmd), stdin, stdout, errb)
	runtime.CloseConsumed(consumed)
	if sinkFile != nil {
		// The remote file gets the command's output only if the command
		// succeeded: a failed dump must not become a backup.
		if err == nil {
			err = sinkFile.f.Commit()
		} else {
			sinkFile.f.Abort()
		}
		sinkFile.step.Cancel()
	}
	if out.overflow {
		runtime.Raise(L, fn, fmt.Errorf("ssh: %s: %q: output exceeds %d MiB; stream it instead of capturing it", c, string(cmd), exec.MaxCapture>>20))
	}
	status, signal := 0, ""
	if err != nil {
		ee, ok := err.(*ExitError)
		if !ok || check {
			runtime.Raise(L, fn, err)
		}
		status, signal = ee.Status, ee.Signal
	}
	L.Push(resultTable(L, status, signal, out.String(), errb.String()))
	return 1
}

func resultTable(L *lua.LState, status int, signal, stdout, stderr string) *lua.LTable {
	t := L.NewTable()
	t.RawSetString("ok", lua.LBool(status == 0 && signal == ""))
	t.RawSetString("status", lua.LNumber(status))
	if signal != "" {
		t.RawSetString("signal", lua.LString(signal))
	}
	t.RawSetString("stdout", lua.LString(stdout))
	t.RawSetString("stderr", lua.LString(stderr))
	return t
}

// ParseOptions reads connection options (port, user, identity,
// known_hosts, accept_new, config, timeout, keepalive) from argument n,
// for ssh.connect and for primitives that connect on their own
// (stream.copy{to = "host:path", ssh = {...}}).
func ParseOptions(L *lua.LState, n int, fn string) Options {
	return OptionsOf(L, runtime.OptsAt(L, n, fn), n, fn)
}

// ConnOption reads option 'ssh' of a primitive that reaches another host:
// a connection from ssh.connect (returned as conn), a table of connection
// options (returned as opts, to dial with later), or nil.
func ConnOption(L *lua.LState, v lua.LValue, n int, fn string) (conn *Conn, opts Options) {
	if c, ok := FromLua(v); ok {
		return c, Options{}
	}
	switch t := v.(type) {
	case *lua.LNilType:
	case *lua.LTable:
		where := fn + " option 'ssh'"
		opts = OptionsOf(L, runtime.OptsOf(L, t, n, where), n, where)
	default:
		runtime.ArgError(L, n, fn, "option 'ssh': a connection (ssh.connect) or a table of ssh options expected, got "+v.Type().String())
	}
	return nil, opts
}

// OptionsOf reads connection options from an options table.
func OptionsOf(L *lua.LState, o *runtime.Opts, n int, fn string) Options {
	opts := Options{
		User:           o.String("user", ""),
		Port:           int(o.Int("port", 0)),
		KnownHosts:     o.String("known_hosts", ""),
		AcceptNew:      o.Bool("accept_new", false),
		ConfigFile:     o.String("config", ""),
		ConnectTimeout: o.Duration("timeout", 0),
		KeepAlive:      o.Duration("keepalive", DefaultKeepAlive),
	}
	if opts.KeepAlive == 0 {
		opts.KeepAlive = -1
	}
	if opts.Port < 0 || opts.Port > 65535 {
		runtime.ArgError(L, n, fn, fmt.Sprintf("option 'port': %d is not a port", opts.Port))
	}
	switch v := o.Value("identity").(type) {
	case *lua.LNilType:
	case lua.LString:
		opts.Identity = []string{string(v)}
	case *lua.LTable:
		for i := 1; i <= v.Len(); i++ {
			s, ok := v.RawGetInt(i).(lua.LString)
			if !ok {
				runtime.ArgError(L, n, fn, "option 'identity': a key file or a list of key files expected")
			}
			opts.Identity = append(opts.Identity, string(s))
		}
	default:
		runtime.ArgError(L, n, fn, "option 'identity': string or list of strings expected, got "+v.Type().String())
	}
	o.Done(false)
	return opts
}

// btrfsReceive is conn:btrfs_receive(dir, source [, opts]).
func (b *binding) btrfsReceive(L *lua.LState) int {
	const fn = "conn:btrfs_receive"
	lc := checkConn(L, fn)
	dir := runtime.CheckString(L, 2, fn)
	ud, ok := L.Get(3).(*lua.LUserData)
	var src io.Reader
	if ok {
		src, ok = ud.Value.(io.Reader)
	}
	if !ok {
		runtime.TypeError(L, 3, fn, "send stream (btrfs.send)")
	}
	defer runtime.CloseConsumed(src)
	o := runtime.OptsAt(L, 4, fn)
	cmd := o.String("receiver", "bkrun receive")
	o.Done(false)
	if b.h.DryRun() {
		b.h.DryRunf("ssh %s: %s <- btrfs stream into %s", lc.c.String(), cmd, dir)
		L.Push(lua.LString(dir))
		return 1
	}
	sess, err := lc.c.Receiver(b.h.Context(), cmd)
	if err != nil {
		runtime.Raise(L, fn, err)
	}
	defer sess.Close()
	f, err := sess.BtrfsReceive(dir)
	if err != nil {
		runtime.Raise(L, fn, err)
	}
	if _, err := io.Copy(f, src); err != nil {
		f.Abort()
		runtime.Raise(L, fn, fmt.Errorf("sending the stream: %w", err))
	}
	if err := f.Commit(); err != nil {
		runtime.Raise(L, fn, err)
	}
	L.Push(lua.LString(f.Received()))
	return 1
}
