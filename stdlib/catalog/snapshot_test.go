package catalog_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bkrun/bkrun/internal/sshtest"
	"github.com/bkrun/bkrun/runtime/luatest"
	"github.com/bkrun/bkrun/stdlib/catalog"
	"github.com/bkrun/bkrun/stdlib/ssh"
)

// mirror makes a snapshot mirror in plain directories (the scan does not
// need btrfs for snapshots with entries): two snapshots with their files
// and entries, the second incremental on the first.
func mirror(t *testing.T, dir string) (snaps []string) {
	t.Helper()
	for i, name := range []string{"2026-11-21T03:00:00Z", "2026-11-22T03:00:00Z"} {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Join(p, "etc"), 0o755)
		os.WriteFile(filepath.Join(p, "etc", "app.conf"), []byte("x"), 0o644)
		os.WriteFile(filepath.Join(p, "notes.json"), []byte("{not an entry"), 0o644)
		at, _ := time.Parse(time.RFC3339, name)
		e := &catalog.SnapshotEntry{Source: "atom:/home/foo/share", Host: "atom", BkrunVersion: "test",
			Started: at, Finished: at.Add(5 * time.Second)}
		if i > 0 {
			e.Extra = map[string]any{"parent": filepath.Base(snaps[0]), "uuid": nil}
		}
		if err := catalog.WriteSnapshotEntry(p, e); err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, p)
	}
	return snaps
}

