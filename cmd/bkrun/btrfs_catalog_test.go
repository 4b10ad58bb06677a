package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/bkrun/bkrun/internal/sshtest"
	"github.com/bkrun/bkrun/internal/testenv"
	"github.com/bkrun/bkrun/stdlib/btrfs"
)

// snapshotMirror lists a mirror directory: snapshot names and entry names.
func snapshotMirror(t *testing.T, dir string) (snaps, entries []string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		switch {
		case e.IsDir() && strings.HasSuffix(e.Name(), "Z"):
			snaps = append(snaps, e.Name())
		case strings.HasSuffix(e.Name(), "Z.json"):
			entries = append(entries, strings.TrimSuffix(e.Name(), ".json"))
		}
	}
	sort.Strings(snaps)
	sort.Strings(entries)
	return snaps, entries
}

type snapEntry struct {
	Format     string         `json:"format"`
	Source     string         `json:"source"`
	SourceKind string         `json:"source_kind"`
	Host       string         `json:"host"`
	Started    string         `json:"started"`
	Finished   string         `json:"finished"`
	Extra      map[string]any `json:"extra"`
}

func readSnapEntry(t *testing.T, p string) snapEntry {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var e snapEntry
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("%s: %v\n%s", p, err, b)
	}
	return e
}

func snapsync(t *testing.T, args ...string) result {
	t.Helper()
	r := bkrun(t, "", append([]string{"scripts/btrfs-snapsync.lua"}, args...)...)
	if r.code != 0 {
		t.Fatalf("btrfs-snapsync %v: exit %d\nstdout %s\nstderr %s", args, r.code, r.stdout, r.stderr)
	}
	return r
}

