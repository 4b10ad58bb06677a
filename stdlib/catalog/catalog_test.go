package catalog_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/bkrun/bkrun/stdlib/catalog"
	"github.com/bkrun/bkrun/stdlib/stream"
)

var day1 = time.Date(2026, 11, 1, 3, 0, 0, 0, time.UTC)

// write makes a real backup at dir/name with stream.Copy and commits it
// with its catalogue entry, as stream.copy does, at a simulated time.
func write(t *testing.T, path string, data []byte, at time.Time, kind string, extra map[string]any) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	enc, err := stream.NewEncoder("lz4")
	if err != nil {
		t.Fatal(err)
	}
	sink, err := stream.CreateFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Abort()
	st, err := stream.Copy(context.Background(), bytes.NewReader(data), sink, stream.CopyOptions{Encoder: enc})
	if err != nil {
		t.Fatal(err)
	}
	source := "/dev/VGatom/" + filepath.Base(filepath.Dir(path))
	if kind == "" {
		source = "dump -0 -q -f - /dev/loop0"
	}
	m := &stream.Meta{
		Format: stream.MetaFormat, Source: source, SourceKind: kind, Size: st.Size, Codec: enc.Name(),
		BlockSize: stream.BlockSize, HashAlgo: stream.HashAlgo, Hash: st.Hash, ZeroBytes: st.ZeroBytes,
		BytesWritten: st.BytesWritten, Started: at.Add(-time.Minute), Finished: at, Seconds: 60,
		Host: "atom", BkrunVersion: "test", Extra: extra,
	}
	if err := sink.Commit(m); err != nil {
		t.Fatal(err)
	}
}

// hanoi are the Tower-of-Hanoi levels of days 1-9 (retain.hanoi).
var hanoi = []int{0, 3, 2, 5, 4, 7, 6, 9, 8}

// dumps writes n days of dumps of master/1 and master/2 at Hanoi levels,
// each with base = the time of the dump it was taken against (what
// retain.history's base gives xen-backup.lua), and returns the paths of
// master/1's dumps by day (index 0 = day 1).
func dumps(t *testing.T, dir string, days int) []string {
	var paths []string
	for p := 1; p <= 2; p++ {
		type rec struct {
			level int
			at    time.Time
		}
		var hist []rec
		for d := 0; d < days; d++ {
			at := day1.AddDate(0, 0, d)
			lvl := hanoi[d]
			base := 0.0
			var bt time.Time
			for _, r := range hist {
				if r.level < lvl && r.at.After(bt) {
					bt = r.at
				}
			}
			if lvl > 0 {
				// The history records the time taken before the run started.
				base = float64(bt.Add(-2 * time.Minute).Unix())
			}
			path := filepath.Join(dir, "master", at.Format("0102")+"."+string(rune('0'+p))+".dump.lz4")
			write(t, path, bytes.Repeat([]byte{byte(d), byte(p)}, 1000*(d+1)), at, "",
				map[string]any{"domain": "master", "partition": float64(p), "level": float64(lvl), "base": base})
			hist = append(hist, rec{lvl, at})
			if p == 1 {
				paths = append(paths, path)
			}
		}
	}
	return paths
}

