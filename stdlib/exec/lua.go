package exec

import (
	"context"
	"errors"
	osexec "os/exec"
	"strings"

	"github.com/bkrun/bkrun/runtime"
	lua "github.com/yuin/gopher-lua"
)

// Module binds exec to Lua.
var Module = &runtime.Module{
	Name:    "exec",
	Summary: "run external commands without a shell",
	Doc: `Commands are an argv table {"lvcreate", "-s", ...} or a string split with
shell quoting rules (no shell runs: pipes and redirections are refused).
Options may be given as a second table or in the hash part of the argv table:

  timeout  seconds or "90s": kill the command (its whole process group) after it
  env      table of variables added to the environment
  dir      working directory
  stdin    string fed to the command (default: /dev/null)
  capture  capture stdout and stderr into the result instead of passing them through
  check    false: return a failed status instead of raising an error (default true)
  safe     true: the command changes nothing, so it runs under --dry-run too

A failing command raises "exec.run: lvcreate exited 5: <last lines of stderr>".
Every command is logged at debug level (-v); under --dry-run it is printed,
not run. On SIGINT/SIGTERM the command's process group gets SIGTERM, then
SIGKILL 2 seconds later.`,
	Funcs: []runtime.Func{
		{Name: "run", Sig: "exec.run(cmd [, opts]) -> {ok, status, signal, stdout, stderr, duration}",
			Doc: "Run a command and wait. stdout/stderr pass through unless capture=true."},
		{Name: "output", Sig: "exec.output(cmd [, opts]) -> string",
			Doc: "Run a command and return its stdout with surrounding white space trimmed."},
		{Name: "lookpath", Sig: "exec.lookpath(name) -> path | nil",
			Doc: "Find an executable in $PATH."},
		{Name: "quote", Sig: "exec.quote(argv) -> string",
			Doc: "Render argv as a shell-quoted line, for logs and messages."},
		{Name: "stream", Sig: "exec.stream(cmd [, {dir=}]) -> source",
			Doc: `Start a command whose standard output is a source for stream.copy
(dump -0 -f - /dev/loop3). If the command exits non-zero the copy fails with
its status and stderr tail: a dying producer never looks like a short,
complete stream. The command is stopped by the clean-up stack if nobody read
it to the end. Under --dry-run the command is printed and the source is empty.`},
	},
	Open: open,
}

func open(h *runtime.Host, L *lua.LState) *lua.LTable {
	return runtime.Table(L, map[string]lua.LGFunction{
		"run":    func(L *lua.LState) int { return luaRun(h, L, "exec.run", false) },
		"output": func(L *lua.LState) int { return luaRun(h, L, "exec.output", true) },
		"lookpath": func(L *lua.LState) int {
			p, err := osexec.LookPath(L.CheckString(1))
			if err != nil {
				L.Push(lua.LNil)
				return 1
			}
			L.Push(lua.LString(p))
			return 1
		},
		"stream": func(L *lua.LState) int {
			argv, t := checkCmd(L, "exec.stream")
			dir := ""
			if t != nil {
				o := runtime.OptsOf(L, t, 1, "exec.stream")
				dir = o.String("dir", "")
				o.Done(true)
			}
			o := runtime.OptsAt(L, 2, "exec.stream")
			dir = o.String("dir", dir)
			o.Done(false)
			ud := L.NewUserData()
			if h.DryRun() {
				h.DryRunf("exec: %s |", Quote(argv))
				ud.Value = strings.NewReader("")
				L.Push(ud)
				return 1
			}
			h.Logger().Debug("exec stream", "cmd", Quote(argv))
			s, err := Stream(h.Context(), Cmd{Argv: argv, Dir: dir})
			if err != nil {
				runtime.Raise(L, "exec.stream", err)
			}
			h.Defer("stop "+argv[0], func(context.Context) error { s.Close(); return nil })
			ud.Value = s
			L.Push(ud)
			return 1
		},
		"quote": func(L *lua.LState) int {
			argv, _ := checkCmd(L, "exec.quote")
			L.Push(lua.LString(Quote(argv)))
			return 1
		},
	})
}

