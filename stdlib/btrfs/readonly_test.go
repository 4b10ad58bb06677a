package btrfs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/bkrun/bkrun/internal/testenv"
)

// IsReadOnly tells a read-only snapshot from a writable subvolume with
// one ioctl, and refuses what is not a subvolume.
func TestIsReadOnly(t *testing.T) {
	mnt := testenv.BtrfsMount(t)
	ctx := context.Background()
	cur, ro, rw := filepath.Join(mnt, "cur"), filepath.Join(mnt, "ro"), filepath.Join(mnt, "rw")
	if err := Create(ctx, cur); err != nil {
		t.Fatal(err)
	}
	if err := Snapshot(ctx, cur, ro, true); err != nil {
		t.Fatal(err)
	}
	if err := Snapshot(ctx, ro, rw, false); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path string
		want bool
	}{{cur, false}, {ro, true}, {rw, false}} {
		if got, err := IsReadOnly(c.path); err != nil || got != c.want {
			t.Errorf("IsReadOnly(%s) = %v, %v; want %v", c.path, got, err, c.want)
		}
	}
	plain := filepath.Join(mnt, "plain")
	os.Mkdir(plain, 0o755)
	if _, err := IsReadOnly(plain); !errors.Is(err, ErrNotSubvolume) {
		t.Errorf("plain directory: %v", err)
	}
	if _, err := IsReadOnly(t.TempDir()); !errors.Is(err, ErrNotSubvolume) {
		t.Errorf("not on btrfs: %v", err)
	}
	if _, err := IsReadOnly(filepath.Join(mnt, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
}
