// Package lvm takes and removes LVM snapshots through the LVM tools. The
// snapshot's device path is read back from lvs, never guessed, and the
// volume group's free space is checked first so that a snapshot that
// cannot fit fails with a clear message rather than lvcreate's.
package lvm

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/bkrun/bkrun/stdlib/exec"
)

// CommandTimeout bounds each LVM command.
var CommandTimeout = 5 * time.Minute

// Snapshot is a snapshot logical volume.
type Snapshot struct {
	VG, Name, Origin string
	Path             string // device path as lvs reports it
	Size             int64  // requested copy-on-write size in bytes
}

func run(ctx context.Context, argv ...string) (string, error) {
	res, err := exec.Run(ctx, exec.Cmd{Argv: argv, Capture: true, Timeout: CommandTimeout})
	return strings.TrimSpace(res.Stdout), err
}

// ParseSize reads an LVM size: a number with an optional unit b, k, m, g,
// t (binary, as LVM uses them; "3G" is 3 GiB).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToLower(s))
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'b':
			t = t[:n-1]
		case 'k':
			mult, t = 1<<10, t[:n-1]
		case 'm':
			mult, t = 1<<20, t[:n-1]
		case 'g':
			mult, t = 1<<30, t[:n-1]
		case 't':
			mult, t = 1<<40, t[:n-1]
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f <= 0 {
		return 0, fmt.Errorf("invalid size %q (want e.g. \"3G\", \"512M\")", s)
	}
	return int64(f * float64(mult)), nil
}

// Free is the free space of a volume group in bytes.
func Free(ctx context.Context, vg string) (int64, error) {
	out, err := run(ctx, "vgs", "--noheadings", "--units", "b", "-o", "vg_free", vg)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(out), "B"), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("vgs: cannot read the free space of %s from %q", vg, out)
	}
	return n, nil
}

// CreateSnapshot snapshots vg/lv as vg/name with a copy-on-write area of
// size ("3G").
func CreateSnapshot(ctx context.Context, vg, lv, name, size string) (*Snapshot, error) {
	bytes, err := ParseSize(size)
	if err != nil {
		return nil, err
	}
	free, err := Free(ctx, vg)
	if err != nil {
		return nil, err
	}
	if bytes > free {
		return nil, fmt.Errorf("volume group %s has %s free, the snapshot of %s needs %s (size=%q); free space or give a smaller size", vg, human(free), lv, human(bytes), size)
	}
	if _, err := run(ctx, "lvcreate", "--snapshot", "--size", size, "--name", name, vg+"/"+lv); err != nil {
		return nil, err
	}
	s := &Snapshot{VG: vg, Name: name, Origin: lv, Size: bytes}
	if s.Path, err = run(ctx, "lvs", "--noheadings", "-o", "lv_path", vg+"/"+name); err != nil || s.Path == "" {
		// It exists but cannot be used: remove it rather than leave it.
		rerr := Remove(context.WithoutCancel(ctx), vg, name)
		return nil, fmt.Errorf("snapshot %s/%s created but lvs cannot report its path (%v); removed it: %v", vg, name, err, rerr)
	}
	return s, nil
}

// Remove removes vg/name.
func Remove(ctx context.Context, vg, name string) error {
	_, err := run(ctx, "lvremove", "--force", vg+"/"+name)
	return err
}

func human(b int64) string {
	f, u := float64(b), "B"
	for _, unit := range []string{"KiB", "MiB", "GiB", "TiB"} {
		if f < 1024 {
			break
		}
		f, u = f/1024, unit
	}
	return strconv.FormatFloat(f, 'f', 1, 64) + " " + u
}

// LV is a logical volume as lvs lists it.
type LV struct {
	Name, Path, Origin string // Origin is set for snapshots
	Size               int64
}

// List lists the logical volumes of vg.
func List(ctx context.Context, vg string) ([]LV, error) {
	out, err := run(ctx, "lvs", "--noheadings", "--units", "b", "--separator", "|", "-o", "lv_name,lv_path,lv_size,origin", vg)
	if err != nil {
		return nil, err
	}
	var lvs []LV
	for _, l := range strings.Split(out, "\n") {
		f := strings.Split(strings.TrimSpace(l), "|")
		if len(f) != 4 {
			continue
		}
		size, err := strconv.ParseInt(strings.TrimSuffix(f[2], "B"), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("lvs: cannot read the size in %q", l)
		}
		lvs = append(lvs, LV{Name: f[0], Path: f[1], Size: size, Origin: f[3]})
	}
	return lvs, nil
}