func TestScanGroupsAndOrders(t *testing.T) {
	dir := t.TempDir()
	m1 := dumps(t, dir, 5)
	img := filepath.Join(dir, "images", "disk.img.lz4")
	write(t, img, bytes.Repeat([]byte("x"), 5000), day1.Add(time.Hour), "device", nil)
	img2 := filepath.Join(dir, "images", "disk2.img.lz4")
	write(t, img2, bytes.Repeat([]byte("y"), 5000), day1.Add(48*time.Hour), "device", nil)
	send := filepath.Join(dir, "btrfs", "home.send")
	write(t, send, []byte("btrfs-stream"), day1, "btrfs-send", nil)

	c, err := catalog.Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Problems) != 0 || len(c.Unknown) != 0 {
		t.Fatalf("problems %v unknown %v", c.Problems, c.Unknown)
	}
	var got []string
	for _, s := range c.Sources() {
		got = append(got, s.Name)
		for i := 1; i < len(s.Backups); i++ {
			if !s.Backups[i-1].Time.After(s.Backups[i].Time) {
				t.Errorf("%s: not newest first: %v then %v", s.Name, s.Backups[i-1].Time, s.Backups[i].Time)
			}
		}
	}
	want := []string{"/dev/VGatom/btrfs", "/dev/VGatom/images", "master/1", "master/2"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("sources %q, want %q", got, want)
	}
	src := c.Sources()
	if k := src[0].Backups[0].Kind; k != catalog.KindStream {
		t.Errorf("btrfs send kind %q", k)
	}
	if b := src[1].Backups; b[0].Path != img2 || b[1].Path != img || b[0].Kind != catalog.KindImage || b[0].Level != -1 || b[0].Size != 5000 {
		t.Errorf("images: %+v %+v", b[0], b[1])
	}
	m := src[2].Backups
	if len(m) != 5 || m[0].Path != m1[4] || m[4].Path != m1[0] {
		t.Fatalf("master/1 backups: %d, first %s", len(m), m[0].Path)
	}
	for i, b := range m {
		d := 4 - i
		if b.Kind != catalog.KindDump || b.Level != hanoi[d] || !b.Time.Equal(day1.AddDate(0, 0, d)) {
			t.Errorf("day %d: kind %s level %d time %v", d+1, b.Kind, b.Level, b.Time)
		}
		if (b.Level == 0) != b.Base.IsZero() {
			t.Errorf("day %d: base %v", d+1, b.Base)
		}
	}
}

// TestChains follows dump(8): a level-N dump is taken against the most
// recent earlier dump at a lower level. Hanoi days 1-9 are levels
// 0 3 2 5 4 7 6 9 8.
func TestChains(t *testing.T) {
	dir := t.TempDir()
	p := dumps(t, dir, 9)
	c, err := catalog.Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int][]int{ // day -> chain days, oldest first
		1: {1},
		2: {1, 2},       // L3 on L0
		3: {1, 3},       // L2 on L0 (day 2's L3 is not lower)
		4: {1, 3, 4},    // L5 on L2
		5: {1, 3, 5},    // L4 on L2 (day 4's L5 is not lower)
		6: {1, 3, 5, 6}, // L7 on L4
		7: {1, 3, 5, 7},
		8: {1, 3, 5, 7, 8},
		9: {1, 3, 5, 7, 9},
	}
	for d, days := range want {
		b, ok := c.Find(p[d-1])
		if !ok {
			t.Fatalf("day %d: %s not found", d, p[d-1])
		}
		chain, err := c.Chain(b)
		if err != nil {
			t.Fatalf("day %d: %v", d, err)
		}
		var got []int
		for _, x := range chain {
			for i, q := range p {
				if q == x.Path {
					got = append(got, i+1)
				}
			}
		}
		if !reflect.DeepEqual(got, days) {
			t.Errorf("chain of day %d (level %d): days %v, want %v", d, hanoi[d-1], got, days)
		}
	}
	// An image is its own chain; Find takes the entry's path and a relative path too.
	if b, ok := c.Find(strings.TrimPrefix(p[0]+".json", dir+"/")); !ok || b.Path != p[0] {
		t.Errorf("find relative entry path: %v %v", b, ok)
	}
}

func TestChainMissingLevel0(t *testing.T) {
	dir := t.TempDir()
	p := dumps(t, dir, 5)
	os.Remove(p[0])
	os.Remove(p[0] + ".json")
	c, err := catalog.Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := c.Find(p[4])
	_, err = c.Chain(b)
	want := "master/1: level 2 of 2026-11-03 needs a lower-level dump before it; none found (missing level 0?)"
	if err == nil || err.Error() != want {
		t.Fatalf("chain error %v, want %q", err, want)
	}
	// Day 2's level 3 also needs the lost level 0; master/2 is whole.
	b, _ = c.Find(p[1])
	if _, err := c.Chain(b); err == nil || !strings.Contains(err.Error(), "level 3 of 2026-11-02") {
		t.Errorf("day 2: %v", err)
	}
	b, _ = c.Find(strings.Replace(p[4], ".1.dump", ".2.dump", 1))
	if ch, err := c.Chain(b); err != nil || len(ch) != 3 {
		t.Errorf("master/2 day 5: %v %v", ch, err)
	}
}