// checkCmd reads argument 1 as an argv table or a command string.
func checkCmd(L *lua.LState, fn string) ([]string, *lua.LTable) {
	switch v := L.Get(1).(type) {
	case lua.LString:
		argv, err := Split(string(v))
		if err != nil {
			runtime.ArgError(L, 1, fn, err.Error())
		}
		return argv, nil
	case *lua.LTable:
		n := v.Len()
		if n == 0 {
			runtime.ArgError(L, 1, fn, "empty command")
		}
		argv := make([]string, n)
		for i := 1; i <= n; i++ {
			switch a := v.RawGetInt(i).(type) {
			case lua.LString, lua.LNumber:
				argv[i-1] = a.String()
			default:
				runtime.ArgError(L, 1, fn, "argv["+lua.LNumber(i).String()+"] must be a string, got "+a.Type().String())
			}
		}
		return argv, v
	default:
		runtime.TypeError(L, 1, fn, "table or string")
		return nil, nil
	}
}

func luaRun(h *runtime.Host, L *lua.LState, fn string, output bool) int {
	argv, t := checkCmd(L, fn)
	c := Cmd{Argv: argv, Capture: output, Stdout: h.Stdout(), Stderr: nil}
	var check, safe bool
	readOpts := func(o *runtime.Opts, inArgv bool) {
		c.Timeout = o.Duration("timeout", c.Timeout)
		if env := o.StringMap("env"); env != nil {
			c.Env = env
		}
		c.Dir = o.String("dir", c.Dir)
		c.Stdin = o.String("stdin", c.Stdin)
		if !output {
			c.Capture = o.Bool("capture", c.Capture)
		}
		check = o.Bool("check", check)
		safe = o.Bool("safe", safe)
		o.Done(inArgv)
	}
	check = true
	if t != nil {
		readOpts(runtime.OptsOf(L, t, 1, fn), true)
	}
	readOpts(runtime.OptsAt(L, 2, fn), false)
	if !c.Capture {
		c.Stderr = h.Stderr()
	}

	log := h.Logger()
	line := Quote(argv)
	if h.DryRun() && !safe {
		if c.Dir != "" {
			h.DryRunf("exec: %s   (in %s)", line, c.Dir)
		} else {
			h.DryRunf("exec: %s", line)
		}
		if output {
			L.Push(lua.LString(""))
		} else {
			L.Push(resultTable(L, Result{}))
		}
		return 1
	}
	log.Debug("exec", "cmd", line, "dir", c.Dir)
	res, err := Run(h.Context(), c)
	log.Debug("exec done", "cmd", argv[0], "status", res.Status, "duration", res.Duration.Round(1e6))
	var ee *Error
	if err != nil && (!errors.As(err, &ee) || check) {
		runtime.Raise(L, fn, err)
	}
	if output {
		if s := strings.TrimSpace(res.Stderr); s != "" {
			log.Debug("exec stderr", "cmd", argv[0], "stderr", StderrTail(s))
		}
		L.Push(lua.LString(strings.TrimSpace(res.Stdout)))
		return 1
	}
	L.Push(resultTable(L, res))
	return 1
}

func resultTable(L *lua.LState, r Result) *lua.LTable {
	t := L.NewTable()
	t.RawSetString("ok", lua.LBool(r.Status == 0 && r.Signal == ""))
	t.RawSetString("status", lua.LNumber(r.Status))
	if r.Signal != "" {
		t.RawSetString("signal", lua.LString(r.Signal))
	}
	t.RawSetString("stdout", lua.LString(r.Stdout))
	t.RawSetString("stderr", lua.LString(r.Stderr))
	t.RawSetString("duration", lua.LNumber(r.Duration.Seconds()))
	return t
}
