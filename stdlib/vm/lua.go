package vm

import (
	"context"
	"fmt"
	"time"

	"github.com/bkrun/bkrun/runtime"
	lua "github.com/yuin/gopher-lua"
)

// DefaultMax is the pause window when a recipe gives none: a pause is
// never unbounded.
const DefaultMax = 60 * time.Second

// Module binds vm to Lua.
var Module = &runtime.Module{
	Name:    "vm",
	Summary: "pause and unpause virtual machines (xl, xm, virsh) with a watchdog",
	Doc: `The hypervisor tool is chosen with driver="xl"|"xm"|"virsh", or detected (the
first of xl, virsh, xm in $PATH). xl and xm run "pause"/"unpause", virsh
"suspend"/"resume"; each command is bounded to 30 seconds.

A VM must never stay paused. vm.pause registers the unpause on the clean-up
stack (it runs on success, error, SIGINT, SIGTERM, os.exit) and starts a
watchdog in Go that unpauses the domain when the window max is exceeded,
even while the recipe is stuck in a hung command. The window defaults to 60s.
Every pause and unpause is logged with how long the domain was paused.
Under --dry-run the commands are printed, not run.`,
	Funcs: []runtime.Func{
		{Name: "pause", Sig: `vm.pause(dom [, {max="30s", driver=}]) -> paused`,
			Doc: "Pause dom. paused:unpause() ends the pause (idempotent); paused.dom, paused.driver."},
		{Name: "paused", Sig: `vm.paused(dom, {max="30s", driver=}, fn) -> results of fn`,
			Doc: `Pause dom, call fn, unpause — also when fn raises. If the watchdog had to
unpause the domain before fn returned, raise an error: what fn did may not
have happened while the domain was paused.`},
		{Name: "unpause", Sig: `vm.unpause(dom [, {driver=}])`, Doc: "Unpause a domain (recovery: one left paused by something else)."},
		{Name: "state", Sig: `vm.state(dom [, {driver=}]) -> "running"|"paused"|...`, Doc: "The domain's state as the tool reports it."},
		{Name: "list", Sig: `vm.list([{driver=}]) -> {name, ...}`, Doc: "The domains the tool knows (without Domain-0)."},
	},
	Open: open,
}

const pausedType = "vm.paused"

type luaPaused struct {
	p    *Paused
	step *runtime.Step
	dry  bool
	dom  string
	drv  string
}

func open(h *runtime.Host, L *lua.LState) *lua.LTable {
	mt := L.NewTypeMetatable(pausedType)
	L.SetField(mt, "__index", L.NewFunction(func(L *lua.LState) int {
		lp := checkPaused(L)
		switch L.CheckString(2) {
		case "unpause":
			L.Push(L.NewFunction(func(L *lua.LState) int { unpause(h, L, checkPaused(L)); return 0 }))
		case "dom":
			L.Push(lua.LString(lp.dom))
		case "driver":
			L.Push(lua.LString(lp.drv))
		default:
			L.Push(lua.LNil)
		}
		return 1
	}))
	return runtime.Table(L, map[string]lua.LGFunction{
		"pause": func(L *lua.LState) int {
			dom := runtime.CheckString(L, 1, "vm.pause")
			o := runtime.OptsAt(L, 2, "vm.pause")
			lp := pause(h, L, dom, o, "vm.pause")
			runtime.PushObject(L, lp, pausedType)
			return 1
		},
		"paused": func(L *lua.LState) int { return paused(h, L) },
		"unpause": func(L *lua.LState) int {
			dom := runtime.CheckString(L, 1, "vm.unpause")
			d := driverOpt(L, runtime.OptsAt(L, 2, "vm.unpause"), "vm.unpause")
			if h.DryRun() {
				h.DryRunf("%s %s %s", d.Name, d.unpause, dom)
				return 0
			}
			if err := d.Unpause(h.Context(), dom); err != nil {
				runtime.Raise(L, "vm.unpause", err)
			}
			return 0
		},
		"state": func(L *lua.LState) int {
			dom := runtime.CheckString(L, 1, "vm.state")
			d := driverOpt(L, runtime.OptsAt(L, 2, "vm.state"), "vm.state")
			s, err := d.State(h.Context(), dom)
			if err != nil {
				runtime.Raise(L, "vm.state", err)
			}
			L.Push(lua.LString(s))
			return 1
		},
		"list": func(L *lua.LState) int {
			d := driverOpt(L, runtime.OptsAt(L, 1, "vm.list"), "vm.list")
			names, err := d.List(h.Context())
			if err != nil {
				runtime.Raise(L, "vm.list", err)
			}
			L.Push(runtime.ToLua(L, names))
			return 1
		},
	})
}

