package stream_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bkrun/bkrun/runtime"
	"github.com/bkrun/bkrun/runtime/luatest"
	"github.com/bkrun/bkrun/stdlib/disk"
	"github.com/bkrun/bkrun/stdlib/exec"
	"github.com/bkrun/bkrun/stdlib/fs"
	"github.com/bkrun/bkrun/stdlib/stream"
)

func TestLua(t *testing.T) {
	luatest.Run(t, "stream_test.lua", stream.Module, exec.Module, fs.Module, disk.Module)
}

func TestDryRunWritesNothing(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	os.WriteFile(img, make([]byte, 4096), 0o644)
	var out bytes.Buffer
	h := runtime.New(runtime.Options{Modules: []*runtime.Module{stream.Module, disk.Module}, DryRun: true, Stdout: &out})
	defer h.Close()
	_, err := h.RunChunk(`local stream = require "stream"
		stream.copy{from = "`+img+`", to = "`+dir+`/b.lz4"}
		stream.restore{from = "`+dir+`/b.lz4", to = "`+dir+`/r"}`, "t", nil)
	if err != nil {
		t.Fatal(runtime.Describe(err, true))
	}
	if !strings.Contains(out.String(), "[dry-run] stream.copy "+img+" -> "+dir+"/b.lz4 (codec lz4") ||
		!strings.Contains(out.String(), "[dry-run] stream.restore "+dir+"/b.lz4 -> "+dir+"/r") {
		t.Errorf("dry-run output %q", out.String())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("dry run wrote files: %v", ents)
	}
}

func TestModuleDocsMatchFunctions(t *testing.T) {
	h := runtime.New(runtime.Options{Modules: []*runtime.Module{stream.Module}})
	defer h.Close()
	vals, err := h.RunChunk(`local s = require "stream" local n = {} for k in pairs(s) do n[#n+1] = k end table.sort(n) return table.concat(n, ",")`, "t", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := vals[0].String(), strings.Join(stream.Module.FuncNames(), ","); got != want {
		t.Errorf("functions %s, documented %s", got, want)
	}
}

// A copy that fails (here: no such destination directory) stops the stream
// it was given at once, not at the end of the run.
func TestFailedCopyStopsTheStream(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "producer.pid")
	var out bytes.Buffer
	h := runtime.New(runtime.Options{Modules: []*runtime.Module{stream.Module, exec.Module}, Stdout: &out, Stderr: &out})
	defer h.Close()
	_, err := h.RunChunk(`local stream, exec = require "stream", require "exec"
		local src = exec.stream({"sh", "-c", "echo $$ > `+pidFile+`; exec cat /dev/zero"})
		exec.run({"sh", "-c", "while [ ! -s `+pidFile+` ]; do sleep 0.01; done"})
		local ok, err = pcall(stream.copy, {from = src, to = "/nonexistent-bkrun-dir/x.lz4"})
		assert(not ok and tostring(err):find("does not exist"), tostring(err))
		local alive = exec.run({"sh", "-c", "kill -0 $(cat `+pidFile+`)"}, {check = false, capture = true})
		assert(not alive.ok, "the producer still runs after stream.copy failed")`, "t", nil)
	if err != nil {
		t.Fatal(runtime.Describe(err, true), out.String())
	}
}
