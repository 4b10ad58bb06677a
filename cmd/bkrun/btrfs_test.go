package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bkrun/bkrun/internal/sshtest"
	"github.com/bkrun/bkrun/internal/testenv"
)

// Seed 000 end to end: real rsync into a real btrfs subvolume, read-only
// snapshots that keep each run's content, pruning by policy.
func TestBtrBackupRecipe(t *testing.T) {
	testenv.NeedCommand(t, "rsync")
	base := testenv.BtrfsMount(t)
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "a.conf"), []byte("version 1\n"), 0o644)
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "sub", "b"), []byte("b"), 0o644)

	r := bkrun(t, "", "scripts/btr-backup.lua", src, base, "--keep", "last=2")
	if r.code != 0 || !strings.Contains(r.stdout, "snapshot ") {
		t.Fatalf("%+v", r)
	}
	host, _ := os.Hostname()
	dest := filepath.Join(base, host, strings.ReplaceAll(strings.TrimPrefix(src, "/"), "/", "_"))
	first := strings.TrimSpace(strings.TrimPrefix(strings.Split(r.stdout, "\n")[0], "snapshot "))
	if b, _ := os.ReadFile(filepath.Join(first, "a.conf")); string(b) != "version 1\n" {
		t.Fatalf("snapshot content %q", b)
	}
	if err := os.WriteFile(filepath.Join(first, "x"), nil, 0o644); err == nil {
		t.Error("the snapshot is writable")
	}
	// Two more runs, one second apart in name; the oldest is pruned.
	for i := 2; i <= 3; i++ {
		// A different size: rsync's quick check would skip a same-size
		// file written within the same second.
		os.WriteFile(filepath.Join(src, "a.conf"), []byte("version "+strings.Repeat("I", i)+"\n"), 0o644)
		runAfterASecond(t)
		r = bkrun(t, "", "scripts/btr-backup.lua", src, base, "--keep", "last=2")
		if r.code != 0 {
			t.Fatalf("run %d: %+v", i, r)
		}
	}
	if !strings.Contains(r.stdout, "pruned "+filepath.Base(first)) {
		t.Errorf("oldest snapshot not pruned: %s", r.stdout)
	}
	ents, _ := os.ReadDir(dest)
	var snaps []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), "Z") {
			snaps = append(snaps, e.Name())
		}
	}
	if len(snaps) != 2 {
		t.Fatalf("snapshots %v", snaps)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, snaps[0], "a.conf")); string(b) != "version II\n" {
		t.Errorf("older kept snapshot has %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "cur", "a.conf")); string(b) != "version III\n" {
		t.Errorf("cur has %q", b)
	}
	// Each kept snapshot has its catalogue entry (the pruned one's went with
	// it): the catalogue lists exactly the two, the newest with its parent,
	// and nothing from inside them or from cur.
	if _, err := os.Stat(filepath.Join(dest, filepath.Base(first)+".json")); err == nil {
		t.Error("the pruned snapshot's entry is left")
	}
	r = bkrun(t, "", "-e", `local cat = catalog.scan(...)
		local b = cat:backups()
		print(table.concat(cat:unknown(), " "))
		print(#b, #cat:problems(), b[1].kind, b[1].source, b[1].parent, b[2].path)`, base)
	want := fmt.Sprintf("2\t0\tsnapshot\t%s:%s\t%s\t%s\n", host, src, snaps[0], filepath.Join(dest, snaps[0]))
	if r.code != 0 || !strings.HasSuffix(r.stdout, want) {
		t.Errorf("catalogue of the snapshots: %+v\nwant %q", r, want)
	}
	// Unknown: the lock and the live copy in cur, never a file inside a snapshot.
	wantUnknown := strings.Join([]string{filepath.Join(dest, ".lock"), filepath.Join(dest, "cur", "a.conf"), filepath.Join(dest, "cur", "sub", "b")}, " ")
	if got := strings.SplitN(r.stdout, "\n", 2)[0]; got != wantUnknown {
		t.Errorf("unknown files: %q, want %q", got, wantUnknown)
	}
	// A failing rsync takes no snapshot and exits 1.
	r = bkrun(t, "", "scripts/btr-backup.lua", "/nonexistent-source", base)
	if r.code != 1 || !strings.Contains(r.stderr, "no snapshot taken") {
		t.Errorf("failing rsync: %+v", r)
	}
}

func runAfterASecond(t *testing.T) {
	t.Helper()
	exec.Command("sleep", "1.1").Run()
}

