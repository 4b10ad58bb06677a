package retain

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func day(s string) time.Time {
	t, err := time.ParseInLocation("2006-01-02", s, time.UTC)
	if err != nil {
		panic(err)
	}
	return t
}

func levels(from string, n int, c Cycle) string {
	var b []string
	t := day(from)
	for i := 0; i < n; i++ {
		b = append(b, string(rune('0'+Level(t.AddDate(0, 0, i), HanoiOptions{Cycle: c}))))
	}
	return strings.Join(b, " ")
}

func TestHanoiSeqIsDump8(t *testing.T) {
	var got []string
	for n := 0; n <= 12; n++ {
		got = append(got, string(rune('0'+HanoiSeq(n))))
	}
	if s := strings.Join(got, " "); s != "0 3 2 5 4 7 6 9 8 9 9 9 9" {
		t.Errorf("HanoiSeq(0..12) = %s", s)
	}
}

func TestLevelMonthly(t *testing.T) {
	for _, tc := range []struct {
		from string
		days int
		want string
	}{
		// January 2026: 31 days.
		{"2026-01-01", 31, "0 3 2 5 4 7 6 9 8 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9"},
		// February 2026: 28 days, then March starts again at 0.
		{"2026-02-01", 30, "0 3 2 5 4 7 6 9 8 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 0 3"},
		// Leap February 2028: 29 days.
		{"2028-02-27", 4, "9 9 9 0"},
		// A 30-day month into a 31-day one.
		{"2026-04-29", 4, "9 9 0 3"},
	} {
		if got := levels(tc.from, tc.days, Monthly); got != tc.want {
			t.Errorf("monthly from %s:\n got  %s\n want %s", tc.from, got, tc.want)
		}
	}
}

func TestLevelWeekly(t *testing.T) {
	// 2026-01-05 is a Monday.
	if got, want := levels("2026-01-01", 14, Weekly), "5 4 7 6 0 3 2 5 4 7 6 0 3 2"; got != want {
		t.Errorf("weekly:\n got  %s\n want %s", got, want)
	}
}

func TestLevelMonthlyWeekly(t *testing.T) {
	// dump(8): level 0 monthly, level 1 weekly, 3 2 5 4 7 6 between.
	// 2026-01-01 is a Thursday; Mondays 5, 12, 19, 26; February 1 a Sunday, 2 a Monday.
	got := levels("2026-01-01", 34, MonthlyWeekly)
	want := "0 3 2 5 1 3 2 5 4 7 6 1 3 2 5 4 7 6 1 3 2 5 4 7 6 1 3 2 5 4 7 0 1 3"
	if got != want {
		t.Errorf("monthly-weekly:\n got  %s\n want %s", got, want)
	}
}

func TestLevelUsesLocalCalendarDay(t *testing.T) {
	tokyo := time.FixedZone("JST", 9*3600)
	// 2026-01-31T20:00Z is already February 1 in Tokyo.
	ts := time.Date(2026, 1, 31, 20, 0, 0, 0, time.UTC)
	if l := Level(ts, HanoiOptions{}); l != 9 {
		t.Errorf("UTC: %d", l)
	}
	if l := Level(ts.In(tokyo), HanoiOptions{}); l != 0 {
		t.Errorf("Tokyo: %d", l)
	}
}

func TestParseCycle(t *testing.T) {
	for _, s := range []string{"monthly", "weekly", "monthly-weekly"} {
		c, err := ParseCycle(s)
		if err != nil || c.String() != s {
			t.Errorf("%s: %v %v", s, c, err)
		}
	}
	if _, err := ParseCycle("daily"); err == nil {
		t.Error("daily accepted")
	}
}

