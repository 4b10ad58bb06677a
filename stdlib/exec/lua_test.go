package exec_test

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/bkrun/bkrun/runtime"
	"github.com/bkrun/bkrun/runtime/luatest"
	"github.com/bkrun/bkrun/stdlib/exec"
)

func TestLua(t *testing.T) { luatest.Run(t, "exec_test.lua", exec.Module) }

func TestDryRunPrintsAndRunsNothing(t *testing.T) {
	var out bytes.Buffer
	h := runtime.New(runtime.Options{Modules: []*runtime.Module{exec.Module}, DryRun: true, Stdout: &out, Stderr: &out})
	defer h.Close()
	dir := t.TempDir()
	_, err := h.RunChunk(`
		local exec = require "exec"
		exec.run{"touch", "`+dir+`/made"}
		assert(exec.output{"echo", "x"} == "")
		assert(exec.output({"echo", "read-only"}, {safe = true}) == "read-only")
		exec.run{"lvcreate", "-s", "-n", "a snap", dir = "/tmp"}
	`, "dry", nil)
	if err != nil {
		t.Fatal(runtime.Describe(err, true))
	}
	want := "[dry-run] exec: touch " + dir + "/made\n[dry-run] exec: echo x\n[dry-run] exec: lvcreate -s -n 'a snap'   (in /tmp)\n"
	if out.String() != want {
		t.Errorf("dry-run output:\n%s\nwant:\n%s", out.String(), want)
	}
	if ok, _ := exists(dir + "/made"); ok {
		t.Error("dry-run ran the command")
	}
	if strings.Contains(out.String(), "read-only") {
		t.Error("safe command output leaked to stdout")
	}
}

func exists(p string) (bool, error) {
	_, err := os.Stat(p)
	return err == nil, err
}