// A middle dump deleted: day 5's level 4 would fall back on day 1's level
// 0, but it was taken against day 3: the base date shows the gap.
func TestChainMissingMiddleByBase(t *testing.T) {
	dir := t.TempDir()
	p := dumps(t, dir, 5)
	os.Remove(p[2])
	os.Remove(p[2] + ".json")
	c, err := catalog.Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := c.Find(p[4])
	_, err = c.Chain(b)
	if err == nil || !strings.Contains(err.Error(), "master/1: level 4 of 2026-11-05 was taken against a dump of 2026-11-03") ||
		!strings.Contains(err.Error(), "missing dump of 2026-11-03") {
		t.Fatalf("chain error %v", err)
	}
}

func TestProblemsAndUnknown(t *testing.T) {
	dir := t.TempDir()
	p := dumps(t, dir, 2)
	good := filepath.Join(dir, "img", "good.img")
	write(t, good, []byte("good"), day1, "file", nil)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// A damaged entry (its data file is then not listed as unknown).
	damaged := filepath.Join(dir, "img", "damaged.img")
	write(t, damaged, []byte("damaged"), day1, "file", nil)
	must(os.WriteFile(damaged+".json", []byte(`{"format": "bkrun-image/1", "size": `), 0o644))
	// Another format.
	other := filepath.Join(dir, "img", "other.img")
	write(t, other, []byte("other"), day1, "file", nil)
	b, _ := os.ReadFile(other + ".json")
	must(os.WriteFile(other+".json", bytes.Replace(b, []byte("bkrun-image/1"), []byte("bkrun-image/9"), 1), 0o644))
	// Data file missing.
	must(os.Remove(p[1]))
	// Size mismatch.
	trunc := filepath.Join(dir, "img", "trunc.img")
	write(t, trunc, bytes.Repeat([]byte("t"), 100000), day1, "file", nil)
	must(os.Truncate(trunc, 10))
	// A stray file, a symlink, temporary files.
	stray := filepath.Join(dir, "img", "notes.txt")
	must(os.WriteFile(stray, []byte("hi"), 0o644))
	link := filepath.Join(dir, "img", "link.img")
	must(os.Symlink(good, link))
	partial := filepath.Join(dir, "master", ".1104.1.dump.lz4.partial-123456")
	must(os.WriteFile(partial, []byte("half"), 0o644))
	partialMeta := filepath.Join(dir, "master", ".1104.1.dump.lz4.json.partial-99")
	must(os.WriteFile(partialMeta, []byte("{"), 0o644))

	c, err := catalog.Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, pr := range c.Problems {
		got[pr.Path] = pr.Reason
	}
	want := map[string]string{
		damaged + ".json": "damaged catalogue entry: not a bkrun catalogue file: unexpected end of JSON input",
		other + ".json":   `damaged catalogue entry: unknown catalogue format "bkrun-image/9" (want bkrun-image/1)`,
		p[1] + ".json":    "data file " + filepath.Base(p[1]) + " is missing",
		trunc + ".json":   "data file trunc.img is 10 bytes, the catalogue entry says ",
		partial:           "incomplete upload (temporary file)",
		partialMeta:       "incomplete upload (temporary file)",
	}
	if len(got) != len(want) {
		t.Errorf("problems: %v", c.Problems)
	}
	for k, w := range want {
		if !strings.HasPrefix(got[k], w) {
			t.Errorf("problem %s: %q, want %q", k, got[k], w)
		}
	}
	if !reflect.DeepEqual(c.Unknown, []string{link, stray}) {
		t.Errorf("unknown %q", c.Unknown)
	}
	var paths []string
	for _, b := range c.Backups {
		paths = append(paths, b.Path)
	}
	if !reflect.DeepEqual(paths, []string{good, p[0], filepath.Join(dir, "master", "1102.2.dump.lz4"), filepath.Join(dir, "master", "1101.2.dump.lz4")}) {
		t.Errorf("backups %q", paths)
	}
}

func TestScanErrors(t *testing.T) {
	if _, err := catalog.Scan(filepath.Join(t.TempDir(), "nope")); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing dir: %v", err)
	}
	f := filepath.Join(t.TempDir(), "f")
	os.WriteFile(f, nil, 0o644)
	if _, err := catalog.Scan(f); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("file: %v", err)
	}
	// Empty directory: an empty catalogue.
	c, err := catalog.Scan(t.TempDir())
	if err != nil || len(c.Backups)+len(c.Problems)+len(c.Unknown) != 0 || len(c.Sources()) != 0 {
		t.Errorf("empty: %+v %v", c, err)
	}
}