// The recovery issue's btrfs mirror: btrfs-snapsync.lua writes a catalogue
// entry next to each received snapshot; catalog.scan lists the snapshots
// (not their content), recover verifies one, rolls back to it (a writable
// snapshot at a new path), lists and extracts files; pruning removes a
// snapshot with its entry; an entry without its snapshot is a problem.
func TestBtrfsSnapsyncCatalogue(t *testing.T) {
	srcFS, dstFS := testenv.BtrfsMount(t), testenv.BtrfsMount(t)
	subvol, snapdir := filepath.Join(srcFS, "share"), filepath.Join(srcFS, "snapshots")
	runCmd(t, "btrfs", "subvolume", "create", subvol)
	mkdir(t, snapdir)
	mkdir(t, subvol, "etc")
	os.WriteFile(filepath.Join(subvol, "etc", "app.conf"), []byte("version 1\n"), 0o640)
	os.WriteFile(filepath.Join(subvol, "data"), []byte(strings.Repeat("d", 5000)), 0o644)
	dest := mkdir(t, dstFS, "mirror")
	host, _ := os.Hostname()

	snapsync(t, subvol, snapdir, dest, "--keep", "last=2")
	runAfterASecond(t)
	os.WriteFile(filepath.Join(subvol, "etc", "app.conf"), []byte("version 2\n"), 0o640)
	if r := snapsync(t, subvol, snapdir, dest, "--keep", "last=2"); !strings.Contains(r.stdout, "(incremental)") {
		t.Fatalf("second run not incremental: %s", r.stdout)
	}
	snaps, entries := snapshotMirror(t, dest)
	if len(snaps) != 2 || fmt.Sprint(snaps) != fmt.Sprint(entries) {
		t.Fatalf("snapshots %v, entries %v", snaps, entries)
	}
	first, second := readSnapEntry(t, filepath.Join(dest, snaps[0]+".json")), readSnapEntry(t, filepath.Join(dest, snaps[1]+".json"))
	for _, e := range []snapEntry{first, second} {
		if e.Format != "bkrun-snapshot/1" || e.Source != host+":"+subvol || e.SourceKind != "btrfs-subvolume" || e.Host != host || e.Finished == "" {
			t.Errorf("entry %+v", e)
		}
		if u, _ := e.Extra["uuid"].(string); len(u) != 36 {
			t.Errorf("entry without the subvolume's uuid: %+v", e)
		}
		if u, _ := e.Extra["received_uuid"].(string); len(u) != 36 {
			t.Errorf("entry without the received uuid: %+v", e)
		}
	}
	if _, ok := first.Extra["parent"]; ok {
		t.Errorf("full send has a parent: %+v", first.Extra)
	}
	if second.Extra["parent"] != snaps[0] || second.Started != snaps[1] {
		t.Errorf("incremental entry %+v, want parent %s, started %s", second, snaps[0], snaps[1])
	}

	// Through Lua: scan, chain, verify, restore (twice: refused), files,
	// extract, attach.
	target, out := filepath.Join(dstFS, "rollback"), filepath.Join(dstFS, "out")
	script := writeScript(t, `
args = {{name = "dest"}, {name = "target"}, {name = "out"}}
local catalog, recover = require "catalog", require "recover"
function run(a)
  local cat = catalog.scan(a.dest)
  local bs = cat:backups()
  print("count", #bs, #cat:unknown(), #cat:problems())
  for _, b in ipairs(bs) do
    print("backup", b.kind, b.source, b.path, b.parent or "-", b.size, b.level or "-", b.extra.uuid ~= nil)
  end
  local newest = bs[1]
  local chain = cat:chain(newest)
  print("chain", #chain, chain[1] == newest.path)
  local v = recover.verify(newest, {catalog = cat})
  print("verify", v.ok, v.kind, #v.uuid, #v.received_uuid)
  local r = recover.restore(newest, a.target, {catalog = cat})
  print("restored", r.path, r.kind, r.applied[1] == newest.path)
  local ok, err = pcall(recover.restore, newest, a.target, {catalog = cat})
  print("again", ok, err)
  print("files", table.concat(recover.files(newest), ","))
  print("extracted", recover.extract(newest, "etc/app.conf", a.out)[1])
  print("attach", recover.attach(newest) == newest.path)
end
`)
	r := bkrun(t, "", script, dest, target, out)
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	t.Logf("lua:\n%s", r.stdout)
	for _, want := range []string{
		"count\t2\t0\t0\n",
		fmt.Sprintf("backup\tsnapshot\t%s:%s\t%s\t%s\t0\t-\ttrue\n", host, subvol, filepath.Join(dest, snaps[1]), snaps[0]),
		fmt.Sprintf("backup\tsnapshot\t%s:%s\t%s\t-\t0\t-\ttrue\n", host, subvol, filepath.Join(dest, snaps[0])),
		"chain\t1\ttrue\n",
		"verify\ttrue\tsnapshot\t36\t36\n",
		"restored\t" + target + "\tsnapshot\ttrue\n",
		": recover.restore: " + target + ": already exists; a snapshot is restored as a new subvolume",
		"files\tdata,etc,etc/app.conf\n",
		"extracted\t" + filepath.Join(out, "etc", "app.conf") + "\n",
		"attach\ttrue\n",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("missing %q", want)
		}
	}
	// The rollback is a writable subvolume with the snapshot's files.
	if ro, err := btrfs.IsReadOnly(target); err != nil || ro {
		t.Errorf("restored %s: read-only %v, %v", target, ro, err)
	}
	if out, err := exec.Command("diff", "-r", filepath.Join(dest, snaps[1]), target).CombinedOutput(); err != nil {
		t.Errorf("restored tree differs: %v\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(target, "new"), []byte("x"), 0o644); err != nil {
		t.Errorf("restored subvolume not writable: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "etc", "app.conf")); string(b) != "version 2\n" {
		t.Errorf("extracted %q", b)
	}
	if st, err := os.Stat(filepath.Join(out, "etc", "app.conf")); err != nil || st.Mode().Perm() != 0o640 {
		t.Errorf("extracted mode %v, %v", st, err)
	}

	// scripts/catalog.lua --verify checks snapshots as subvolumes.
	r = bkrun(t, "", "scripts/catalog.lua", dest, "--verify")
	if r.code != 0 || strings.Count(r.stdout, " snapshot ") != 2 || strings.Count(r.stdout, "verified") != 2 {
		t.Errorf("catalog.lua --verify: %+v", r)
	}

	// bkrun recover: ls shows the kind, verify and restore by number.
	target2 := filepath.Join(dstFS, "rollback2")
	r = bkrun(t, "ls()\nverify(1)\nrestore(2, \""+target2+"\")\nls()\n", "recover", dest)
	if r.code != 0 {
		t.Fatalf("recover session: exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	t.Logf("session:\n%s", r.stdout)
	for _, want := range []string{
		dest + ": 2 backup(s), 0 problem(s).",
		"kind",
		"  snapshot  ",
		snaps[1] + ": ok (read-only subvolume ",
		"restored to " + target2,
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("session: missing %q", want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(target2, "etc", "app.conf")); string(b) != "version 1\n" {
		t.Errorf("rollback to the first snapshot has %q", b)
	}

	// A third run prunes the oldest snapshot and its entry, nothing else.
	runAfterASecond(t)
	r = snapsync(t, subvol, snapdir, dest, "--keep", "last=2")
	if !strings.Contains(r.stdout, "pruned "+snaps[0]) {
		t.Errorf("not pruned: %s", r.stdout)
	}
	snaps3, entries3 := snapshotMirror(t, dest)
	if len(snaps3) != 2 || fmt.Sprint(snaps3) != fmt.Sprint(entries3) || snaps3[0] != snaps[1] {
		t.Fatalf("after pruning: snapshots %v, entries %v", snaps3, entries3)
	}

	// Deleted by hand: the entry is a problem; a snapshot without an entry
	// (an older run) is listed once as unknown, not walked.
	runCmd(t, "btrfs", "subvolume", "delete", filepath.Join(dest, snaps3[0]))
	os.Remove(filepath.Join(dest, snaps3[1]+".json"))
	script = writeScript(t, `
args = {{name = "dest"}}
local catalog, recover = require "catalog", require "recover"
function run(a)
  local cat = catalog.scan(a.dest)
  print("count", #cat:backups(), #cat:unknown(), #cat:problems())
  for _, p in ipairs(cat:problems()) do print("problem", p.path, p.reason) end
  for _, u in ipairs(cat:unknown()) do print("unknown", u) end
  print("verify", pcall(recover.verify, a.dest .. "/`+snaps3[0]+`"))
end
`)
	r = bkrun(t, "", script, dest)
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{
		"count\t0\t1\t1\n",
		"problem\t" + filepath.Join(dest, snaps3[0]+".json") + "\tsnapshot directory " + snaps3[0] + " is missing\n",
		"unknown\t" + filepath.Join(dest, snaps3[1]) + "\n",
		": recover.verify: " + filepath.Join(dest, snaps3[0]) + ": snapshot directory " + snaps3[0] + " is missing\n",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("missing %q in\n%s", want, r.stdout)
		}
	}
}

// A mirror on another host (through a real sshd): the entries are written
// there over SFTP, and a remote catalog.scan lists them; recover refuses
// the remote paths.
func TestBtrfsSnapsyncCatalogueRemote(t *testing.T) {
	srcFS, dstFS := testenv.BtrfsMount(t), testenv.BtrfsMount(t)
	subvol, snapdir := filepath.Join(srcFS, "share"), filepath.Join(srcFS, "snapshots")
	runCmd(t, "btrfs", "subvolume", "create", subvol)
	mkdir(t, snapdir)
	rdest := mkdir(t, dstFS, "remote")
	s := sshtest.Start(t, sshtest.Options{})
	sshArgs := []string{"--port", fmt.Sprint(s.Port()), "--identity", s.Identity(), "--known-hosts", s.KnownHosts()}
	for i := 0; i < 2; i++ {
		if i > 0 {
			runAfterASecond(t)
		}
		os.WriteFile(filepath.Join(subvol, "data"), []byte(strings.Repeat("r", 100+i)), 0o644)
		snapsync(t, append([]string{subvol, snapdir, s.User() + "@127.0.0.1:" + rdest}, sshArgs...)...)
	}
	snaps, entries := snapshotMirror(t, rdest)
	if len(snaps) != 2 || fmt.Sprint(snaps) != fmt.Sprint(entries) {
		t.Fatalf("snapshots %v, entries %v", snaps, entries)
	}
	if e := readSnapEntry(t, filepath.Join(rdest, snaps[1]+".json")); e.Extra["parent"] != snaps[0] || e.Extra["uuid"] == nil {
		t.Errorf("remote entry %+v", e)
	}
	script := writeScript(t, `
args = {{name = "dest"}, {name = "port", type = "integer"}, {name = "identity"}, {name = "known_hosts"}}
local catalog, recover = require "catalog", require "recover"
function run(a)
  local cat = catalog.scan(a.dest, {ssh = {port = a.port, identity = a.identity, known_hosts = a.known_hosts}})
  print("count", #cat:backups(), #cat:unknown(), #cat:problems())
  for _, b in ipairs(cat:backups()) do print("backup", b.kind, b.path, b.parent or "-") end
  print("verify", pcall(recover.verify, cat:backups()[1]))
end
`)
	r := bkrun(t, "", append([]string{script, s.User() + "@127.0.0.1:" + rdest}, sshArgs...)...)
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	t.Logf("lua:\n%s", r.stdout)
	remote := s.User() + "@127.0.0.1:" + rdest
	for _, want := range []string{
		"count\t2\t0\t0\n",
		"backup\tsnapshot\t" + remote + "/" + snaps[1] + "\t" + snaps[0] + "\n",
		"backup\tsnapshot\t" + remote + "/" + snaps[0] + "\t-\n",
		": recover.verify: " + remote + "/" + snaps[1] + ": a backup on " + s.User() + "@127.0.0.1: recover works on local backups; run it on the backup server",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("missing %q", want)
		}
	}

	// Pruning on the remote side removes the entry with its snapshot.
	runAfterASecond(t)
	r = snapsync(t, append([]string{subvol, snapdir, remote, "--keep", "last=1"}, sshArgs...)...)
	if !strings.Contains(r.stdout, "pruned "+snaps[0]) || !strings.Contains(r.stdout, "pruned "+snaps[1]) {
		t.Errorf("remote pruning: %s", r.stdout)
	}
	snaps3, entries3 := snapshotMirror(t, rdest)
	if len(snaps3) != 1 || fmt.Sprint(snaps3) != fmt.Sprint(entries3) {
		t.Errorf("after remote pruning: snapshots %v, entries %v", snaps3, entries3)
	}
}
