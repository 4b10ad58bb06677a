package recover

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/bkrun/bkrun/stdlib/exec"
	"github.com/bkrun/bkrun/stdlib/stream"
)

// hanoi are the levels of the five simulated days (retain.hanoi's order).
var hanoi = []int{0, 3, 2, 5, 4}

// chain is a real dump chain: an ext4 filesystem changed over five
// simulated days, dumped each day at its Tower-of-Hanoi level against the
// last lower-level dump, through stream with lz4, with a catalogue entry
// whose times are the simulated days.
type chain struct {
	dir    string   // the backup directory (DEST/DOMAIN)
	paths  []string // the dump of each day
	states []state  // the filesystem after each day's changes (what its dump saw)
	fs     *ext4
}

func buildChain(t *testing.T) *chain {
	t.Helper()
	needTools(t, "mkfs.ext4", "losetup", "mount", "umount", "dump", "restore")
	root := t.TempDir()
	c := &chain{dir: filepath.Join(root, "backup", "vm"), fs: newExt4(t, root)}
	os.MkdirAll(c.dir, 0o755)
	m := c.fs.mnt
	big := make([]byte, 3<<20)
	rand.Read(big)
	changes := []func(){
		func() { // day 1
			write(t, m+"/d1/a", "a of day 1\n", 0o644)
			write(t, m+"/d1/sub/b", "b\n", 0o640)
			write(t, m+"/d2/c", "c of day 1\n", 0o644)
			write(t, m+"/top", "top\n", 0o644)
			write(t, m+"/big", string(big), 0o644)
			os.Symlink("top", m+"/link")
		},
		func() { // day 2
			write(t, m+"/d2/c", "c of day 2, longer\n", 0o644)
			os.Remove(m + "/d1/a")
			write(t, m+"/d1/sub/new", "new on day 2\n", 0o644)
			write(t, m+"/d3/x", "x\n", 0o644)
		},
		func() { // day 3
			os.Rename(m+"/top", m+"/top2")
			f, _ := os.OpenFile(m+"/big", os.O_WRONLY, 0)
			f.WriteAt([]byte("changed in the middle"), 1<<20)
			f.Close()
			os.RemoveAll(m + "/d3")
			write(t, m+"/d4/y", "y on day 3\n", 0o600)
		},
		func() { // day 4
			write(t, m+"/z", "z on day 4\n", 0o644)
			os.Chmod(m+"/d2/c", 0o600)
		},
		func() { // day 5
			os.Remove(m + "/d1/sub/new")
			write(t, m+"/z", "z on day 5\n", 0o644)
			write(t, m+"/d1/a", "a again on day 5\n", 0o644)
		},
	}
	type rec struct {
		level int
		hdr   DumpHeader
		day   int
	}
	var hist []rec
	for d, level := range hanoi {
		changes[d]()
		c.states = append(c.states, snapshot(t, m))
		c.fs.umount(t)
		// dump compares change times in whole seconds: let the second of
		// the changes pass, so that the next dump leaves out what did not
		// change since this one (the incrementals stay incremental).
		time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second + 20*time.Millisecond)))
		at := day1.AddDate(0, 0, d)
		var base rec
		for _, r := range hist {
			if r.level < level {
				base = r // the most recent lower level
			}
		}
		path := filepath.Join(c.dir, "1."+at.Format("0102")+".dump.lz4")
		dumpTo(t, c.fs.dev, path, level, base.hdr.Date, at, day1.AddDate(0, 0, base.day))
		b, _, err := Resolve(path, Options{})
		if err != nil {
			t.Fatal(err)
		}
		h, err := ReadDumpHeader(context.Background(), b)
		if err != nil {
			t.Fatal(err)
		}
		if h.Level != level || (level > 0 && !h.Base.Equal(base.hdr.Date)) {
			t.Fatalf("day %d: header %+v, want level %d against %v", d+1, h, level, base.hdr.Date)
		}
		hist = append(hist, rec{level, h, d})
		c.paths = append(c.paths, path)
		c.fs.mount(t)
	}
	return c
}

