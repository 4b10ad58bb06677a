package lvm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bkrun/bkrun/internal/testenv"
	"github.com/bkrun/bkrun/runtime/luatest"
)

// shims puts the recorded LVM fakes first on PATH with a volume group
// VGatom holding an LV "master" (a 4 MiB file with content).
func shims(t *testing.T) (calls func() string, state string) {
	t.Helper()
	calls, state = testenv.Shims(t, "testdata/shims")
	os.MkdirAll(filepath.Join(state, "VGatom"), 0o755)
	os.WriteFile(filepath.Join(state, "VGatom", "master"), []byte(strings.Repeat("disk image ", 400000)), 0o644)
	return calls, state
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"3G": 3 << 30, "512m": 512 << 20, "1.5g": 3 << 29, "4096": 4096, "2T": 2 << 40, "10k": 10 << 10} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "G", "-1G", "three"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}

func TestSnapshotLifecycle(t *testing.T) {
	calls, state := shims(t)
	ctx := context.Background()
	s, err := CreateSnapshot(ctx, "VGatom", "master", "master_snap", "3G")
	if err != nil {
		t.Fatal(err)
	}
	if s.Path != filepath.Join(state, "VGatom", "master_snap") || s.Size != 3<<30 {
		t.Errorf("snapshot %+v", s)
	}
	if err := Remove(ctx, "VGatom", "master_snap"); err != nil {
		t.Fatal(err)
	}
	want := "vgs --noheadings --units b -o vg_free VGatom\nlvcreate --snapshot --size 3G --name master_snap VGatom/master\nlvs --noheadings -o lv_path VGatom/master_snap\nlvremove --force VGatom/master_snap\n"
	if calls() != want {
		t.Errorf("calls:\n%s\nwant:\n%s", calls(), want)
	}
}

func TestSnapshotRefusals(t *testing.T) {
	calls, _ := shims(t)
	ctx := context.Background()
	t.Setenv("SHIM_VG_FREE", "1073741824")
	_, err := CreateSnapshot(ctx, "VGatom", "master", "s", "3G")
	if err == nil || err.Error() != `volume group VGatom has 1.0 GiB free, the snapshot of master needs 3.0 GiB (size="3G"); free space or give a smaller size` {
		t.Errorf("no space: %v", err)
	}
	if strings.Contains(calls(), "lvcreate") {
		t.Error("lvcreate ran although the volume group is too small")
	}
	t.Setenv("SHIM_VG_FREE", "")
	os.Unsetenv("SHIM_VG_FREE")
	_, err = CreateSnapshot(ctx, "VGnone", "master", "s", "1G")
	if err == nil || !strings.Contains(err.Error(), `vgs exited 5: Volume group "VGnone" not found`) {
		t.Errorf("missing vg: %v", err)
	}
	t.Setenv("SHIM_FAIL", "lvcreate")
	_, err = CreateSnapshot(ctx, "VGatom", "master", "s", "1G")
	if err == nil || !strings.Contains(err.Error(), "lvcreate exited 5: Volume group \"VGatom\" has insufficient free space") {
		t.Errorf("lvcreate failure: %v", err)
	}
}

func TestLuaSnapshotIsRemovedByCleanup(t *testing.T) {
	calls, state := shims(t)
	h := luatest.NewHost(t, luatest.HostOptions{Prelude: `local lvm = require "lvm"; `}, Module)
	vals := h.Run(t, `local s = lvm.snapshot{vg = "VGatom", lv = "master", size = "3G", name = "master_snap"}
		return s.path, s.size, s.origin`)
	if vals[0].String() != filepath.Join(state, "VGatom", "master_snap") || vals[1].String() != "3221225472" || vals[2].String() != "master" {
		t.Errorf("snapshot fields %v", vals)
	}
	if _, err := os.Stat(filepath.Join(state, "VGatom", "master_snap")); err != nil {
		t.Fatal("no snapshot")
	}
	if err := h.RunCleanup(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(state, "VGatom", "master_snap")); err == nil {
		t.Error("the clean-up stack left the snapshot")
	}
	// snap:remove() removes it now and the clean-up does not try again.
	h.Run(t, `local s = lvm.snapshot{vg = "VGatom", lv = "master", size = "1G"} s:remove()`)
	h.RunCleanup()
	if n := strings.Count(calls(), "lvremove --force VGatom/master_snap"); n != 2 {
		t.Errorf("lvremove ran %d times:\n%s", n, calls())
	}
	for src, want := range map[string]string{
		`lvm.snapshot("VGatom/master")`:                                "bad argument #1 to 'lvm.snapshot' (table expected, got string)",
		`lvm.snapshot{vg = "VGatom", lv = "master"}`:                   "options 'vg', 'lv' and 'size' are required",
		`lvm.snapshot{vg = "VGatom", lv = "master", size = "big"}`:     `option 'size': invalid size "big"`,
		`lvm.snapshot{vg = "VGatom", lv = "m", size = "1G", sise = 1}`: "unknown option 'sise'",
	} {
		if got := h.RunErr(t, src); !strings.Contains(got, want) {
			t.Errorf("%s: %s", src, got)
		}
	}
}

func TestLuaDryRun(t *testing.T) {
	calls, _ := shims(t)
	h := luatest.NewHost(t, luatest.HostOptions{DryRun: true, Prelude: `local lvm = require "lvm"; `}, Module)
	h.Run(t, `local s = lvm.snapshot{vg = "VGatom", lv = "master", size = "3G"} assert(s.path == "/dev/VGatom/master_snap") s:remove()`)
	if got := h.Out.String(); got != "[dry-run] lvcreate --snapshot --size 3G --name master_snap VGatom/master\n[dry-run] lvremove --force VGatom/master_snap\n" {
		t.Errorf("dry run printed %q", got)
	}
	if calls() != "" {
		t.Errorf("dry run ran %q", calls())
	}
}

func TestList(t *testing.T) {
	shims(t)
	ctx := context.Background()
	if _, err := CreateSnapshot(ctx, "VGatom", "master", "master_snap", "1G"); err != nil {
		t.Fatal(err)
	}
	lvs, err := List(ctx, "VGatom")
	if err != nil || len(lvs) != 2 {
		t.Fatalf("List = %+v, %v", lvs, err)
	}
	if lvs[0].Name != "master" || lvs[0].Size != 4400000 || lvs[1].Name != "master_snap" || lvs[1].Origin != "master" {
		t.Errorf("List = %+v", lvs)
	}
	if _, err := List(ctx, "VGnone"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("missing vg: %v", err)
	}
	h := luatest.NewHost(t, luatest.HostOptions{Prelude: `local lvm = require "lvm"; `}, Module)
	vals := h.Run(t, `local l = lvm.list("VGatom") return #l, l[2].origin`)
	if vals[0].String() != "2" || vals[1].String() != "master" {
		t.Errorf("lvm.list: %v", vals)
	}
}
