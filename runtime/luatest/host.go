package luatest

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/bkrun/bkrun/runtime"
	lua "github.com/yuin/gopher-lua"
)

// Host is a real bkrun host for Go tests of a binding: output and debug
// logs are captured, and the clean-up stack must run cleanly at the end of
// the test.
type Host struct {
	*runtime.Host
	Out, Log *bytes.Buffer
	prelude  string
}

// HostOptions configure NewHost.
type HostOptions struct {
	DryRun  bool
	Globals map[string]string // string globals set before each chunk (e.g. D = a temp dir)
	Prelude string            // Lua prepended to each chunk, e.g. `local fs = require "fs"; `
}

// NewHost builds a host with mods.
func NewHost(t *testing.T, o HostOptions, mods ...*runtime.Module) *Host {
	t.Helper()
	var out, logs bytes.Buffer
	h := runtime.New(runtime.Options{
		Modules: mods,
		DryRun:  o.DryRun,
		Stdout:  &out,
		Stderr:  &out,
		Logger:  slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Exit:    func(int) {},
	})
	for k, v := range o.Globals {
		h.L.SetGlobal(k, lua.LString(v))
	}
	t.Cleanup(func() {
		if err := h.RunCleanup(); err != nil {
			t.Errorf("clean-up: %v", err)
		}
		h.Close()
	})
	return &Host{Host: h, Out: &out, Log: &logs, prelude: o.Prelude}
}

// Run runs a chunk and fails the test on error.
func (h *Host) Run(t *testing.T, src string) []lua.LValue {
	t.Helper()
	vals, err := h.RunChunk(h.prelude+src, "test", nil)
	if err != nil {
		t.Fatalf("%s\n-> %v", src, err)
	}
	return vals
}

// RunErr runs a chunk that must fail and returns the error message.
func (h *Host) RunErr(t *testing.T, src string) string {
	t.Helper()
	_, err := h.RunChunk(h.prelude+src, "test", nil)
	if err == nil {
		t.Fatalf("%s: no error", src)
	}
	return err.Error()
}