func driverOpt(L *lua.LState, o *runtime.Opts, fn string) Driver {
	name := o.String("driver", "")
	o.Done(false)
	d, err := Detect(name)
	if err != nil {
		runtime.Raise(L, fn, err)
	}
	return d
}

func pause(h *runtime.Host, L *lua.LState, dom string, o *runtime.Opts, fn string) *luaPaused {
	max := o.Duration("max", DefaultMax)
	d := driverOpt(L, o, fn)
	if max <= 0 {
		runtime.ArgError(L, 2, fn, "option 'max' must be positive: a VM must never stay paused")
	}
	if h.DryRun() {
		h.DryRunf("%s %s %s   (watchdog: unpaused after %v at most)", d.Name, d.pause, dom, max)
		return &luaPaused{dry: true, dom: dom, drv: d.Name}
	}
	p, err := Pause(h.Context(), d, dom, max, h.Logger())
	if err != nil {
		runtime.Raise(L, fn, err)
	}
	lp := &luaPaused{p: p, dom: dom, drv: d.Name}
	lp.step = h.Defer(fmt.Sprintf("unpause %s (%s)", dom, d.Name), func(context.Context) error { return p.Unpause() })
	return lp
}

func unpause(h *runtime.Host, L *lua.LState, lp *luaPaused) {
	if lp.dry {
		h.DryRunf("%s unpause %s", lp.drv, lp.dom)
		return
	}
	lp.step.Cancel()
	if err := lp.p.Unpause(); err != nil {
		runtime.Raise(L, "paused:unpause", err)
	}
}

func checkPaused(L *lua.LState) *luaPaused {
	if ud, ok := L.Get(1).(*lua.LUserData); ok {
		if lp, ok := ud.Value.(*luaPaused); ok {
			return lp
		}
	}
	runtime.TypeError(L, 1, "paused:unpause", "vm.paused object")
	return nil
}

// paused is vm.paused(dom, opts, fn).
func paused(h *runtime.Host, L *lua.LState) int {
	const fn = "vm.paused"
	dom := runtime.CheckString(L, 1, fn)
	o := runtime.OptsAt(L, 2, fn)
	body, ok := L.Get(3).(*lua.LFunction)
	if !ok {
		runtime.TypeError(L, 3, fn, "function")
	}
	lp := pause(h, L, dom, o, fn)
	top := L.GetTop()
	L.Push(body)
	callErr := L.PCall(0, lua.MultRet, nil)
	nret := L.GetTop() - top
	if lp.dry {
		h.DryRunf("%s unpause %s", lp.drv, lp.dom)
	} else {
		lp.step.Cancel()
		if err := lp.p.Unpause(); err != nil && callErr == nil {
			runtime.Raise(L, fn, err)
		}
	}
	if callErr != nil {
		if ae, ok := callErr.(*lua.ApiError); ok {
			L.Error(ae.Object, 0)
		}
		L.RaiseError("%v", callErr)
	}
	if !lp.dry && lp.p.ByWatchdog() {
		runtime.Raise(L, fn, fmt.Errorf("%s was paused longer than %v: the watchdog unpaused it before the function returned", dom, lp.p.Max))
	}
	return nret
}
