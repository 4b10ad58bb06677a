package recover

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bkrun/bkrun/internal/testenv"
	"github.com/bkrun/bkrun/stdlib/btrfs"
	"github.com/bkrun/bkrun/stdlib/catalog"
)

// A snapshot backup: verify checks read-only and the recorded UUIDs,
// restore makes a writable snapshot at a new path only, files and extract
// read the directory, attach returns it; a remote path is refused.
func TestSnapshotBackup(t *testing.T) {
	mnt := testenv.BtrfsMount(t)
	ctx := context.Background()
	cur, mirror := filepath.Join(mnt, "cur"), filepath.Join(mnt, "mirror")
	if err := btrfs.Create(ctx, cur); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(cur, "etc"), 0o755)
	os.WriteFile(filepath.Join(cur, "etc", "fstab"), []byte("fstab\n"), 0o644)
	os.Mkdir(mirror, 0o755)
	snap := filepath.Join(mirror, "2026-11-22T03:00:00Z")
	if err := btrfs.Snapshot(ctx, cur, snap, true); err != nil {
		t.Fatal(err)
	}
	uuid, _, err := catalog.SubvolumeIDs(ctx, nil, snap)
	if err != nil || len(uuid) != 36 {
		t.Fatalf("uuid %q, %v", uuid, err)
	}
	if err := catalog.WriteSnapshotEntry(snap, &catalog.SnapshotEntry{Source: "atom:" + cur, Extra: map[string]any{"uuid": uuid}}); err != nil {
		t.Fatal(err)
	}
	v, err := Verify(ctx, snap, Options{})
	if err != nil || v.Kind != catalog.KindSnapshot || v.UUID != uuid {
		t.Fatalf("verify %+v, %v", v, err)
	}
	target := filepath.Join(mnt, "restored")
	r, err := Restore(ctx, snap+".json", target, Options{})
	if err != nil || r.Target != target || len(r.Applied) != 1 || r.Applied[0] != snap {
		t.Fatalf("restore %+v, %v", r, err)
	}
	if ro, err := btrfs.IsReadOnly(target); err != nil || ro {
		t.Errorf("restored: read-only %v, %v", ro, err)
	}
	if b, _ := os.ReadFile(filepath.Join(target, "etc", "fstab")); string(b) != "fstab\n" {
		t.Errorf("restored fstab %q", b)
	}
	if _, err := Restore(ctx, snap, target, Options{Overwrite: true}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("restore onto an existing target: %v", err)
	}
	if _, err := Restore(ctx, snap, filepath.Join(t.TempDir(), "x"), Options{}); err == nil || !strings.Contains(err.Error(), "btrfs subvolume snapshot") {
		t.Errorf("restore to another filesystem: %v", err)
	}
	files, err := Files(ctx, snap, Options{})
	if err != nil || len(files) != 2 || files[1].Path != "etc/fstab" {
		t.Errorf("files %+v, %v", files, err)
	}
	out := t.TempDir()
	if got, err := Extract(ctx, snap, []string{"/etc/fstab"}, out, Options{}); err != nil || got[0] != filepath.Join(out, "etc", "fstab") {
		t.Errorf("extract %v, %v", got, err)
	}
	if _, err := Extract(ctx, snap, []string{"etc/passwd"}, out, Options{}); err == nil || !strings.Contains(err.Error(), "not in the backup: etc/passwd") {
		t.Errorf("extract of a missing name: %v", err)
	}
	m, err := Attach(ctx, snap, Options{})
	if err != nil || m.Path != snap || len(m.Steps()) != 0 || m.Close() != nil {
		t.Errorf("attach %+v, %v", m, err)
	}
	if _, err := Verify(ctx, "backup@daisy:"+snap, Options{}); err == nil || !strings.Contains(err.Error(), "run it on the backup server") {
		t.Errorf("remote: %v", err)
	}

	// Replaced by another subvolume of the same name: the UUID differs.
	run(t, "btrfs", "subvolume", "delete", snap)
	if err := btrfs.Snapshot(ctx, cur, snap, true); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(ctx, snap, Options{}); err == nil || !strings.Contains(err.Error(), "not the snapshot that was received") {
		t.Errorf("replaced snapshot: %v", err)
	}
	// Writable: refused.
	run(t, "btrfs", "property", "set", "-f", snap, "ro", "false")
	if _, err := Verify(ctx, snap, Options{}); err == nil || !strings.Contains(err.Error(), "writable") {
		t.Errorf("writable snapshot: %v", err)
	}
	// A plain directory with an entry: not a subvolume.
	run(t, "btrfs", "subvolume", "delete", snap)
	os.Mkdir(snap, 0o755)
	if _, err := Verify(ctx, snap, Options{}); err == nil || !strings.Contains(err.Error(), "not a btrfs subvolume") {
		t.Errorf("plain directory: %v", err)
	}
}
