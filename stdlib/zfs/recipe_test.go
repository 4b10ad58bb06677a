package zfs

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// scripts/zfs-snapsync.lua against the recorded zfs(8): full then
// incremental sends, pruning on both sides, and a failed receive that
// drops the new snapshot so the base stays common.
func TestZfsSnapsyncRecipe(t *testing.T) {
	calls, state := shims(t)
	os.WriteFile(filepath.Join(state, "datasets"), []byte("tank/vm\nbackup\n"), 0o644)
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	bin := filepath.Join(t.TempDir(), "bkrun")
	if out, err := exec.Command("go", "build", "-o", bin, filepath.Join(root, "cmd", "bkrun")).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	run := func(env ...string) (string, error) {
		cmd := exec.Command(bin, filepath.Join(root, "scripts", "zfs-snapsync.lua"), "tank/vm", "backup/vm", "--keep", "last=2")
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for i := 0; i < 3; i++ {
		if i > 0 {
			time.Sleep(1100 * time.Millisecond) // a new snapshot name
		}
		out, err := run()
		want := "(full)"
		if i > 0 {
			want = "(incremental from tank/vm@bkrun-"
		}
		if err != nil || !strings.Contains(out, want) {
			t.Fatalf("run %d: %v\n%s", i, err, out)
		}
	}
	db, _ := os.ReadFile(filepath.Join(state, "datasets"))
	for _, side := range []string{"tank/vm@", "backup/vm@"} {
		if n := strings.Count(string(db), side); n != 2 {
			t.Errorf("%s snapshots kept: %d, want 2\n%s", side, n, db)
		}
	}
	if !strings.Contains(calls(), "zfs send -i tank/vm@bkrun-") {
		t.Errorf("no incremental send:\n%s", calls())
	}
	before := string(db)
	time.Sleep(1100 * time.Millisecond)
	out, err := run("SHIM_FAIL=receive")
	if err == nil || !strings.Contains(out, "zfs exited 1: cannot receive") {
		t.Errorf("failed receive: %v\n%s", err, out)
	}
	if db, _ := os.ReadFile(filepath.Join(state, "datasets")); string(db) != before {
		t.Errorf("a failed run changed the snapshots:\n%s\nwas:\n%s", db, before)
	}
}
