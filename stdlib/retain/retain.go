// Package retain computes dump levels (a Tower of Hanoi schedule by date,
// with a dump history keyed by stable identity) and retention plans: which
// snapshots or backups to keep and which to delete, with a reason for each.
// It never deletes anything itself.
package retain

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Item is a snapshot or backup to plan for.
type Item struct {
	Name string
	Time time.Time // zero: unknown (the item is kept)
}

// Decision says whether to keep an item, and why.
type Decision struct {
	Item
	Keep   bool
	Reason string
}

// Policy says what to keep. Count rules (Last and the calendar buckets)
// work like restic's and borg's forget: Last keeps the N newest items;
// each bucket keeps the newest item of each of the N most recent distinct
// periods (hour, day, ISO week starting Monday, month, year, in the time
// zone of now) that contain an item. Rules are independent: an item kept
// by several lists every reason.
//
// Age rules: every item younger than MinAge is kept; every item older
// than MaxAge is deleted unless Last keeps it (an item exactly MaxAge old
// is not older). Between the two, the count rules decide; a policy with no
// count rule keeps everything not older than MaxAge.
//
// Only items whose Name matches Pattern are considered at all; the others
// are always kept ("not matched by pattern"). A Pattern with any of * ? [
// is a path.Match glob on the whole name, otherwise a name prefix; empty
// matches every name. Matched items without a time are kept.
type Policy struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int
	MinAge, MaxAge                               time.Duration
	Pattern                                      string
}

// Validate checks counts, ages and the pattern.
func (p Policy) Validate() error {
	for _, c := range []struct {
		name string
		n    int
	}{{"last", p.Last}, {"hourly", p.Hourly}, {"daily", p.Daily}, {"weekly", p.Weekly}, {"monthly", p.Monthly}, {"yearly", p.Yearly}} {
		if c.n < 0 {
			return fmt.Errorf("retention policy: %s=%d is negative", c.name, c.n)
		}
	}
	if p.MinAge < 0 || p.MaxAge < 0 {
		return errors.New("retention policy: negative age")
	}
	if p.MaxAge > 0 && p.MinAge > p.MaxAge {
		return fmt.Errorf("retention policy: min age %s is above max age %s", FormatAge(p.MinAge), FormatAge(p.MaxAge))
	}
	if p.Pattern != "" && isGlob(p.Pattern) {
		if _, err := path.Match(p.Pattern, ""); err != nil {
			return fmt.Errorf("retention policy: pattern %q: %w", p.Pattern, err)
		}
	}
	if p == (Policy{Pattern: p.Pattern}) {
		return errors.New("retention policy: no rule (want e.g. last=3 daily=7, or \"1d 60d\")")
	}
	return nil
}

func (p Policy) counting() bool {
	return p.Last > 0 || p.Hourly > 0 || p.Daily > 0 || p.Weekly > 0 || p.Monthly > 0 || p.Yearly > 0
}

func isGlob(s string) bool { return strings.ContainsAny(s, "*?[") }

// Matches reports whether name is subject to the policy (see Pattern).
func (p Policy) Matches(name string) bool {
	switch {
	case p.Pattern == "":
		return true
	case isGlob(p.Pattern):
		ok, err := path.Match(p.Pattern, name)
		return ok && err == nil
	default:
		return strings.HasPrefix(name, p.Pattern)
	}
}

type bucket struct {
	name  string
	n     int
	key   func(time.Time) string
	count int
	last  string
}