func TestRestoreDumpChain(t *testing.T) {
	c := buildChain(t)
	ctx := context.Background()
	for _, day := range []int{5, 4, 2} {
		target := filepath.Join(t.TempDir(), "restored")
		r, err := Restore(ctx, c.paths[day-1], target, Options{})
		if err != nil {
			t.Fatalf("day %d: %v", day, err)
		}
		// Day 5 (level 4) needs days 1 and 3; day 4 (level 5) days 1, 3
		// and 4; day 2 (level 3) day 1.
		want := map[int][]string{5: {c.paths[0], c.paths[2], c.paths[4]}, 4: {c.paths[0], c.paths[2], c.paths[3]}, 2: {c.paths[0], c.paths[1]}}[day]
		if strings.Join(r.Applied, " ") != strings.Join(want, " ") {
			t.Errorf("day %d: applied %v, want %v", day, r.Applied, want)
		}
		got := snapshot(t, target)
		if d := diff(c.states[day-1], got); len(d) > 0 {
			t.Errorf("day %d: restored tree differs from the filesystem of that day:\n%s", day, strings.Join(d, "\n"))
		}
		t.Logf("day %d: chain of %d dumps restored, %d names compared (contents, modes, links, presence)", day, len(r.Applied), len(got))
	}
}

func TestRestoreRefusesBrokenChain(t *testing.T) {
	c := buildChain(t)
	ctx := context.Background()
	// A non-empty target is refused.
	busy := t.TempDir()
	write(t, busy+"/keep", "mine", 0o644)
	if _, err := Restore(ctx, c.paths[4], busy, Options{}); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("non-empty target: %v", err)
	}
	// Day 3's level 2 is gone: day 5's level 4 would be applied on day
	// 2's level 3, which is not what it was taken against.
	gone := filepath.Join(t.TempDir(), "gone")
	os.Mkdir(gone, 0o755)
	for _, p := range []string{c.paths[2], stream.MetaPath(c.paths[2])} {
		if err := os.Rename(p, filepath.Join(gone, filepath.Base(p))); err != nil {
			t.Fatal(err)
		}
	}
	target := filepath.Join(t.TempDir(), "restored")
	empty := t.TempDir()
	for _, tg := range []string{target, empty} {
		_, err := Restore(ctx, c.paths[4], tg, Options{})
		if err == nil || !strings.Contains(err.Error(), "missing dump of 2026-11-03") || !strings.Contains(err.Error(), c.paths[4]) {
			t.Errorf("missing level: %v", err)
		} else {
			t.Logf("refused: %v", err)
		}
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("target created: %v", err)
	}
	if ents, _ := os.ReadDir(empty); len(ents) > 0 {
		t.Errorf("target written: %v", ents)
	}
	// Put it back, and corrupt one byte of day 3 instead: refused before
	// the level 0 is written.
	for _, p := range []string{c.paths[2], stream.MetaPath(c.paths[2])} {
		os.Rename(filepath.Join(gone, filepath.Base(p)), p)
	}
	flip(t, c.paths[2])
	_, err := Restore(ctx, c.paths[4], target, Options{})
	if !errors.Is(err, stream.ErrCorrupt) || !strings.Contains(err.Error(), c.paths[2]) {
		t.Errorf("corrupt piece: %v", err)
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("target created: %v", err)
	}
}

// flip changes one byte in the middle of a file, keeping its size.
func flip(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	var b [1]byte
	off := st.Size() / 2
	f.ReadAt(b[:], off)
	b[0] ^= 0x40
	f.WriteAt(b[:], off)
}

// An incremental taken with a -T date that is not the exact date of the
// dump below it: restore -r would stop with "Incremental tape too high"
// after writing the level 0; recover refuses up front.
func TestRestoreRefusesMismatchedBaseDate(t *testing.T) {
	c := buildChain(t)
	bad := filepath.Join(t.TempDir(), "vm")
	os.Mkdir(bad, 0o755)
	for _, p := range []string{c.paths[0], stream.MetaPath(c.paths[0])} {
		b, _ := os.ReadFile(p)
		os.WriteFile(filepath.Join(bad, filepath.Base(p)), b, 0o644)
	}
	b0, _, _ := Resolve(c.paths[0], Options{})
	h0, _ := ReadDumpHeader(context.Background(), b0)
	c.fs.umount(t)
	inc := filepath.Join(bad, "1.1102.dump.lz4")
	dumpTo(t, c.fs.dev, inc, 1, h0.Date.Add(-5e9), day1.AddDate(0, 0, 1), day1)
	c.fs.mount(t)
	target := filepath.Join(t.TempDir(), "restored")
	_, err := Restore(context.Background(), inc, target, Options{})
	if err == nil || !strings.Contains(err.Error(), "restore -r refuses such a chain") {
		t.Fatalf("mismatched -T: %v", err)
	}
	t.Logf("refused: %v", err)
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("target created: %v", err)
	}
}