func TestSnapshotEntries(t *testing.T) {
	d := t.TempDir()
	snaps := mirror(t, d)
	raw, err := os.ReadFile(snaps[1] + ".json")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"format": "bkrun-snapshot/1"`, `"source": "atom:/home/foo/share"`,
		`"source_kind": "btrfs-subvolume"`, `"finished": "2026-11-22T03:00:05Z"`, `"seconds": 5`, `"parent": "2026-11-21T03:00:00Z"`} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("entry lacks %s:\n%s", want, raw)
		}
	}
	if strings.Contains(string(raw), "uuid") || strings.Contains(string(raw), `"hash"`) {
		t.Errorf("entry has an empty uuid or a hash:\n%s", raw)
	}
	if ents, _ := os.ReadDir(d); len(ents) != 4 {
		t.Errorf("temporary files left: %v", ents)
	}
	// Not a directory: refused.
	os.WriteFile(filepath.Join(d, "file"), nil, 0o644)
	if err := catalog.WriteSnapshotEntry(filepath.Join(d, "file"), &catalog.SnapshotEntry{Source: "a:/b"}); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("entry of a file: %v", err)
	}
	os.Remove(filepath.Join(d, "file"))

	// Plain directories with entries are snapshots (never descended into);
	// one without an entry is walked (not a btrfs subvolume).
	os.MkdirAll(filepath.Join(d, "other"), 0o755)
	os.WriteFile(filepath.Join(d, "other", "x"), nil, 0o644)
	c, err := catalog.Scan(d)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Backups) != 2 || len(c.Problems) != 0 || strings.Join(c.Unknown, ",") != filepath.Join(d, "other", "x") {
		t.Fatalf("backups %d, problems %v, unknown %v", len(c.Backups), c.Problems, c.Unknown)
	}
	b := c.Backups[0]
	if b.Kind != catalog.KindSnapshot || b.Path != snaps[1] || b.Source != "atom:/home/foo/share" || b.Level != -1 || b.Size != 0 ||
		!b.Time.Equal(time.Date(2026, 11, 22, 3, 0, 5, 0, time.UTC)) || b.Meta.Extra["parent"] != "2026-11-21T03:00:00Z" {
		t.Errorf("backup %+v", b)
	}
	if ch, err := c.Chain(b); err != nil || len(ch) != 1 || ch[0] != b {
		t.Errorf("chain %v, %v", ch, err)
	}
	if f, ok := c.Find(snaps[0] + ".json"); !ok || f != c.Backups[1] {
		t.Errorf("find by entry: %v", f)
	}

	// Damaged entry: a problem, the directory still not walked; missing
	// snapshot directory; an entry next to a file.
	os.WriteFile(snaps[0]+".json", []byte(`{"format": "bkrun-snapshot/1", "source": ""}`), 0o644)
	os.RemoveAll(snaps[1])
	os.WriteFile(filepath.Join(d, "other", "f"), nil, 0o644)
	os.WriteFile(filepath.Join(d, "other", "f.json"), []byte(`{"format": "bkrun-snapshot/1"}`), 0o644)
	c, err = catalog.Scan(d)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range c.Problems {
		got = append(got, strings.TrimPrefix(p.Path, d+"/")+": "+p.Reason)
	}
	want := []string{
		"2026-11-21T03:00:00Z.json: damaged catalogue entry: no source",
		"2026-11-22T03:00:00Z.json: snapshot directory 2026-11-22T03:00:00Z is missing",
		"other/f.json: snapshot f is not a directory (----------)",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") || len(c.Backups) != 0 {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if strings.Join(c.Unknown, ",") != filepath.Join(d, "other", "x") {
		t.Errorf("unknown %v", c.Unknown)
	}
}

// Over SFTP: the entry written remotely (temporary name, rename) and read
// back by a remote scan; a stamp-named directory without an entry is
// listed once, not walked.
func TestSnapshotEntriesRemote(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	d := t.TempDir()
	snaps := mirror(t, d)
	os.Remove(snaps[0] + ".json")
	conn, err := ssh.Dial(t.Context(), s.Dest(), ssh.Options{Identity: []string{s.Identity()}, KnownHosts: s.KnownHosts(), ConfigFile: "none", AgentSocket: "none"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	e := &catalog.SnapshotEntry{Source: "atom:/srv", Extra: map[string]any{"parent": "2026-11-21T03:00:00Z"}}
	if err := catalog.WriteSnapshotEntryRemote(conn, snaps[1], e); err != nil {
		t.Fatal(err)
	}
	if err := catalog.WriteSnapshotEntryRemote(conn, filepath.Join(d, "nosuch"), e); err == nil || !strings.Contains(err.Error(), "nosuch") {
		t.Errorf("entry of a missing snapshot: %v", err)
	}
	dest := s.User() + "@127.0.0.1"
	c, err := catalog.ScanRemote(conn, dest, d)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Backups) != 1 || c.Backups[0].Path != dest+":"+snaps[1] || c.Backups[0].Source != "atom:/srv" || c.Backups[0].Kind != "snapshot" {
		t.Fatalf("backups %+v", c.Backups)
	}
	if len(c.Problems) != 0 || strings.Join(c.Unknown, ",") != dest+":"+snaps[0] {
		t.Errorf("problems %v, unknown %v", c.Problems, c.Unknown)
	}

	// catalog.record from Lua, over the same server.
	h := luatest.NewHost(t, luatest.HostOptions{Globals: map[string]string{
		"S": snaps[0], "DEST": dest, "PORT": strconv.Itoa(s.Port()), "ID": s.Identity(), "KH": s.KnownHosts()},
		Prelude: `local catalog = require "catalog"; `}, catalog.Module, ssh.Module)
	h.Run(t, `
		local p = catalog.record(DEST .. ":" .. S, {source = "/srv/share", started = "2026-11-21T03:00:00Z",
			ssh = {port = tonumber(PORT), identity = ID, known_hosts = KH}, extra = {note = "n"}})
		assert(p == DEST .. ":" .. S .. ".json", p)
	`)
	raw, err := os.ReadFile(snaps[0] + ".json")
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	for _, want := range []string{`"source": "` + host + `:/srv/share"`, `"started": "2026-11-21T03:00:00Z"`, `"note": "n"`} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("entry lacks %s:\n%s", want, raw)
		}
	}
}

// catalog.record locally, from Lua: options checked, the entry written, a
// cat:backups() table with parent.
func TestLuaRecord(t *testing.T) {
	d := t.TempDir()
	snap := filepath.Join(d, "2026-11-22T03:00:00Z")
	os.Mkdir(snap, 0o755)
	h := luatest.NewHost(t, luatest.HostOptions{Globals: map[string]string{"D": d, "S": snap},
		Prelude: `local catalog = require "catalog"; `}, catalog.Module)
	h.Run(t, `
		assert(catalog.record(S, {source = "atom:/srv", parent = "2026-11-21T03:00:00Z", started = 1763780400}) == S .. ".json")
		local b = catalog.scan(D):backups()
		assert(#b == 1 and b[1].kind == "snapshot" and b[1].path == S and b[1].parent == "2026-11-21T03:00:00Z", #b)
		assert(b[1].source == "atom:/srv" and b[1].size == 0 and b[1].level == nil and b[1].extra.parent, b[1].source)
	`)
	for _, c := range []struct{ code, want string }{
		{`catalog.record(S, {})`, "option 'source'"},
		{`catalog.record(S, {source = "a:/b", parent = "x/y"})`, "option 'parent'"},
		{`catalog.record(D .. "/nosuch", {source = "a:/b"})`, "no such file or directory"},
		{`catalog.record(S, {source = "a:/b", started = true})`, "option 'started'"},
	} {
		if msg := h.RunErr(t, c.code); !strings.Contains(msg, c.want) {
			t.Errorf("%s: %q, want %q", c.code, msg, c.want)
		}
	}
}