func TestHistoryBase(t *testing.T) {
	p := filepath.Join(t.TempDir(), "dumps.json")
	h := &History{Path: p}
	if err := h.Load(); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.Base("master/1", 3); ok {
		t.Error("base in an empty history")
	}
	rec := func(id, d string, level int) {
		t.Helper()
		if err := h.Record(id, day(d), level); err != nil {
			t.Fatal(err)
		}
	}
	// A month of Hanoi dumps of master/1; master/2 only has a level 0.
	for i := 0; i < 10; i++ {
		d := day("2026-01-01").AddDate(0, 0, i)
		rec("master/1", d.Format("2006-01-02"), Level(d, HanoiOptions{}))
	}
	rec("master/2", "2025-12-01", 0)
	base := func(id string, level int) string {
		b, ok := h.Base(id, level)
		if !ok {
			return "none"
		}
		return b.Format("2006-01-02")
	}
	for _, tc := range []struct {
		id    string
		level int
		want  string
	}{
		{"master/1", 0, "none"},
		{"master/1", 1, "2026-01-01"},
		{"master/1", 3, "2026-01-03"}, // level 2 on the 3rd
		{"master/1", 5, "2026-01-05"}, // level 4 on the 5th
		{"master/1", 9, "2026-01-09"}, // level 8 on the 9th
		{"master/2", 3, "2025-12-01"},
		{"master/3", 3, "none"},
	} {
		if got := base(tc.id, tc.level); got != tc.want {
			t.Errorf("Base(%s, %d) = %s, want %s", tc.id, tc.level, got, tc.want)
		}
	}
	// One entry per level, as dumpdates keeps.
	if n := len(h.Entries("master/1")); n != 9 { // levels 0 3 2 5 4 7 6 9 8
		t.Errorf("%d entries", n)
	}
	// A new month: level 0 again; the level 3 base is now the new level 0.
	rec("master/1", "2026-02-01", 0)
	if got := base("master/1", 3); got != "2026-02-01" {
		t.Errorf("after new level 0: %s", got)
	}
	// Reloaded from disk by another History.
	h2 := &History{Path: p}
	if err := h2.Load(); err != nil {
		t.Fatal(err)
	}
	if b, _ := h2.Base("master/2", 1); !b.Equal(day("2025-12-01")) {
		t.Errorf("reloaded: %v", b)
	}
	// Record merges with what others wrote since Load.
	if err := h2.Record("other/1", day("2026-02-02"), 0); err != nil {
		t.Fatal(err)
	}
	rec("master/1", "2026-02-02", 3)
	if err := h2.Load(); err != nil {
		t.Fatal(err)
	}
	if _, ok := h2.Base("other/1", 1); !ok {
		t.Error("record lost another writer's entry")
	}
	if got, _ := h2.Base("master/1", 5); !got.Equal(day("2026-02-02")) {
		t.Errorf("master/1 base 5 = %v", got)
	}
	// The file is JSON and no temporary files are left.
	data, _ := os.ReadFile(p)
	var f historyFile
	if err := json.Unmarshal(data, &f); err != nil || f.Version != 1 {
		t.Errorf("file: %v %s", err, data)
	}
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Errorf("directory holds %d files", len(ents))
	}
}

func TestHistoryErrors(t *testing.T) {
	d := t.TempDir()
	h := &History{Path: filepath.Join(d, "h.json")}
	if err := h.Record("", time.Now(), 0); err == nil {
		t.Error("empty id accepted")
	}
	if err := h.Record("a", time.Now(), 10); err == nil || !strings.Contains(err.Error(), "out of range") {
		t.Errorf("level 10: %v", err)
	}
	os.WriteFile(h.Path, []byte("garbage"), 0o644)
	if err := h.Load(); err == nil || !strings.Contains(err.Error(), "not a bkrun dump history") {
		t.Errorf("garbage: %v", err)
	}
	h = &History{Path: filepath.Join(d, "missing-dir", "h.json")}
	if err := h.Record("a", time.Now(), 0); err == nil {
		t.Error("record into a missing directory succeeded")
	}
}
