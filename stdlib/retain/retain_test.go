package retain

import (
	"fmt"
	"math/rand"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"
)

func hourly(start time.Time, n int) []Item {
	items := make([]Item, n)
	for i := range items {
		ts := start.Add(time.Duration(i) * time.Hour)
		items[i] = Item{Name: "snap-" + ts.Format(time.RFC3339), Time: ts}
	}
	return items
}

func kept(ds []Decision) []string {
	var out []string
	for _, d := range ds {
		if d.Keep {
			out = append(out, d.Name)
		}
	}
	sort.Strings(out)
	return out
}

// naiveBuckets is a second, independent implementation of one bucket rule:
// group by period, newest item per period, the n newest periods.
func naiveBuckets(items []Item, n int, key func(time.Time) string) map[string]bool {
	newest := map[string]Item{}
	for _, it := range items {
		k := key(it.Time)
		if cur, ok := newest[k]; !ok || it.Time.After(cur.Time) {
			newest[k] = it
		}
	}
	var periods []Item
	for _, it := range newest {
		periods = append(periods, it)
	}
	sort.Slice(periods, func(i, j int) bool { return periods[i].Time.After(periods[j].Time) })
	out := map[string]bool{}
	for i := 0; i < n && i < len(periods); i++ {
		out[periods[i].Name] = true
	}
	return out
}

func TestYearOfHourlyRuns(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	items := hourly(start, 8760) // 2026-01-01T00:00Z .. 2026-12-31T23:00Z
	// Shuffle: the plan must not depend on input order.
	rand.New(rand.NewSource(1)).Shuffle(len(items), func(i, j int) { items[i], items[j] = items[j], items[i] })
	now := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	p, err := ParsePolicy("last=3 hourly=24 daily=7 weekly=4 monthly=12")
	if err != nil {
		t.Fatal(err)
	}
	ds := Plan(items, p, now)
	if len(ds) != 8760 {
		t.Fatalf("%d decisions", len(ds))
	}

	// Independent expectation.
	want := map[string]bool{}
	add := func(m map[string]bool) {
		for k := range m {
			want[k] = true
		}
	}
	byTime := append([]Item(nil), items...)
	sort.Slice(byTime, func(i, j int) bool { return byTime[i].Time.After(byTime[j].Time) })
	for _, it := range byTime[:3] {
		want[it.Name] = true
	}
	perBucket := map[string]int{}
	for _, b := range []struct {
		name string
		n    int
		key  func(time.Time) string
	}{
		{"hourly", 24, func(t time.Time) string { return t.Format("2006-01-02 15") }},
		{"daily", 7, func(t time.Time) string { return t.Format("2006-01-02") }},
		{"weekly", 4, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprint(y, w) }},
		{"monthly", 12, func(t time.Time) string { return t.Format("2006-01") }},
	} {
		m := naiveBuckets(items, b.n, b.key)
		perBucket[b.name] = len(m)
		add(m)
	}
	var wantList []string
	for k := range want {
		wantList = append(wantList, k)
	}
	sort.Strings(wantList)
	got := kept(ds)
	if !reflect.DeepEqual(got, wantList) {
		t.Errorf("kept %d, want %d\n got  %v\n want %v", len(got), len(wantList), got, wantList)
	}

	// Hand-derived: hourly = the 24 runs of Dec 31; daily adds 23:00 of
	// Dec 25..30; weekly (ISO weeks, Mondays Dec 28, 21, 14, 7) adds
	// Dec 20 and Dec 13 23:00 (Dec 27 is already daily); monthly adds the
	// last run of January..November. 24 + 6 + 2 + 11 = 43.
	if len(got) != 43 {
		t.Errorf("kept %d items, want 43", len(got))
	}
	if !reflect.DeepEqual(perBucket, map[string]int{"hourly": 24, "daily": 7, "weekly": 4, "monthly": 12}) {
		t.Errorf("per bucket: %v", perBucket)
	}
	reasons := map[string]string{}
	for _, d := range ds {
		reasons[d.Name] = d.Reason
	}
	for name, reason := range map[string]string{
		"snap-2026-12-31T23:00:00Z": "last 3, hourly 2026-12-31T23, daily 2026-12-31, weekly 2026-W53, monthly 2026-12",
		"snap-2026-12-31T21:00:00Z": "last 3, hourly 2026-12-31T21",
		"snap-2026-12-31T00:00:00Z": "hourly 2026-12-31T00",
		"snap-2026-12-30T23:00:00Z": "daily 2026-12-30",
		"snap-2026-12-25T23:00:00Z": "daily 2026-12-25",
		"snap-2026-12-24T23:00:00Z": "no rule keeps it",
		"snap-2026-12-27T23:00:00Z": "daily 2026-12-27, weekly 2026-W52",
		"snap-2026-12-20T23:00:00Z": "weekly 2026-W51",
		"snap-2026-12-13T23:00:00Z": "weekly 2026-W50",
		"snap-2026-12-06T23:00:00Z": "no rule keeps it",
		"snap-2026-11-30T23:00:00Z": "monthly 2026-11",
		"snap-2026-02-28T23:00:00Z": "monthly 2026-02",
		"snap-2026-01-31T23:00:00Z": "monthly 2026-01",
		"snap-2026-01-01T00:00:00Z": "no rule keeps it",
		"snap-2026-12-30T22:00:00Z": "no rule keeps it",
	} {
		if reasons[name] != reason {
			t.Errorf("%s: reason %q, want %q", name, reasons[name], reason)
		}
	}
	// Newest first.
	for i := 1; i < len(ds); i++ {
		if ds[i].Time.After(ds[i-1].Time) {
			t.Fatalf("decision %d out of order", i)
		}
	}
	// Idempotent: planning the kept items again deletes nothing.
	var again []Item
	for _, d := range ds {
		if d.Keep {
			again = append(again, d.Item)
		}
	}
	for _, d := range Plan(again, p, now) {
		if !d.Keep {
			t.Errorf("second plan deletes %s (%s)", d.Name, d.Reason)
		}
	}
}

