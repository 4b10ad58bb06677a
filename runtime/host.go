// Package runtime is the Lua host of bkrun: it builds the Lua state, registers
// the native modules, runs recipes with their metadata, keeps the clean-up
// stack, and turns signals into cancellation.
package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/bkrun/bkrun/internal/libs"
	lua "github.com/yuin/gopher-lua"
)

// Version is the bkrun version, set at link time by the Makefile.
var Version = "dev"

// Options configure a Host.
type Options struct {
	// Modules are the native modules loadable with require. They are
	// registered explicitly by the caller (cmd/bkrun), never by init().
	Modules []*Module
	// DryRun makes primitives print what they would do instead of doing it.
	DryRun bool
	// Interactive makes native modules reachable as globals without require
	// (for -e and the REPL).
	Interactive bool
	// ScriptDir, when set, heads package.path with the script's own
	// directory and its lib/ subdirectory.
	ScriptDir string
	Logger    *slog.Logger
	Stdout    io.Writer
	Stderr    io.Writer
	// Exit ends the process after os.exit has run the clean-up stack.
	Exit func(code int)
	// Progress allows progress bars on Stderr (a terminal, not -q).
	Progress bool
}

// Host owns one Lua state and everything that must outlive a single call
// into it: the context, the clean-up stack and the options.
type Host struct {
	L       *lua.LState
	opts    Options
	cleanup Cleanup
	modules map[string]*Module
	// locks and verified cache lib dirs' lock files and verified libraries (require.go).
	locks    map[string]*libs.Lock
	verified map[string]error

	mu         sync.Mutex
	base       context.Context
	baseCancel context.CancelCauseFunc
	cur        context.Context
	curCancel  context.CancelCauseFunc
	cleanStop  bool
}

// New builds a Host with a configured Lua state.
func New(opts Options) *Host {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.Stdout == nil {
		opts.Stdout = os.Stdout
	}
	if opts.Stderr == nil {
		opts.Stderr = os.Stderr
	}
	if opts.Exit == nil {
		opts.Exit = os.Exit
	}
	h := &Host{opts: opts, modules: map[string]*Module{}}
	h.base, h.baseCancel = context.WithCancelCause(context.Background())
	h.L = lua.NewState(lua.Options{
		SkipOpenLibs: true,
		// Let the registry grow instead of panicking on deep recursion or
		// large tables built by recipes; bounded so a runaway loop still
		// fails with an error rather than eating the machine.
		RegistrySize:        1024 * 8,
		RegistryMaxSize:     1024 * 1024 * 16,
		RegistryGrowStep:    1024,
		CallStackSize:       1024,
		MinimizeStackMemory: true,
	})
	h.L.SetContext(h.base)
	h.openStdlibs()
	h.setPackagePath()
	h.installLoaders()
	for _, m := range opts.Modules {
		h.modules[m.Name] = m
		h.L.PreloadModule(m.Name, h.loader(m))
	}
	h.setGlobals()
	return h
}

// Close releases the Lua state. It does not run the clean-up stack.
func (h *Host) Close() { h.L.Close() }

// Logger is the logger primitives log through.
func (h *Host) Logger() *slog.Logger { return h.opts.Logger }

// DryRun reports whether primitives must only print what they would do.
func (h *Host) DryRun() bool { return h.opts.DryRun }

// Stdout is where user-facing output (dry-run actions, print) goes.
func (h *Host) Stdout() io.Writer { return h.opts.Stdout }

// Progress reports whether long operations may draw a progress bar.
func (h *Host) Progress() bool { return h.opts.Progress }

// DryRunf prints one planned action under --dry-run.
func (h *Host) DryRunf(format string, args ...any) {
	fmt.Fprintf(h.opts.Stdout, "[dry-run] "+format+"\n", args...)
}

// Context is the context primitives must honour: cancelled on SIGINT or
// SIGTERM (or, in the REPL, when the running statement is interrupted).
// During clean-up it is a fresh context so that undo steps can run.
func (h *Host) Context() context.Context {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cur != nil {
		return h.cur
	}
	return h.base
}

// Cancel cancels the whole run with a cause (a *SignalError for signals).
func (h *Host) Cancel(cause error) { h.baseCancel(cause) }

// Cause returns why the run was cancelled, or nil.
func (h *Host) Cause() error {
	if h.base.Err() == nil {
		return nil
	}
	return context.Cause(h.base)
}

// StopCleanly records that the signal which cancelled the run is how the
// running primitive is meant to end (a tunnel or a daemon-like loop under
// systemd): the run then exits 0 after its clean-up instead of 130/143.
func (h *Host) StopCleanly() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cleanStop = true
}

// StoppedCleanly reports whether StopCleanly was called after a signal.
func (h *Host) StoppedCleanly() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cleanStop && h.base.Err() != nil
}

// Interrupt cancels only the statement running under Interruptible.
// It reports false when no statement is running.
func (h *Host) Interrupt(cause error) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.curCancel == nil {
		return false
	}
	h.curCancel(cause)
	return true
}

// Interruptible runs fn with a child context that Interrupt cancels, so that
// Ctrl-C in the REPL stops one statement without ending the session.
func (h *Host) Interruptible(fn func() error) error {
	ctx, cancel := context.WithCancelCause(h.base)
	h.mu.Lock()
	h.cur, h.curCancel = ctx, cancel
	h.mu.Unlock()
	h.L.SetContext(ctx)
	defer func() {
		h.mu.Lock()
		h.cur, h.curCancel = nil, nil
		h.mu.Unlock()
		cancel(nil)
		h.L.SetContext(h.base)
	}()
	err := fn()
	if err != nil && ctx.Err() != nil && h.base.Err() == nil {
		return context.Cause(ctx)
	}
	return err
}