func TestVerifyDump(t *testing.T) {
	c := buildChain(t)
	ctx := context.Background()
	var labels []string
	var last, total int64
	var ended []bool
	progress := func(label string, n int64) (func(int64), func(bool)) {
		labels, total = append(labels, label), n
		return func(done int64) { last = done }, func(ok bool) { ended = append(ended, ok) }
	}
	r, err := Verify(ctx, c.paths[0], Options{Progress: progress})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(labels, " ") != "verify" || last != r.Bytes || total != r.Bytes || len(ended) != 1 || !ended[0] {
		t.Errorf("progress: %v %d/%d %v", labels, last, total, ended)
	}
	// The level 0 lists every name of day 1.
	if r.Entries != len(c.states[0]) || r.Bytes == 0 || r.Kind != "dump" {
		t.Errorf("verify: %+v, want %d entries", r, len(c.states[0]))
	}
	r4, err := Verify(ctx, c.paths[4], Options{})
	if err != nil || r4.Entries == 0 || r4.Entries >= r.Entries {
		t.Errorf("verify incremental: %+v %v", r4, err)
	}
	t.Logf("level 0: %d bytes, %d entries; level 4: %d bytes, %d entries", r.Bytes, r.Entries, r4.Bytes, r4.Entries)
	if r.Header.Level != 0 || r4.Header.Level != 4 || !r4.Header.Base.After(r.Header.Date) {
		t.Errorf("headers: %+v %+v", r.Header, r4.Header)
	}
	// A dump cut in the middle, stored with the hash of what is left: the
	// stream checks out and restore -t, which stops after the directories,
	// lists it; the walk (restore -x -N) finds it truncated.
	b0, _, _ := Resolve(c.paths[0], Options{})
	var whole bytes.Buffer
	if _, err := stream.Decode(ctx, b0.Path, b0.Meta, func(block []byte, _ bool) error { whole.Write(block); return nil }, nil); err != nil {
		t.Fatal(err)
	}
	cutDir := filepath.Join(t.TempDir(), "vm")
	os.Mkdir(cutDir, 0o755)
	cut := filepath.Join(cutDir, "1.1101.dump.lz4")
	writeBackup(t, bytes.NewReader(whole.Bytes()[:whole.Len()/2]), cut, "lz4", "", day1,
		map[string]any{"domain": "vm", "partition": float64(1), "level": float64(0), "base": 0.0})
	_, err = Verify(ctx, cut, Options{})
	if err == nil || !strings.Contains(err.Error(), cut+": restore -x -N -a -o -f - -T ") || !strings.Contains(err.Error(), "the archive ends early: ") || !strings.Contains(err.Error(), "not found on tape") {
		t.Errorf("truncated archive: %v", err)
	} else {
		t.Logf("truncated archive: %v", err)
	}
	flip(t, c.paths[0])
	_, err = Verify(ctx, c.paths[0], Options{})
	if !errors.Is(err, stream.ErrCorrupt) || !strings.Contains(err.Error(), c.paths[0]) {
		t.Errorf("corrupt dump: %v", err)
	}
	// A stream whose hash is right but which is not a dump archive: the
	// header says so.
	notDump := filepath.Join(c.dir, "1.1201.dump.lz4")
	writeBackup(t, strings.NewReader(strings.Repeat("not a dump\n", 5000)), notDump, "lz4", "", day1.AddDate(0, 1, 0),
		map[string]any{"domain": "vm", "partition": float64(1), "level": float64(0), "base": 0.0})
	_, err = Verify(ctx, notDump, Options{})
	if err == nil || !strings.Contains(err.Error(), notDump+": not a dump archive (magic") {
		t.Errorf("not a dump: %v", err)
	} else {
		t.Logf("not a dump: %v", err)
	}
}

