package retain_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bkrun/bkrun/runtime/luatest"
	"github.com/bkrun/bkrun/stdlib/retain"
)

func TestLua(t *testing.T) { luatest.Run(t, "retain_test.lua", retain.Module) }

func TestDryRunPrintsPlanAndWritesNoHistory(t *testing.T) {
	d := t.TempDir()
	h := luatest.NewHost(t, luatest.HostOptions{DryRun: true, Globals: map[string]string{"D": d}, Prelude: `local retain = require "retain"; `}, retain.Module)
	h.Run(t, `
		local p = retain.plan({"snap-2026-11-20T11:00:00Z", "snap-2026-11-20T10:00:00Z", "other"},
			"last=1 pattern=snap-", {now = "2026-11-20T12:00:00Z"})
		assert(p[1].keep and not p[2].keep and p[3].keep)
		local hist = retain.history(D .. "/dumps.json")
		hist:record("master/1", "2026-11-20", 0)
	`)
	want := "[dry-run] retain: keep snap-2026-11-20T11:00:00Z (last 1)\n" +
		"[dry-run] retain: delete snap-2026-11-20T10:00:00Z (no rule keeps it)\n" +
		"[dry-run] retain: keep other (not matched by pattern)\n" +
		"[dry-run] retain: record master/1 level 0 at 2026-11-20T00:00:00"
	if !strings.HasPrefix(h.Out.String(), want) {
		t.Errorf("output:\n%s\nwant prefix:\n%s", h.Out, want)
	}
	if _, err := os.Stat(filepath.Join(d, "dumps.json")); !os.IsNotExist(err) {
		t.Errorf("dry run wrote the history: %v", err)
	}
}

func TestPlanPrintsNothingWithoutDryRun(t *testing.T) {
	h := luatest.NewHost(t, luatest.HostOptions{Prelude: `local retain = require "retain"; `}, retain.Module)
	h.Run(t, `retain.plan({"snap-2026-11-20T11:00:00Z"}, "last=1")`)
	if h.Out.Len() != 0 {
		t.Errorf("output: %q", h.Out)
	}
}

func TestHistoryLoadErrorRaises(t *testing.T) {
	d := t.TempDir()
	p := filepath.Join(d, "bad.json")
	os.WriteFile(p, []byte("{"), 0o644)
	h := luatest.NewHost(t, luatest.HostOptions{Globals: map[string]string{"P": p}, Prelude: `local retain = require "retain"; `}, retain.Module)
	msg := h.RunErr(t, `retain.history(P)`)
	if !strings.Contains(msg, "retain.history: dump history "+p+": not a bkrun dump history") {
		t.Errorf("message: %s", msg)
	}
}

func TestModuleDocumentsEveryFunction(t *testing.T) {
	for _, name := range []string{"hanoi", "history", "history:record", "history:base", "plan"} {
		if f, ok := retain.Module.Lookup(name); !ok || f.Doc == "" || f.Sig == "" {
			t.Errorf("%s undocumented", name)
		}
	}
}