// Defer registers a Go undo on the clean-up stack.
func (h *Host) Defer(name string, fn func(ctx context.Context) error) *Step {
	h.opts.Logger.Debug("clean-up registered", "step", name)
	return h.cleanup.Push(name, fn)
}

// CleaningUp reports whether the clean-up stack is running.
func (h *Host) CleaningUp() bool { return h.cleanup.Running() }

// PendingCleanup is the number of undo steps not yet run.
func (h *Host) PendingCleanup() int { return h.cleanup.Len() }

// RunCleanup runs the clean-up stack with a fresh, uncancelled context: an
// interrupt must not stop the undo of what the run created. Each failure is
// logged; the joined error is returned.
func (h *Host) RunCleanup() error {
	if h.cleanup.Len() == 0 {
		return nil
	}
	ctx := context.WithoutCancel(h.base)
	h.mu.Lock()
	prev, prevCancel := h.cur, h.curCancel
	h.cur, h.curCancel = ctx, nil
	h.mu.Unlock()
	h.L.SetContext(ctx)
	defer func() {
		h.mu.Lock()
		h.cur, h.curCancel = prev, prevCancel
		h.mu.Unlock()
		h.L.SetContext(h.Context())
	}()
	h.opts.Logger.Debug("running clean-up", "steps", h.cleanup.Len())
	return h.cleanup.Run(ctx, func(e *StepError) {
		h.opts.Logger.Error("clean-up step failed", "step", e.Step, "err", e.Err)
	})
}

// CallLua calls a Lua function in protected mode and returns its results.
func (h *Host) CallLua(fn lua.LValue, nret int, args ...lua.LValue) ([]lua.LValue, error) {
	L := h.L
	top := L.GetTop()
	L.Push(fn)
	for _, a := range args {
		L.Push(a)
	}
	if err := L.PCall(len(args), nret, nil); err != nil {
		return nil, toScriptError(h.liftError(err))
	}
	n := L.GetTop() - top
	out := make([]lua.LValue, n)
	for i := 0; i < n; i++ {
		out[i] = L.Get(top + 1 + i)
	}
	L.SetTop(top)
	return out, nil
}

// liftError replaces gopher-lua's bare "context canceled" with the reason
// the run was cancelled (SIGINT, SIGTERM, REPL interrupt).
func (h *Host) liftError(err error) error {
	var ae *lua.ApiError
	if !errors.As(err, &ae) {
		return err
	}
	ctx := h.Context()
	if ctx.Err() == nil {
		return err
	}
	cause := context.Cause(ctx)
	msg := ae.Object.String()
	for _, suffix := range []string{context.Canceled.Error(), "interrupted"} {
		if strings.HasSuffix(msg, suffix) {
			return &ScriptError{Msg: strings.TrimSuffix(msg, suffix) + cause.Error(), Trace: ae.StackTrace, Cause: cause}
		}
	}
	return err
}

func (h *Host) loader(m *Module) lua.LGFunction {
	return func(L *lua.LState) int {
		L.Push(m.Open(h, L))
		return 1
	}
}

// setPackagePath makes require search, in order: the script's directory and
// its lib/, $BKRUN_PATH, the user's and the system's library directories.
// The current directory is never searched implicitly: a root-run tool must
// not pick up a stray foo.lua from wherever cron happens to start it.
func (h *Host) setPackagePath() {
	pkg := h.L.GetGlobal("package").(*lua.LTable)
	h.L.SetField(pkg, "path", lua.LString(strings.Join(SearchPath(h.opts.ScriptDir), ";")))
	h.L.SetField(pkg, "cpath", lua.LString(""))
}

// LibDirs lists the directories require searches for Lua libraries.
func LibDirs(scriptDir string) []string {
	var dirs []string
	if scriptDir != "" {
		dirs = append(dirs, scriptDir, filepath.Join(scriptDir, "lib"))
	}
	for _, d := range filepath.SplitList(os.Getenv("BKRUN_PATH")) {
		if d != "" {
			dirs = append(dirs, d)
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, ".config", "bkrun", "lib"))
	}
	return append(dirs, "/etc/bkrun/lib", "/usr/share/bkrun/lib")
}

// SearchPath is package.path as a list of templates.
func SearchPath(scriptDir string) []string {
	var out []string
	for _, d := range LibDirs(scriptDir) {
		out = append(out, filepath.Join(d, "?.lua"), filepath.Join(d, "?", "init.lua"))
	}
	return out
}

// FindLibrary resolves a Lua library name the way require will.
func (h *Host) FindLibrary(name string) (string, bool) {
	if _, ok := h.modules[name]; ok {
		return "native module " + name, true
	}
	if reserved(name) {
		_, ok := EmbeddedSource(name)
		return "built-in library " + name, ok
	}
	pkg := h.L.GetGlobal("package").(*lua.LTable)
	path := lua.LVAsString(h.L.GetField(pkg, "path"))
	rel := strings.ReplaceAll(name, ".", string(filepath.Separator))
	for _, t := range strings.Split(path, ";") {
		p := strings.ReplaceAll(t, "?", rel)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, true
		}
	}
	return "", false
}

// Modules returns the registered native modules in registration order.
func (h *Host) Modules() []*Module { return h.opts.Modules }

// Stderr is where pass-through output of commands goes.
func (h *Host) Stderr() io.Writer { return h.opts.Stderr }