// Plan decides for every item, newest first (ties by name; items without
// a time last). It is deterministic and changes nothing; planning the kept
// items again keeps them all.
func Plan(items []Item, p Policy, now time.Time) []Decision {
	sorted := append([]Item(nil), items...)
	sort.SliceStable(sorted, func(i, j int) bool {
		a, b := sorted[i], sorted[j]
		if a.Time.IsZero() != b.Time.IsZero() {
			return b.Time.IsZero()
		}
		if !a.Time.Equal(b.Time) {
			return a.Time.After(b.Time)
		}
		return a.Name < b.Name
	})
	loc := now.Location()
	buckets := []*bucket{
		{name: "hourly", n: p.Hourly, key: func(t time.Time) string { return t.Format("2006-01-02T15") }},
		{name: "daily", n: p.Daily, key: func(t time.Time) string { return t.Format("2006-01-02") }},
		{name: "weekly", n: p.Weekly, key: func(t time.Time) string {
			y, w := t.ISOWeek()
			return fmt.Sprintf("%04d-W%02d", y, w)
		}},
		{name: "monthly", n: p.Monthly, key: func(t time.Time) string { return t.Format("2006-01") }},
		{name: "yearly", n: p.Yearly, key: func(t time.Time) string { return t.Format("2006") }},
	}
	out := make([]Decision, 0, len(sorted))
	rank := 0
	for _, it := range sorted {
		d := Decision{Item: it}
		switch {
		case !p.Matches(it.Name):
			d.Keep, d.Reason = true, "not matched by pattern"
		case it.Time.IsZero():
			d.Keep, d.Reason = true, "no time known"
		default:
			rank++
			age := now.Sub(it.Time)
			var reasons []string
			if p.MinAge > 0 && age < p.MinAge {
				reasons = append(reasons, "younger than "+FormatAge(p.MinAge))
			}
			last := rank <= p.Last
			if last {
				reasons = append(reasons, fmt.Sprintf("last %d", p.Last))
			}
			old := p.MaxAge > 0 && age > p.MaxAge
			lt := it.Time.In(loc)
			for _, b := range buckets {
				if b.n == 0 {
					continue
				}
				if k := b.key(lt); k != b.last {
					b.last = k
					if b.count < b.n {
						b.count++
						reasons = append(reasons, b.name+" "+k)
					}
				}
			}
			switch {
			case old && !last:
				d.Reason = "older than " + FormatAge(p.MaxAge)
			case len(reasons) > 0:
				d.Keep, d.Reason = true, strings.Join(reasons, ", ")
			case !p.counting() && p.MaxAge > 0:
				d.Keep, d.Reason = true, "within "+FormatAge(p.MaxAge)
			case !p.counting():
				d.Keep, d.Reason = true, "no rule deletes it"
			default:
				d.Reason = "no rule keeps it"
			}
		}
		out = append(out, d)
	}
	return out
}

// ParsePolicy reads a policy string in one of two forms:
//
//	key=value ...   last=3 hourly=24 daily=7 weekly=4 monthly=12 yearly=2
//	                min_age=1d max_age=60d pattern=snap-*   (space or comma separated)
//	PERIOD MAX      HAMMER's "snapshots 1d 60d" (the word snapshots is optional)
//
// The HAMMER form keeps every item younger than PERIOD, one item per
// PERIOD after that, and nothing older than MAX: MinAge=PERIOD,
// MaxAge=MAX, and for a PERIOD of 1h, 1d or 1w the hourly, daily or
// weekly count MAX/PERIOD+1 (so MAX, not the count, limits). Any other
// PERIOD keeps everything up to MAX.
func ParsePolicy(s string) (Policy, error) {
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == '\t' || r == '\n' || r == ',' })
	if len(fields) > 0 && fields[0] == "snapshots" {
		fields = fields[1:]
	}
	var p Policy
	if len(fields) == 0 {
		return p, errors.New("retention policy: empty")
	}
	if !strings.Contains(s, "=") {
		if len(fields) != 2 {
			return p, fmt.Errorf("retention policy %q: want key=value pairs or PERIOD MAX such as \"1d 60d\"", s)
		}
		period, err := ParseAge(fields[0])
		if err != nil {
			return p, fmt.Errorf("retention policy %q: %w", s, err)
		}
		max, err := ParseAge(fields[1])
		if err != nil {
			return p, fmt.Errorf("retention policy %q: %w", s, err)
		}
		if period <= 0 || max <= period {
			return p, fmt.Errorf("retention policy %q: want 0 < PERIOD < MAX", s)
		}
		p.MinAge, p.MaxAge = period, max
		n := int(max/period) + 1
		switch period {
		case time.Hour:
			p.Hourly = n
		case 24 * time.Hour:
			p.Daily = n
		case 7 * 24 * time.Hour:
			p.Weekly = n
		}
		return p, p.Validate()
	}
	seen := map[string]bool{}
	for _, f := range fields {
		k, v, ok := strings.Cut(f, "=")
		if !ok || v == "" {
			return p, fmt.Errorf("retention policy: %q is not key=value", f)
		}
		if seen[k] {
			return p, fmt.Errorf("retention policy: %s given twice", k)
		}
		seen[k] = true
		if err := p.Set(k, v); err != nil {
			return p, err
		}
	}
	return p, p.Validate()
}

// Set sets one policy key from a string (the keys of ParsePolicy).
func (p *Policy) Set(key, value string) error {
	count := map[string]*int{"last": &p.Last, "hourly": &p.Hourly, "daily": &p.Daily, "weekly": &p.Weekly, "monthly": &p.Monthly, "yearly": &p.Yearly}
	if c, ok := count[key]; ok {
		n, err := strconv.Atoi(value)
		if err != nil || n < 0 {
			return fmt.Errorf("retention policy: %s=%s: want a count >= 0", key, value)
		}
		*c = n
		return nil
	}
	switch key {
	case "min_age", "max_age":
		d, err := ParseAge(value)
		if err != nil {
			return fmt.Errorf("retention policy: %s: %w", key, err)
		}
		if key == "min_age" {
			p.MinAge = d
		} else {
			p.MaxAge = d
		}
	case "pattern":
		p.Pattern = value
	default:
		return fmt.Errorf("retention policy: unknown key %q (known: %s)", key, strings.Join(Keys, ", "))
	}
	return nil
}