// Seed 004: send/receive mirroring with the new/old rotation, locally and
// to a "remote" host through a real sshd; a failing receive keeps the old
// parent and removes the new snapshot.
func TestBtrfsSnapsyncRecipe(t *testing.T) {
	srcFS, dstFS := testenv.BtrfsMount(t), testenv.BtrfsMount(t)
	subvol, snapdir := filepath.Join(srcFS, "share"), filepath.Join(srcFS, "snapshots")
	if out, err := exec.Command("btrfs", "subvolume", "create", subvol).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	os.Mkdir(snapdir, 0o755)
	dest := filepath.Join(dstFS, "mirror")
	os.Mkdir(dest, 0o755)
	stamps := func(dir string) []string {
		ents, _ := os.ReadDir(dir)
		var out []string
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), "Z") {
				out = append(out, e.Name())
			}
		}
		return out
	}
	for i := 1; i <= 3; i++ {
		os.WriteFile(filepath.Join(subvol, "data"), []byte(strings.Repeat("x", i*1000)), 0o644)
		if i > 1 {
			runAfterASecond(t)
		}
		r := bkrun(t, "", "scripts/btrfs-snapsync.lua", subvol, snapdir, dest, "--keep", "last=2")
		want := "(full)"
		if i > 1 {
			want = "(incremental)"
		}
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Fatalf("run %d: %+v", i, r)
		}
	}
	got := stamps(dest)
	if len(got) != 2 {
		t.Fatalf("snapshots at the destination: %v", got)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, got[1], "data")); len(b) != 3000 {
		t.Errorf("newest mirror has %d bytes", len(b))
	}
	if ents, _ := os.ReadDir(snapdir); len(ents) != 2 { // snapshot-old and the lock file
		t.Errorf("snapdir holds %v", ents)
	}
	// A destination that is not btrfs: the receive fails, snapshot-new is
	// removed, snapshot-old (the next parent) is kept.
	r := bkrun(t, "", "scripts/btrfs-snapsync.lua", subvol, snapdir, t.TempDir())
	if r.code != 1 || !strings.Contains(r.stderr, "btrfs receive") {
		t.Errorf("non-btrfs destination: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(snapdir, "snapshot-new")); err == nil {
		t.Error("snapshot-new left behind")
	}
	if _, err := os.Stat(filepath.Join(snapdir, "snapshot-old")); err != nil {
		t.Error("snapshot-old lost")
	}

	// To another host over SSH (the same machine through a real sshd).
	s := sshtest.Start(t, sshtest.Options{})
	rdest := filepath.Join(dstFS, "remote")
	os.Mkdir(rdest, 0o755)
	for i := 0; i < 2; i++ {
		if i > 0 {
			runAfterASecond(t)
		}
		os.WriteFile(filepath.Join(subvol, "data"), []byte(strings.Repeat("y", 5000+i)), 0o644)
		r := bkrun(t, "", "scripts/btrfs-snapsync.lua", subvol, snapdir, s.User()+"@127.0.0.1:"+rdest,
			"--port", fmt.Sprint(s.Port()), "--identity", s.Identity(), "--known-hosts", s.KnownHosts())
		if r.code != 0 {
			t.Fatalf("remote run %d: %+v", i, r)
		}
	}
	got = stamps(rdest)
	if len(got) != 2 {
		t.Fatalf("remote snapshots %v", got)
	}
	if b, _ := os.ReadFile(filepath.Join(rdest, got[1], "data")); len(b) != 5001 {
		t.Errorf("newest remote mirror has %d bytes", len(b))
	}
}

// --via receive: the destination key can only run `bkrun receive`, which
// verifies each stream before applying it and names the snapshot.
func TestBtrfsSnapsyncThroughReceiver(t *testing.T) {
	srcFS, dstFS := testenv.BtrfsMount(t), testenv.BtrfsMount(t)
	subvol, snapdir := filepath.Join(srcFS, "share"), filepath.Join(srcFS, "snapshots")
	if out, err := exec.Command("btrfs", "subvolume", "create", subvol).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	os.Mkdir(snapdir, 0o755)
	s := sshtest.Start(t, sshtest.Options{ForcedCommand: bkrunBin + " receive --root " + dstFS})
	for i := 0; i < 2; i++ {
		if i > 0 {
			runAfterASecond(t)
		}
		os.WriteFile(filepath.Join(subvol, "data"), []byte(strings.Repeat("z", 100+i)), 0o644)
		r := bkrun(t, "", "scripts/btrfs-snapsync.lua", subvol, snapdir, s.User()+"@127.0.0.1:mirror", "--via", "receive",
			"--port", fmt.Sprint(s.Port()), "--identity", s.Identity(), "--known-hosts", s.KnownHosts())
		if r.code != 0 {
			t.Fatalf("run %d: %+v", i, r)
		}
	}
	ents, _ := os.ReadDir(filepath.Join(dstFS, "mirror"))
	var snaps, entries []string
	for _, e := range ents {
		switch {
		case strings.HasSuffix(e.Name(), "Z"):
			snaps = append(snaps, e.Name())
		case strings.HasSuffix(e.Name(), "Z.json"): // uploaded through the receiver
			entries = append(entries, e.Name())
		default:
			t.Errorf("left at the destination: %s", e.Name())
		}
	}
	if len(snaps) != 2 || len(entries) != 2 {
		t.Fatalf("received %v, entries %v", snaps, entries)
	}
	if e := readSnapEntry(t, filepath.Join(dstFS, "mirror", entries[1])); e.Format != "bkrun-snapshot/1" || !strings.HasSuffix(e.Source, ":"+subvol) || e.Extra["parent"] != nil {
		t.Errorf("entry written through the receiver: %+v", e)
	}
	if b, _ := os.ReadFile(filepath.Join(dstFS, "mirror", snaps[1], "data")); len(b) != 101 {
		t.Errorf("newest mirror has %d bytes", len(b))
	}
	// The forced command keeps the key inside its root.
	r := bkrun(t, "", "scripts/btrfs-snapsync.lua", subvol, snapdir, s.User()+"@127.0.0.1:../escape", "--via", "receive",
		"--port", fmt.Sprint(s.Port()), "--identity", s.Identity(), "--known-hosts", s.KnownHosts())
	if r.code != 1 || !strings.Contains(r.stderr, "refused") {
		t.Errorf("escape: %+v", r)
	}
}