func TestHammerOneDaySixtyDays(t *testing.T) {
	p, err := ParsePolicy("snapshots 1d 60d")
	if err != nil {
		t.Fatal(err)
	}
	if want := (Policy{MinAge: 24 * time.Hour, MaxAge: 60 * 24 * time.Hour, Daily: 61}); p != want {
		t.Fatalf("policy %+v, want %+v", p, want)
	}
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	items := hourly(start, 90*24) // .. 2026-03-31T23:00Z
	now := time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)
	ds := Plan(items, p, now)
	// Younger than 1d: 2026-03-31 01:00..23:00 (00:00 is exactly 1d old).
	// Then 23:00 of each earlier day back to 2026-01-31, whose 23:00 run is
	// 59d1h old (February has 28 days); 2026-01-30T23:00 is 60d1h old and goes.
	got := kept(ds)
	var want []string
	for h := 1; h <= 23; h++ {
		want = append(want, fmt.Sprintf("snap-2026-03-31T%02d:00:00Z", h))
	}
	for d := time.Date(2026, 1, 31, 23, 0, 0, 0, time.UTC); d.Before(time.Date(2026, 3, 31, 0, 0, 0, 0, time.UTC)); d = d.AddDate(0, 0, 1) {
		want = append(want, "snap-"+d.Format(time.RFC3339))
	}
	sort.Strings(want)
	if len(want) != 23+59 || !reflect.DeepEqual(got, want) {
		t.Errorf("kept %d, want %d\n got  %v\n want %v", len(got), len(want), got, want)
	}
	reasons := map[string]string{}
	for _, d := range ds {
		reasons[d.Name] = d.Reason
	}
	for name, reason := range map[string]string{
		"snap-2026-03-31T23:00:00Z": "younger than 1d, daily 2026-03-31",
		"snap-2026-03-31T01:00:00Z": "younger than 1d",
		"snap-2026-03-31T00:00:00Z": "no rule keeps it",
		"snap-2026-01-31T23:00:00Z": "daily 2026-01-31",
		"snap-2026-01-30T23:00:00Z": "older than 60d",
		"snap-2026-01-01T00:00:00Z": "older than 60d",
	} {
		if reasons[name] != reason {
			t.Errorf("%s: reason %q, want %q", name, reasons[name], reason)
		}
	}
	// Exactly MaxAge old is not older.
	edge := []Item{{Name: "a", Time: now.Add(-60 * 24 * time.Hour)}}
	if d := Plan(edge, Policy{MaxAge: 60 * 24 * time.Hour}, now)[0]; !d.Keep || d.Reason != "within 60d" {
		t.Errorf("edge: %+v", d)
	}
}

