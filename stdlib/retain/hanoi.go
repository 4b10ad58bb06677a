package retain

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"
)

// Cycle is the period after which the dump schedule starts again at level 0.
type Cycle int

const (
	// Monthly: level 0 on the 1st of each month, then the dump(8) daily
	// sequence 3 2 5 4 7 6 9 8 9 9 ... for the 2nd, 3rd, ... day.
	Monthly Cycle = iota
	// Weekly: level 0 every Monday, then 3 2 5 4 7 6 Tuesday to Sunday.
	Weekly
	// MonthlyWeekly is dump(8)'s complete scheme: level 0 on the 1st of
	// the month, level 1 every other Monday, and the daily sequence
	// 3 2 5 4 7 6 restarting after each of them.
	MonthlyWeekly
)

var cycleNames = map[Cycle]string{Monthly: "monthly", Weekly: "weekly", MonthlyWeekly: "monthly-weekly"}

func (c Cycle) String() string {
	if s, ok := cycleNames[c]; ok {
		return s
	}
	return fmt.Sprintf("Cycle(%d)", int(c))
}

// ParseCycle reads "monthly", "weekly" or "monthly-weekly".
func ParseCycle(s string) (Cycle, error) {
	for c, name := range cycleNames {
		if s == name {
			return c, nil
		}
	}
	return 0, fmt.Errorf("unknown cycle %q (want monthly, weekly or monthly-weekly)", s)
}

// HanoiOptions tune Level.
type HanoiOptions struct {
	Cycle Cycle // Monthly by default
}

// hanoiSeq is the daily sequence dump(8) gives after a level 0 (or, in
// its weekly scheme, after the weekly level 1): 3 2 5 4 7 6 9 8 9 9 ...
// Element i is the level of day i+1 after the cycle's start.
var hanoiSeq = [...]int{3, 2, 5, 4, 7, 6, 9, 8}

// HanoiSeq returns the level of the n-th day (n >= 1) after a cycle's
// start in dump(8)'s modified Tower of Hanoi sequence: n = 1..8 give
// 3 2 5 4 7 6 9 8 (pairs of levels counting up, the higher one first),
// and every later day gives 9. n <= 0 gives 0.
func HanoiSeq(n int) int {
	switch {
	case n <= 0:
		return 0
	case n <= len(hanoiSeq):
		return hanoiSeq[n-1]
	default:
		return 9
	}
}

// Level is the dump level for the calendar day of t (in t's location).
//
// The rule: let n be the number of days since the start of t's cycle (0
// on the first day: the 1st of the month for Monthly, Monday for Weekly).
// Day n = 0 is level 0; day n >= 1 is HanoiSeq(n): 3 2 5 4 7 6 9 8, then
// 9 for every later day, exactly the sequence dump(8) documents
// ("3 2 5 4 7 6 9 8 9 9 ..."). A monthly cycle of 31 days thus reads
//
//	day   1 2 3 4 5 6 7 8 9 10 ... 31
//	level 0 3 2 5 4 7 6 9 8 9  ... 9
//
// Each level-k dump holds the changes since the latest dump of a lower
// level, so a restore needs at most the level 0 plus one dump of each
// lower level in the chain (e.g. for day 9: 0, 2, 4, 6, 8).
//
// MonthlyWeekly follows dump(8)'s full scheme: the 1st of the month is
// level 0, any other Monday is level 1, and the days after either of
// those take HanoiSeq(days since it): 3 2 5 4 7 6.
func Level(t time.Time, o HanoiOptions) int {
	month := t.Day() - 1               // days since the 1st
	week := (int(t.Weekday()) + 6) % 7 // days since Monday
	switch o.Cycle {
	case Weekly:
		return HanoiSeq(week)
	case MonthlyWeekly:
		switch {
		case month == 0:
			return 0
		case week == 0:
			return 1
		}
		return HanoiSeq(min(month, week))
	default:
		return HanoiSeq(month)
	}
}

// Entry is one recorded dump.
type Entry struct {
	Level int       `json:"level"`
	Time  time.Time `json:"time"`
}

// History records the dumps taken per stable identity ("master/1": a
// domain and a partition index), as dump's /etc/dumpdates does per device
// name — but a loop device or snapshot's name changes between runs, so
// bkrun keys by identity and passes the base date itself (dump -T).
//
// Like dumpdates it keeps one entry per (identity, level), the latest.
// The file is JSON, replaced atomically (temporary file, fsync, rename,
// fsync of the directory) on every Record. Callers that may run
// concurrently on one file must hold a lock (fs.lock).
type History struct {
	Path string

	mu    sync.Mutex
	dumps map[string][]Entry
}

type historyFile struct {
	Version int                `json:"version"`
	Dumps   map[string][]Entry `json:"dumps"`
}

// Load reads the history file; a missing file is an empty history.
func (h *History) Load() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, err := readHistory(h.Path)
	if err != nil {
		return err
	}
	h.dumps = d
	return nil
}

func readHistory(path string) (map[string][]Entry, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string][]Entry{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dump history: %w", err)
	}
	var f historyFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("dump history %s: not a bkrun dump history: %w", path, err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("dump history %s: unknown version %d", path, f.Version)
	}
	if f.Dumps == nil {
		f.Dumps = map[string][]Entry{}
	}
	return f.Dumps, nil
}

func checkLevel(level int) error {
	if level < 0 || level > 9 {
		return fmt.Errorf("dump level %d out of range 0..9", level)
	}
	return nil
}

// Record notes a level-level dump of id taken at t, replacing an earlier
// entry of the same level, and writes the file. It re-reads the file
// first, so entries recorded by others since Load are kept.
func (h *History) Record(id string, t time.Time, level int) error {
	if id == "" {
		return errors.New("dump history: empty identity")
	}
	if err := checkLevel(level); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	d, err := readHistory(h.Path)
	if err != nil {
		return err
	}
	var es []Entry
	for _, e := range d[id] {
		if e.Level != level {
			es = append(es, e)
		}
	}
	es = append(es, Entry{Level: level, Time: t})
	sort.Slice(es, func(i, j int) bool { return es[i].Level < es[j].Level })
	d[id] = es
	data, err := json.MarshalIndent(historyFile{Version: 1, Dumps: d}, "", "  ")
	if err != nil {
		return err
	}
	if err := writeAtomic(h.Path, append(data, '\n')); err != nil {
		return fmt.Errorf("dump history: %w", err)
	}
	h.dumps = d
	return nil
}

// Entries returns id's entries, lowest level first.
func (h *History) Entries(id string) []Entry {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Entry(nil), h.dumps[id]...)
}

// Base is the date a level-level dump of id must be taken against (dump
// -T): the time of the most recent recorded dump of a lower level. It
// reports false for level 0 and when no lower level has been recorded
// (then a full dump is needed). It reads what Load or Record last saw.
func (h *History) Base(id string, level int) (time.Time, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var base time.Time
	found := false
	for _, e := range h.dumps[id] {
		if e.Level < level && (!found || e.Time.After(base)) {
			base, found = e.Time, true
		}
	}
	return base, found
}

// writeAtomic replaces path with data: temporary file in the same
// directory, fsync, rename, fsync of the directory.
func writeAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(0o644); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	d, derr := os.Open(dir)
	if derr != nil {
		return fmt.Errorf("%s: written, but sync of directory: %w", path, derr)
	}
	defer d.Close()
	if derr := d.Sync(); derr != nil {
		return fmt.Errorf("%s: written, but sync of directory: %w", path, derr)
	}
	return nil
}