func TestDumpFilesAndExtract(t *testing.T) {
	c := buildChain(t)
	ctx := context.Background()
	entries, err := Files(ctx, c.paths[4], Options{})
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]Entry{}
	for _, e := range entries {
		listed[e.Path] = e
	}
	for p := range c.states[4] {
		if _, ok := listed[p]; !ok {
			t.Errorf("files: %s missing", p)
		}
	}
	// The documented limit: names deleted between dumps of the chain
	// (top renamed on day 3, d1/sub/new deleted on day 5) are still
	// listed; names that never were in a dump of the chain are not.
	var extra []string
	for p := range listed {
		if _, ok := c.states[4][p]; !ok {
			extra = append(extra, p)
		}
	}
	sort.Strings(extra)
	if strings.Join(extra, " ") != "d1/sub/new top" {
		t.Errorf("names listed beyond day 5's tree: %v", extra)
	}
	if listed["d1/a"].Backup != c.paths[4] || listed["d1/sub/b"].Backup != c.paths[0] || !listed["d1/sub"].Dir {
		t.Errorf("origins: %+v %+v %+v", listed["d1/a"], listed["d1/sub/b"], listed["d1/sub"])
	}
	t.Logf("files: %d names from a chain of 3 dumps (%d in the tree of day 5)", len(entries), len(c.states[4]))
	scratch := t.TempDir()
	exact, err := Files(ctx, c.paths[4], Options{Exact: true, Scratch: scratch})
	if err != nil {
		t.Fatal(err)
	}
	var exactNames []string
	for _, e := range exact {
		exactNames = append(exactNames, e.Path)
	}
	var want []string
	for p := range c.states[4] {
		want = append(want, p)
	}
	sort.Strings(want)
	if strings.Join(exactNames, " ") != strings.Join(want, " ") {
		t.Errorf("exact files: %v\nwant %v", exactNames, want)
	}
	if ents, _ := os.ReadDir(scratch); len(ents) > 0 {
		t.Errorf("exact listing left %v in scratch", ents)
	}

	dest := filepath.Join(t.TempDir(), "out")
	out, err := Extract(ctx, c.paths[4], []string{"d2/c", "/d1/a", "./big", "link", "d1/sub"}, dest, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 5 || out[1] != filepath.Join(dest, "d1/a") {
		t.Errorf("extract returned %v", out)
	}
	got := snapshot(t, dest)
	for _, p := range []string{"d2/c", "d1/a", "big", "link", "d1/sub/b", "d1/sub"} {
		if got[p] != c.states[4][p] {
			t.Errorf("extracted %s: %q, want %q", p, got[p], c.states[4][p])
		}
	}
	for p := range got {
		if strings.HasPrefix(p, ".bkrun") {
			t.Errorf("staging left: %s", p)
		}
	}
	// Exact: top (renamed away on day 3) is not in day 5's tree, d1/sub
	// comes without d1/sub/new (deleted on day 5).
	dest3 := filepath.Join(t.TempDir(), "out3")
	if _, err := Extract(ctx, c.paths[4], []string{"top"}, dest3, Options{Exact: true, Scratch: scratch}); err == nil || !strings.Contains(err.Error(), "not in the backup: top") {
		t.Errorf("exact, deleted name: %v", err)
	}
	if _, err := Extract(ctx, c.paths[4], []string{"d1/sub", "z"}, dest3, Options{Exact: true, Scratch: scratch}); err != nil {
		t.Fatal(err)
	}
	got3 := snapshot(t, dest3)
	want3 := state{}
	for _, p := range []string{"d1", "d1/sub", "d1/sub/b", "z"} {
		want3[p] = c.states[4][p]
	}
	if d := diff(want3, got3); len(d) > 0 {
		t.Errorf("exact extract:\n%s", strings.Join(d, "\n"))
	}
	if ents, _ := os.ReadDir(scratch); len(ents) > 0 {
		t.Errorf("exact extract left %v in scratch", ents)
	}
	// A name not in the backup: refused, nothing written.
	dest2 := filepath.Join(t.TempDir(), "out2")
	_, err = Extract(ctx, c.paths[4], []string{"d2/c", "etc/nothere"}, dest2, Options{})
	if err == nil || !strings.Contains(err.Error(), "etc/nothere") || strings.Contains(err.Error(), "d2/c") {
		t.Errorf("missing name: %v", err)
	}
	if ents, _ := os.ReadDir(dest2); len(ents) > 0 {
		t.Errorf("written despite the error: %v", ents)
	}
	if _, err := Extract(ctx, c.paths[4], []string{"../etc/passwd"}, dest2, Options{}); err == nil {
		t.Error("'..' accepted")
	}
}

// restore runs without a controlling terminal (exec.Cmd.NoTTY): in a new
// session, so that a question on /dev/tty reads end of file instead of
// stopping a background process with SIGTTIN in the REPL.
func TestCommandsRunWithoutTerminal(t *testing.T) {
	var out strings.Builder
	_, err := exec.Run(context.Background(), exec.Cmd{Argv: []string{"sh", "-c", `echo $$ $(cut -d" " -f6 /proc/$$/stat)`}, Stdout: &out, NoTTY: true})
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out.String())
	if len(f) != 2 || f[0] != f[1] {
		t.Errorf("pid and session: %q (want a session of its own)", out.String())
	}
}