// Keys are the policy keys, for messages and bindings.
var Keys = []string{"last", "hourly", "daily", "weekly", "monthly", "yearly", "min_age", "max_age", "pattern"}

var ageRe = regexp.MustCompile(`^(?:(\d+)([wdhms]))+$`)
var agePart = regexp.MustCompile(`(\d+)([wdhms])`)

// ParseAge reads an age such as "60d", "1w", "12h", "1d12h", "90m",
// "30s", or a bare number of seconds.
func ParseAge(s string) (time.Duration, error) {
	if n, err := strconv.ParseFloat(s, 64); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("negative age %q", s)
		}
		return time.Duration(n * float64(time.Second)), nil
	}
	if !ageRe.MatchString(s) {
		return 0, fmt.Errorf("invalid age %q (want e.g. 60d, 1w, 12h, 1d12h, 90m)", s)
	}
	unit := map[string]time.Duration{"w": 7 * 24 * time.Hour, "d": 24 * time.Hour, "h": time.Hour, "m": time.Minute, "s": time.Second}
	var d time.Duration
	for _, m := range agePart.FindAllStringSubmatch(s, -1) {
		n, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil || n > 1<<20 {
			return 0, fmt.Errorf("age %q too large", s)
		}
		d += time.Duration(n) * unit[m[2]]
	}
	return d, nil
}

// FormatAge writes an age the way ParseAge reads it: "60d", "1d12h", "90m".
func FormatAge(d time.Duration) string {
	if d <= 0 || d%time.Second != 0 {
		return d.String()
	}
	var b strings.Builder
	for _, u := range []struct {
		s string
		d time.Duration
	}{{"d", 24 * time.Hour}, {"h", time.Hour}, {"m", time.Minute}, {"s", time.Second}} {
		if n := d / u.d; n > 0 {
			fmt.Fprintf(&b, "%d%s", n, u.s)
			d -= n * u.d
		}
	}
	return b.String()
}

// nameTimeRe finds an ISO 8601 / RFC 3339 timestamp in a name:
// 2026-11-20, 2026-11-20T13:00:00Z, 2026-11-20_13-00-00+09:00,
// 2026-11-20T130000, 20261120T130000Z.
var nameTimeRe = regexp.MustCompile(
	`(\d{4})-?(\d{2})-?(\d{2})(?:[T_ ](\d{2})[:\-]?(\d{2})(?:[:\-]?(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:?\d{2})?)?`)

// ParseNameTime finds the first timestamp embedded in name (see above);
// one without a zone is in loc. Date-only names are midnight.
func ParseNameTime(name string, loc *time.Location) (time.Time, bool) {
	for _, m := range nameTimeRe.FindAllStringSubmatchIndex(name, -1) {
		g := func(i int) string {
			if m[2*i] < 0 {
				return ""
			}
			return name[m[2*i]:m[2*i+1]]
		}
		// A compact date (20261120) only counts with a time after it,
		// so that numbers in names are not read as dates.
		if !strings.Contains(name[m[0]:m[1]], "-") && g(4) == "" {
			continue
		}
		// Not part of a longer number.
		if m[0] > 0 && isDigit(name[m[0]-1]) || m[1] < len(name) && isDigit(name[m[1]]) {
			continue
		}
		atoi := func(i int) int { n, _ := strconv.Atoi(g(i)); return n }
		ns := 0
		if f := g(7); f != "" {
			ns, _ = strconv.Atoi((f + "000000000")[:9])
		}
		l := loc
		switch z := g(8); {
		case z == "Z":
			l = time.UTC
		case z != "":
			z = strings.ReplaceAll(z, ":", "")
			h, _ := strconv.Atoi(z[1:3])
			mi, _ := strconv.Atoi(z[3:5])
			off := h*3600 + mi*60
			if z[0] == '-' {
				off = -off
			}
			l = time.FixedZone("", off)
		}
		y, mo, d, hh, mm, ss := atoi(1), atoi(2), atoi(3), atoi(4), atoi(5), atoi(6)
		if mo < 1 || mo > 12 || d < 1 || d > 31 || hh > 23 || mm > 59 || ss > 60 {
			continue
		}
		t := time.Date(y, time.Month(mo), d, hh, mm, ss, ns, l)
		if t.Day() != d { // 2026-02-30
			continue
		}
		return t, true
	}
	return time.Time{}, false
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
