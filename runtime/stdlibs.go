package runtime

import (
	"context"
	"fmt"
	"strings"

	lua "github.com/yuin/gopher-lua"
)

// openStdlibs opens only the standard libraries a recipe should have.
// Functions that would bypass bkrun's dry-run and logging (os.execute,
// io.popen, os.remove, os.rename) are replaced by errors pointing at the
// bkrun module that does the job; os.exit runs the clean-up stack first.
func (h *Host) openStdlibs() {
	L := h.L
	for _, lib := range []struct {
		name string
		fn   lua.LGFunction
	}{
		{lua.BaseLibName, lua.OpenBase},
		{lua.LoadLibName, lua.OpenPackage},
		{lua.TabLibName, lua.OpenTable},
		{lua.StringLibName, lua.OpenString},
		{lua.MathLibName, lua.OpenMath},
		{lua.CoroutineLibName, lua.OpenCoroutine},
		{lua.OsLibName, lua.OpenOs},
		{lua.IoLibName, lua.OpenIo},
	} {
		L.Push(L.NewFunction(lib.fn))
		L.Push(lua.LString(lib.name))
		L.Call(1, 0)
	}
	os := L.GetGlobal("os").(*lua.LTable)
	for name, instead := range map[string]string{
		"execute": "exec.run", "remove": "fs.remove", "rename": "fs.rename", "tmpname": "fs.tempdir",
	} {
		L.SetField(os, name, disabled("os."+name, instead))
	}
	L.SetField(os, "exit", L.NewFunction(h.luaExit))
	io := L.GetGlobal("io").(*lua.LTable)
	L.SetField(io, "popen", disabled("io.popen", "exec.run or exec.output"))
	L.SetGlobal("print", L.NewFunction(h.luaPrint))
	// debug is not opened; recipes get only the traceback.
	L.Push(L.NewFunction(lua.OpenDebug))
	L.Push(lua.LString(lua.DebugLibName))
	L.Call(1, 1)
	full := L.Get(-1).(*lua.LTable)
	L.Pop(1)
	dbg := L.NewTable()
	L.SetField(dbg, "traceback", full.RawGetString("traceback"))
	L.SetGlobal("debug", dbg)
}

func disabled(name, instead string) *lua.LFunction {
	return &lua.LFunction{IsG: true, GFunction: func(L *lua.LState) int {
		L.RaiseError("%s is disabled in bkrun; use %s (it honours --dry-run and logs what it does)", name, instead)
		return 0
	}}
}

func (h *Host) luaPrint(L *lua.LState) int {
	n := L.GetTop()
	parts := make([]string, n)
	for i := 1; i <= n; i++ {
		parts[i-1] = L.ToStringMeta(L.Get(i)).String()
	}
	fmt.Fprintln(h.opts.Stdout, strings.Join(parts, "\t"))
	return 0
}

// luaExit is os.exit: the clean-up stack runs before the process ends, so
// a recipe that bails out early still removes its snapshots.
func (h *Host) luaExit(L *lua.LState) int {
	code := 0
	switch v := L.Get(1).(type) {
	case lua.LBool:
		if !v {
			code = 1
		}
	case lua.LNumber:
		code = int(v)
	case *lua.LNilType:
	default:
		TypeError(L, 1, "os.exit", "number or boolean")
	}
	if err := h.RunCleanup(); err != nil && code == 0 {
		code = ExitError
	}
	h.opts.Exit(code)
	// Only reached when Exit does not end the process (tests).
	L.RaiseError("%s", (&ExitRequest{Code: code}).Error())
	return 0
}

func (h *Host) setGlobals() {
	L := h.L
	L.SetGlobal("defer", L.NewFunction(h.luaDefer))
	b := L.NewTable()
	L.SetField(b, "version", lua.LString(Version))
	L.SetField(b, "dry_run", lua.LBool(h.opts.DryRun))
	L.SetField(b, "script", lua.LString(""))
	L.SetField(b, "usage", L.NewFunction(h.luaUsage))
	L.SetGlobal("bkrun", b)
	if h.opts.Interactive {
		h.autoloadModules()
	}
}

// luaUsage is bkrun.usage(msg): a recipe rejects its arguments the way
// bkrun does, with exit status 2 and a pointer to its help.
func (h *Host) luaUsage(L *lua.LState) int {
	msg := L.CheckString(1)
	script := lua.LVAsString(L.GetField(L.GetGlobal("bkrun"), "script"))
	if script != "" {
		msg = fmt.Sprintf("%s: %s (see: bkrun help %s)", script, msg, script)
	}
	ud := L.NewUserData()
	ud.Value = &UsageError{Msg: msg}
	L.Error(ud, 0)
	return 0
}

// luaDefer is defer(fn): fn runs when the run ends, whatever the outcome.
func (h *Host) luaDefer(L *lua.LState) int {
	fn, ok := L.Get(1).(*lua.LFunction)
	if !ok {
		TypeError(L, 1, "defer", "function")
	}
	where := strings.TrimSuffix(L.Where(1), ":")
	h.Defer("defer at "+where, func(_ context.Context) error {
		_, err := h.CallLua(fn, 0)
		if err != nil {
			return fmt.Errorf("%s", Describe(toScriptError(err), false))
		}
		return nil
	})
	return 0
}

// autoloadModules makes native modules reachable as globals (exec.output
// without require) for -e one-liners and the REPL. Recipes still require
// what they use, which keeps their dependencies visible.
func (h *Host) autoloadModules() {
	L := h.L
	mt := L.NewTable()
	L.SetField(mt, "__index", L.NewFunction(func(L *lua.LState) int {
		name := L.CheckString(2)
		if _, ok := h.modules[name]; !ok {
			return 0
		}
		L.Push(L.GetGlobal("require"))
		L.Push(lua.LString(name))
		L.Call(1, 1)
		mod := L.Get(-1)
		L.RawSet(L.Get(lua.GlobalsIndex).(*lua.LTable), lua.LString(name), mod)
		return 1
	}))
	L.SetMetatable(L.Get(lua.GlobalsIndex), mt)
}
