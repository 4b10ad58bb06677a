package zfs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/bkrun/bkrun/internal/testenv"
	"github.com/bkrun/bkrun/runtime/luatest"
	"github.com/bkrun/bkrun/stdlib/stream"
)

// shims puts the recorded fake of zfs(8) first on PATH with a dataset
// tank/vm holding no snapshots yet.
func shims(t *testing.T) (calls func() string, state string) {
	t.Helper()
	calls, state = testenv.Shims(t, "testdata/shims")
	os.WriteFile(filepath.Join(state, "datasets"), []byte("tank/vm\n"), 0o644)
	return calls, state
}

func TestSnapshotListSendReceive(t *testing.T) {
	calls, state := shims(t)
	ctx := context.Background()
	for _, s := range []string{"tank/vm@a", "tank/vm@b"} {
		if err := Snapshot(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	snaps, err := List(ctx, "tank/vm")
	if err != nil || len(snaps) != 2 || snaps[1].Name != "tank/vm@b" || !snaps[1].Created.After(snaps[0].Created) {
		t.Fatalf("list: %+v %v", snaps, err)
	}
	r, err := Send(ctx, "tank/vm@b", "tank/vm@a")
	if err != nil {
		t.Fatal(err)
	}
	if err := Receive(ctx, "backup/vm", r, true); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(state, "received")); string(b) != "ZFSSTREAM tank/vm@b from tank/vm@a\n" {
		t.Errorf("received %q", b)
	}
	if err := Destroy(ctx, "tank/vm@a"); err != nil {
		t.Fatal(err)
	}
	want := "zfs snapshot tank/vm@a\nzfs snapshot tank/vm@b\nzfs list -H -p -t snapshot -o name,creation -s creation -r tank/vm\nzfs send -i tank/vm@a tank/vm@b\nzfs receive -F backup/vm\nzfs destroy tank/vm@a\n"
	if calls() != want {
		t.Errorf("calls:\n%s\nwant:\n%s", calls(), want)
	}
}

func TestRefusalsAndFailures(t *testing.T) {
	calls, _ := shims(t)
	ctx := context.Background()
	if err := Destroy(ctx, "tank/vm"); err == nil || !strings.Contains(err.Error(), `refusing to destroy: "tank/vm" is not a snapshot name`) {
		t.Errorf("destroy dataset: %v", err)
	}
	if strings.Contains(calls(), "destroy") {
		t.Error("zfs destroy ran on a dataset")
	}
	if err := Snapshot(ctx, "tank/none@x"); err == nil || !strings.Contains(err.Error(), "zfs exited 1: cannot open 'tank/none': dataset does not exist") {
		t.Errorf("snapshot of a missing dataset: %v", err)
	}
	// A send that fails must fail the receive, not feed it a short stream.
	r, err := Send(ctx, "tank/vm@missing", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(r); err == nil || !strings.Contains(err.Error(), "dataset does not exist") {
		t.Errorf("failed send read: %v", err)
	}
	Snapshot(ctx, "tank/vm@c")
	r, _ = Send(ctx, "tank/vm@c", "")
	t.Setenv("SHIM_FAIL", "receive")
	if err := Receive(ctx, "backup/vm", r, false); err == nil || !strings.Contains(err.Error(), "zfs exited 1: cannot receive") {
		t.Errorf("receive failure: %v", err)
	}
}

// A receive that fails stops the send it was reading: the send is not
// left running (holding its snapshot) until the end of the run.
func TestLuaFailedReceiveStopsTheSend(t *testing.T) {
	_, state := shims(t)
	t.Setenv("SHIM_SEND_BYTES", "16777216")
	t.Setenv("SHIM_RECV_FAIL_AFTER_HEADER", "1")
	h := luatest.NewHost(t, luatest.HostOptions{Prelude: `local zfs = require "zfs"; `}, Module)
	h.Run(t, `
		zfs.snapshot("tank/vm@big")
		local ok, err = pcall(zfs.receive, "backup/vm", zfs.send("tank/vm@big"))
		assert(not ok and tostring(err):find("cannot receive"), tostring(err))`)
	b, err := os.ReadFile(filepath.Join(state, "send.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("the send (pid %d) is still running after the receive failed (kill 0: %v)", pid, err)
	}
}

// zfs.send → stream.copy into an lz4 file → zfs.receive from that file.
func TestLuaSendToFileAndReceive(t *testing.T) {
	calls, state := shims(t)
	dir := t.TempDir()
	h := luatest.NewHost(t, luatest.HostOptions{Globals: map[string]string{"D": dir}, Prelude: `local zfs, stream = require "zfs", require "stream"; `}, Module, stream.Module)
	h.Run(t, `
		zfs.snapshot("tank/vm@n1")
		local r = stream.copy{from = zfs.send("tank/vm@n1"), to = D .. "/vm.zfs.lz4"}
		assert(r.size > 0)
		zfs.receive("backup/vm", D .. "/vm.zfs.lz4")
		local l = zfs.list("tank/vm")
		assert(#l == 1 and l[1].name == "tank/vm@n1")`)
	if b, _ := os.ReadFile(filepath.Join(state, "received")); !bytes.Equal(b, []byte("ZFSSTREAM tank/vm@n1 from none\n")) {
		t.Errorf("received %q", b)
	}
	msg := h.RunErr(t, `stream.copy{from = zfs.send("tank/vm@nope"), to = D .. "/bad.lz4"}`)
	if !strings.Contains(msg, "dataset does not exist") {
		t.Errorf("failed send through stream.copy: %s", msg)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*bad*")); len(m) != 0 {
		t.Errorf("a failed send left %v", m)
	}
	if got := h.RunErr(t, `zfs.destroy("tank/vm")`); !strings.Contains(got, "not a snapshot name") {
		t.Errorf("destroy: %s", got)
	}
	_ = calls
}

func TestLuaDryRun(t *testing.T) {
	calls, _ := shims(t)
	h := luatest.NewHost(t, luatest.HostOptions{DryRun: true, Prelude: `local zfs = require "zfs"; `}, Module)
	h.Run(t, `zfs.snapshot("tank/vm@x") zfs.destroy("tank/vm@w") local s = zfs.send("tank/vm@x", {base = "tank/vm@w"}) zfs.receive("b/vm", s, {force = true})`)
	want := "[dry-run] zfs snapshot tank/vm@x\n[dry-run] zfs destroy tank/vm@w\n[dry-run] zfs send -i tank/vm@w tank/vm@x\n[dry-run] zfs receive -F b/vm\n"
	if h.Out.String() != want {
		t.Errorf("dry run printed %q", h.Out.String())
	}
	if calls() != "" {
		t.Errorf("dry run ran %q", calls())
	}
}