func TestPlanRules(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	at := func(name string, ago time.Duration) Item { return Item{Name: name, Time: now.Add(-ago)} }
	items := []Item{
		at("snap-a", 1*time.Hour),
		at("snap-b", 100*24*time.Hour),
		at("other-c", 200*24*time.Hour),
		{Name: "snap-notime"},
		at("snap-d", 90*24*time.Hour),
	}
	p := Policy{Last: 2, MaxAge: 30 * 24 * time.Hour, Pattern: "snap-"}
	var got []string
	for _, d := range Plan(items, p, now) {
		got = append(got, fmt.Sprintf("%s %v %s", d.Name, d.Keep, d.Reason))
	}
	want := []string{
		"snap-a true last 2",
		"snap-d true last 2", // Last overrides MaxAge
		"snap-b false older than 30d",
		"other-c true not matched by pattern",
		"snap-notime true no time known",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	// Glob pattern; an invalid glob matches nothing (so deletes nothing).
	if !(Policy{Pattern: "snap-*-x"}).Matches("snap-1-x") || (Policy{Pattern: "snap-*-x"}).Matches("snap-1-y") {
		t.Error("glob")
	}
	if (Policy{Pattern: "snap-["}).Matches("snap-[") {
		t.Error("bad glob matched")
	}
	// Ties: by name.
	ds := Plan([]Item{at("b", time.Hour), at("a", time.Hour)}, Policy{Last: 1}, now)
	if ds[0].Name != "a" || !ds[0].Keep || ds[1].Keep {
		t.Errorf("ties: %+v", ds)
	}
	// Time zone of now decides the calendar day.
	tokyo := time.FixedZone("JST", 9*3600)
	two := []Item{
		{Name: "x", Time: time.Date(2026, 11, 19, 14, 0, 0, 0, time.UTC)}, // Nov 19 23:00 JST
		{Name: "y", Time: time.Date(2026, 11, 19, 16, 0, 0, 0, time.UTC)}, // Nov 20 01:00 JST
	}
	if got := kept(Plan(two, Policy{Daily: 5}, now)); len(got) != 1 {
		t.Errorf("UTC days: %v", got)
	}
	if got := kept(Plan(two, Policy{Daily: 5}, now.In(tokyo))); len(got) != 2 {
		t.Errorf("Tokyo days: %v", got)
	}
}

func TestPlanProperties(t *testing.T) {
	r := rand.New(rand.NewSource(7))
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	for round := 0; round < 300; round++ {
		var items []Item
		for i := r.Intn(60); i > 0; i-- {
			ts := now.Add(-time.Duration(r.Int63n(int64(400 * 24 * time.Hour))))
			prefix := []string{"snap-", "snap-", "snap-", "keep-"}[r.Intn(4)]
			items = append(items, Item{Name: prefix + ts.Format(time.RFC3339Nano), Time: ts})
		}
		p := Policy{
			Last: r.Intn(4), Hourly: r.Intn(30), Daily: r.Intn(10), Weekly: r.Intn(6),
			Monthly: r.Intn(14), Yearly: r.Intn(3), Pattern: "snap-",
		}
		if r.Intn(2) == 0 {
			p.MinAge = time.Duration(r.Intn(48)) * time.Hour
			p.MaxAge = p.MinAge + time.Duration(r.Intn(200))*24*time.Hour
		}
		ds := Plan(items, p, now)
		if len(ds) != len(items) {
			t.Fatalf("round %d: %d decisions for %d items", round, len(ds), len(items))
		}
		matched, keptMatched := 0, 0
		var again []Item
		for _, d := range ds {
			if d.Keep {
				again = append(again, d.Item)
			}
			if !strings.HasPrefix(d.Name, "snap-") {
				if !d.Keep || d.Reason != "not matched by pattern" {
					t.Fatalf("round %d: non-matching %s: %+v", round, d.Name, d)
				}
				continue
			}
			matched++
			if d.Keep {
				keptMatched++
			}
			if d.Reason == "" {
				t.Fatalf("round %d: no reason for %s", round, d.Name)
			}
		}
		if p.Last >= 1 && matched > 0 && keptMatched < min(p.Last, matched) {
			t.Fatalf("round %d: last=%d but kept %d of %d", round, p.Last, keptMatched, matched)
		}
		for _, d := range Plan(again, p, now) {
			if !d.Keep {
				t.Fatalf("round %d: not idempotent: %s (%s) policy %+v", round, d.Name, d.Reason, p)
			}
		}
	}
}

func TestParsePolicy(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Policy
	}{
		{"last=3 daily=7 weekly=4 monthly=12", Policy{Last: 3, Daily: 7, Weekly: 4, Monthly: 12}},
		{"last=1,hourly=24, yearly=2 min_age=1d12h max_age=8w pattern=snap-*",
			Policy{Last: 1, Hourly: 24, Yearly: 2, MinAge: 36 * time.Hour, MaxAge: 56 * 24 * time.Hour, Pattern: "snap-*"}},
		{"1d 60d", Policy{MinAge: 24 * time.Hour, MaxAge: 60 * 24 * time.Hour, Daily: 61}},
		{"1h 2d", Policy{MinAge: time.Hour, MaxAge: 48 * time.Hour, Hourly: 49}},
		{"1w 8w", Policy{MinAge: 7 * 24 * time.Hour, MaxAge: 56 * 24 * time.Hour, Weekly: 9}},
		{"12h 30d", Policy{MinAge: 12 * time.Hour, MaxAge: 30 * 24 * time.Hour}},
		{"max_age=3600", Policy{MaxAge: time.Hour}},
	} {
		got, err := ParsePolicy(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParsePolicy(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	for in, msg := range map[string]string{
		"":                      "empty",
		"pattern=snap-":         "no rule",
		"daily=-1":              "want a count",
		"daily=x":               "want a count",
		"dialy=3":               "unknown key \"dialy\"",
		"daily=3 daily=4":       "given twice",
		"1d":                    "PERIOD MAX",
		"60d 1d":                "0 < PERIOD < MAX",
		"1d 60x":                "invalid age",
		"min_age=2d max_age=1d": "above max age",
		"last=1 pattern=[":      "pattern",
		"last":                  "want key=value pairs",
		"last=1 daily":          "not key=value",
	} {
		if _, err := ParsePolicy(in); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("ParsePolicy(%q): %v, want %q", in, err, msg)
		}
	}
}

func TestAge(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"60d": 60 * 24 * time.Hour, "1w": 7 * 24 * time.Hour, "1d12h": 36 * time.Hour, "90m": 90 * time.Minute, "30s": 30 * time.Second, "1.5": 1500 * time.Millisecond,
	} {
		if got, err := ParseAge(in); err != nil || got != want {
			t.Errorf("ParseAge(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "d", "1y", "-1", "1d-", "1 d"} {
		if _, err := ParseAge(in); err == nil {
			t.Errorf("ParseAge(%q) accepted", in)
		}
	}
	for d, want := range map[time.Duration]string{24 * time.Hour: "1d", 36 * time.Hour: "1d12h", 90 * time.Minute: "1h30m", 60 * 24 * time.Hour: "60d"} {
		if got := FormatAge(d); got != want {
			t.Errorf("FormatAge(%v) = %s", d, got)
		}
	}
}

func TestParseNameTime(t *testing.T) {
	jst := time.FixedZone("", 9*3600)
	for in, want := range map[string]time.Time{
		"snap-2026-11-20T13:04:05Z":             time.Date(2026, 11, 20, 13, 4, 5, 0, time.UTC),
		"snap-2026-11-20T13:04:05.25+09:00":     time.Date(2026, 11, 20, 13, 4, 5, 250e6, jst),
		"home@2026-11-20_13-04-05+0900.tar":     time.Date(2026, 11, 20, 13, 4, 5, 0, jst),
		"2026-11-20":                            time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC),
		"x-2026-11-20T1304":                     time.Date(2026, 11, 20, 13, 4, 0, 0, time.UTC),
		"db.20261120T130405Z.lz4":               time.Date(2026, 11, 20, 13, 4, 5, 0, time.UTC),
		"v12-2026-11-20T13:04:05Z":              time.Date(2026, 11, 20, 13, 4, 5, 0, time.UTC),
		"bad-2026-13-01 then 2026-11-20T01:00Z": time.Date(2026, 11, 20, 1, 0, 0, 0, time.UTC),
	} {
		got, ok := ParseNameTime(in, time.UTC)
		if !ok || !got.Equal(want) {
			t.Errorf("ParseNameTime(%q) = %v, %v; want %v", in, got, ok, want)
		}
	}
	for _, in := range []string{"snap", "20261120", "snap-2026-02-30", "12026-11-20", "2026-11-2012"} {
		if got, ok := ParseNameTime(in, time.UTC); ok {
			t.Errorf("ParseNameTime(%q) = %v", in, got)
		}
	}
}
