// Package catalog finds the backups bkrun wrote under a directory, from the
// catalogue entries (X.json, stream.Meta) that stream.copy writes next to
// every backup X, groups them by source, and works out the dump chain a
// restore needs. A received btrfs snapshot is a directory SNAP with its
// entry SNAP.json (SnapshotEntry, written by WriteSnapshotEntry and its
// SFTP and receiver variants). A damaged entry is reported as a Problem,
// never a crash; files that are neither backups nor entries are listed as
// unknown.
package catalog

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/bkrun/bkrun/stdlib/btrfs"
	"github.com/bkrun/bkrun/stdlib/ssh"
	"github.com/bkrun/bkrun/stdlib/stream"
)

// Kinds of backup.
const (
	KindImage  = "image"  // a device or file copied whole (disk-image.lua)
	KindDump   = "dump"   // a dump(8) archive: Extra carries level/partition (xen-backup.lua)
	KindStream = "stream" // any other stream (btrfs send, a command's output)
	// KindSnapshot is a snapshot directory with a SnapshotFormat entry (a
	// received btrfs subvolume, btrfs-snapsync.lua): a whole tree, Size 0.
	KindSnapshot = "snapshot"
)

// Backup is one backup found with a valid catalogue entry.
type Backup struct {
	Path   string       // the data file (a snapshot: its directory)
	Meta   *stream.Meta // its catalogue entry (Path + ".json"; a snapshot's as SnapshotEntry.Meta)
	Kind   string       // KindImage, KindDump, KindStream or KindSnapshot
	Source string       // dumps: "domain/partition"; otherwise Meta.Source
	Time   time.Time    // Meta.Finished
	Size   int64        // logical size (Meta.Size); the file holds Meta.BytesWritten
	Level  int          // dump level, -1 if none
	Base   time.Time    // dumps: the -T date the incremental was taken against (zero for level 0)
}

// Problem is a file that looks like part of a backup but cannot be used.
type Problem struct {
	Path   string
	Reason string
}

// Source is the backups of one source, newest first.
type Source struct {
	Name    string
	Backups []*Backup
}

// Catalog is what Scan found.
type Catalog struct {
	Dir      string
	Backups  []*Backup // by source, then newest first
	Problems []Problem // by path
	Unknown  []string  // by path
}

// Scan walks dir recursively (symbolic links are not followed: a link is
// listed as unknown) and classifies every file:
//
//   - X.json that is a valid catalogue entry whose data file X is a regular
//     file of the size recorded (bytes_written): a Backup;
//   - a directory D with a snapshot entry D.json (SnapshotFormat): a Backup
//     of kind "snapshot"; D is not descended into;
//   - a .json that does not parse, an entry whose data file is missing, not
//     a regular file or of another size, a snapshot entry whose directory
//     is missing, a temporary ".partial" file left by an interrupted copy, a
//     directory that cannot be read: a Problem;
//   - a read-only btrfs subvolume without an entry (a snapshot of a mirror
//     written before snapshot entries existed, or by another tool): listed
//     once as unknown, not descended into;
//   - anything else: Unknown.
//
// Only an unreadable dir itself is an error.
func Scan(dir string) (*Catalog, error) {
	return scan(os.DirFS(dir), dir, func(rel string) string { return filepath.Join(dir, rel) },
		func(rel string) bool {
			ro, err := btrfs.IsReadOnly(filepath.Join(dir, filepath.FromSlash(rel)))
			return err == nil && ro
		})
}

// ScanFS is Scan over any file system: a local directory, or a backup
// server's directory over SFTP (ssh.Conn.FS). dir is the name the catalogue
// and its errors show; name turns a slash-separated path relative to the
// root of fsys into the path a Backup, Problem or unknown file carries.
//
// ScanFS cannot tell a btrfs subvolume from a directory (SFTP reports no
// inode numbers): a directory without an entry whose name is a snapshot
// time stamp (2026-11-22T03:00:00Z, as btrfs-snapsync.lua names them) is
// listed once as unknown and not descended into; any other directory is.
func ScanFS(fsys fs.FS, dir string, name func(rel string) string) (*Catalog, error) {
	return scan(fsys, dir, name, func(rel string) bool { return stampName.MatchString(path.Base(rel)) })
}

// stampName is the name snapshots.stamp() gives a snapshot.
var stampName = regexp.MustCompile(`^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$`)

// snapshotFound is a directory with a snapshot entry: a backup, or the
// reason its entry cannot be used.
type snapshotFound struct {
	b      *Backup
	reason string
}

// scan is Scan and ScanFS: opaque tells a directory without an entry that
// is a snapshot taken by other means (listed as unknown, not walked).
func scan(fsys fs.FS, dir string, name func(rel string) string, opaque func(rel string) bool) (*Catalog, error) {
	st, err := fs.Stat(fsys, ".")
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is named once, below
		}
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%s: not a directory", dir)
	}
	c := &Catalog{Dir: dir}
	files := map[string]fs.DirEntry{}   // by relative path
	snaps := map[string]snapshotFound{} // by relative path of the entry
	var jsons []string
	var walk func(rel string) error
	walk = func(rel string) error {
		ents, err := fs.ReadDir(fsys, rel)
		if err != nil {
			if rel == "." {
				return err
			}
			c.Problems = append(c.Problems, Problem{name(rel), "cannot read: " + errText(err)})
		}
		names := make(map[string]bool, len(ents))
		for _, e := range ents {
			names[e.Name()] = true
		}
		for _, e := range ents {
			p := path.Join(rel, e.Name())
			if e.IsDir() {
				if names[e.Name()+".json"] {
					if f, ok := snapshotDir(fsys, p, name); ok {
						snaps[p+".json"] = f
						continue
					}
				}
				if opaque != nil && opaque(p) {
					c.Unknown = append(c.Unknown, name(p))
					continue
				}
				if err := walk(p); err != nil {
					return err
				}
				continue
			}
			files[p] = e
			if strings.HasSuffix(p, ".json") && !isPartial(p) {
				jsons = append(jsons, p)
			}
		}
		return nil
	}
	if err := walk("."); err != nil {
		return nil, fmt.Errorf("catalog: %s: %w", dir, err)
	}
	// Longest names first: the entry of a backup of a .json file
	// (x.json.json) claims its data file before x.json is read as an entry.
	sort.SliceStable(jsons, func(i, j int) bool { return len(jsons[i]) > len(jsons[j]) })
	claimed := map[string]bool{}
	for _, j := range jsons {
		if claimed[j] {
			continue // the data file of another entry (a backup of a .json file)
		}
		if f, ok := snaps[j]; ok {
			claimed[j] = true
			if f.reason != "" {
				c.Problems = append(c.Problems, Problem{name(j), f.reason})
			} else {
				c.Backups = append(c.Backups, f.b)
			}
			continue
		}
		data := strings.TrimSuffix(j, ".json")
		b, reason := entry(fsys, j, files[data], name)
		claimed[j] = true
		if files[data] != nil {
			claimed[data] = true
		}
		if reason != "" {
			c.Problems = append(c.Problems, Problem{name(j), reason})
			continue
		}
		c.Backups = append(c.Backups, b)
	}
	for p := range files {
		switch {
		case claimed[p]:
		case isPartial(p):
			c.Problems = append(c.Problems, Problem{name(p), "incomplete upload (temporary file)"})
		default:
			c.Unknown = append(c.Unknown, name(p))
		}
	}
	sort.Slice(c.Problems, func(i, j int) bool { return c.Problems[i].Path < c.Problems[j].Path })
	sort.Strings(c.Unknown)
	sort.Slice(c.Backups, func(i, j int) bool {
		a, b := c.Backups[i], c.Backups[j]
		if a.Source != b.Source {
			return a.Source < b.Source
		}
		return newer(a, b)
	})
	return c, nil
}

// newer orders backups newest first; equal times by path, for a stable order.
func newer(a, b *Backup) bool {
	if !a.Time.Equal(b.Time) {
		return a.Time.After(b.Time)
	}
	return a.Path > b.Path
}

// isPartial tells a temporary file of an unfinished copy
// (".NAME.partial-RANDOM", see stream.CreateFile and the SFTP sink).
func isPartial(p string) bool {
	base := filepath.Base(p)
	return strings.HasPrefix(base, ".") && strings.Contains(base, ".partial")
}

func errText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// entry reads one catalogue entry (relative path rel in fsys) and checks
// its data file d.
func entry(fsys fs.FS, rel string, d fs.DirEntry, name func(string) string) (*Backup, string) {
	jsonPath, dataRel := name(rel), strings.TrimSuffix(rel, ".json")
	data := name(dataRel)
	raw, err := fs.ReadFile(fsys, rel)
	if err != nil {
		return nil, "cannot read: " + errText(err)
	}
	if formatOf(raw) == SnapshotFormat {
		// A snapshot directory is claimed while walking (snapshotDir).
		if d != nil {
			return nil, fmt.Sprintf("snapshot %s is not a directory (%s)", filepath.Base(data), d.Type())
		}
		return nil, fmt.Sprintf("snapshot directory %s is missing", filepath.Base(data))
	}
	m, err := stream.ParseMeta(jsonPath, raw)
	if err != nil {
		// ParseMeta's messages start with the path, which Problem carries.
		return nil, "damaged catalogue entry: " + strings.TrimPrefix(errText(err), jsonPath+": ")
	}
	if d == nil {
		return nil, fmt.Sprintf("data file %s is missing", filepath.Base(data))
	}
	if !d.Type().IsRegular() {
		return nil, fmt.Sprintf("data file %s is not a regular file (%s)", filepath.Base(data), d.Type())
	}
	fi, err := d.Info()
	if err != nil {
		return nil, fmt.Sprintf("data file %s: %s", filepath.Base(data), errText(err))
	}
	if fi.Size() != m.BytesWritten {
		return nil, fmt.Sprintf("data file %s is %d bytes, the catalogue entry says %d (truncated or replaced)",
			filepath.Base(data), fi.Size(), m.BytesWritten)
	}
	b := &Backup{Path: data, Meta: m, Source: m.Source, Time: m.Finished, Size: m.Size, Level: -1}
	level, hasLevel := number(m.Extra["level"])
	_, hasPart := m.Extra["partition"]
	switch {
	case hasLevel || hasPart:
		b.Kind = KindDump
		if hasLevel {
			if level < 0 || level > 9 || level != math.Trunc(level) {
				return nil, fmt.Sprintf("damaged catalogue entry: dump level %v is not 0-9", m.Extra["level"])
			}
			b.Level = int(level)
		}
		dom, part := str(m.Extra["domain"]), str(m.Extra["partition"])
		switch {
		case dom != "" && part != "":
			b.Source = dom + "/" + part
		case dom != "":
			b.Source = dom
		}
		b.Base = timeOf(m.Extra["base"])
	case m.SourceKind == "device" || m.SourceKind == "file":
		b.Kind = KindImage
	default:
		b.Kind = KindStream
	}
	return b, ""
}

// snapshotDir reads the entry of the directory rel (rel.json): ok is false
// when it is not a snapshot entry (the directory is then walked as any
// other).
func snapshotDir(fsys fs.FS, rel string, name func(string) string) (snapshotFound, bool) {
	raw, err := fs.ReadFile(fsys, rel+".json")
	if err != nil || formatOf(raw) != SnapshotFormat {
		return snapshotFound{}, false
	}
	jsonPath := name(rel + ".json")
	e, err := ParseSnapshotEntry(jsonPath, raw)
	if err != nil {
		return snapshotFound{reason: "damaged catalogue entry: " + strings.TrimPrefix(errText(err), jsonPath+": ")}, true
	}
	return snapshotFound{b: &Backup{
		Path: name(rel), Meta: e.Meta(), Kind: KindSnapshot, Source: e.Source,
		Time: e.Finished, Level: -1,
	}}, true
}

func number(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case string:
		f, err := strconv.ParseFloat(x, 64)
		return f, err == nil
	}
	return 0, false
}

func str(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	}
	return fmt.Sprint(v)
}

// timeOf reads a base date: Unix seconds (what xen-backup.lua writes; 0
// means none) or an RFC 3339 string.
func timeOf(v any) time.Time {
	switch x := v.(type) {
	case float64:
		if x > 0 {
			return time.Unix(int64(x), 0).UTC()
		}
	case string:
		if t, err := time.Parse(time.RFC3339, x); err == nil {
			return t
		}
	}
	return time.Time{}
}

// Sources groups the backups by source (sorted by name), newest first
// within each.
func (c *Catalog) Sources() []Source {
	var out []Source
	for _, b := range c.Backups {
		if len(out) == 0 || out[len(out)-1].Name != b.Source {
			out = append(out, Source{Name: b.Source})
		}
		s := &out[len(out)-1]
		s.Backups = append(s.Backups, b)
	}
	return out
}

// Find returns the backup whose data file (or catalogue entry) is path.
func (c *Catalog) Find(path string) (*Backup, bool) {
	path = strings.TrimSuffix(filepath.Clean(path), ".json")
	rel := filepath.Join(c.Dir, path) // a path relative to the catalogue's directory
	for _, b := range c.Backups {
		if b.Path == path || b.Path == rel {
			return b, true
		}
	}
	return nil, false
}

// Chain returns the backups a restore of b applies, oldest first, ending
// with b. An image, a stream or a snapshot (a received subvolume is whole,
// whatever it was sent against) stands alone: the chain is b itself. For a
// dump at level N (dump(8) semantics, as retain.hanoi schedules them), the
// dump it was taken against is the most recent earlier dump of the same
// source at a lower level; the walk repeats from there down to level 0.
// With Hanoi levels 0 3 2 5 4 on days 1-5, the level-4 dump of day 5
// needs day 3 (level 2) and day 1 (level 0): day 4 (level 5) and day 2
// (level 3) are not lower. A missing lower level is an error that names
// it; so is a chain whose lower dump is older than the date the
// incremental was taken against (its base): the dump it needs is not in
// the catalogue.
func (c *Catalog) Chain(b *Backup) ([]*Backup, error) {
	if b.Kind != KindDump || b.Level < 0 {
		return []*Backup{b}, nil
	}
	chain := []*Backup{b}
	cur := b
	for cur.Level > 0 {
		var prev *Backup
		for _, o := range c.Backups { // newest first within a source
			if o.Source == cur.Source && o.Kind == KindDump && o.Level >= 0 && o.Level < cur.Level && newer(cur, o) && o != cur {
				prev = o
				break
			}
		}
		if prev == nil {
			return nil, fmt.Errorf("%s: level %d of %s needs a lower-level dump before it; none found (missing level 0?)",
				cur.Source, cur.Level, day(cur.Time))
		}
		if !cur.Base.IsZero() && prev.Meta.Finished.Before(cur.Base) {
			return nil, fmt.Errorf("%s: level %d of %s was taken against a dump of %s; the catalogue has only the level %d of %s before it (missing dump of %s?)",
				cur.Source, cur.Level, day(cur.Time), cur.Base.UTC().Format(time.RFC3339), prev.Level, day(prev.Time), day(cur.Base))
		}
		chain = append(chain, prev)
		cur = prev
	}
	for i, j := 0, len(chain)-1; i < j; i, j = i+1, j-1 {
		chain[i], chain[j] = chain[j], chain[i]
	}
	return chain, nil
}

func day(t time.Time) string { return t.UTC().Format("2006-01-02") }

// ScanRemote scans dir on the host behind conn over SFTP. dest is the
// destination as the user wrote it ([user@]host): backups and problems are
// named dest:path, the form stream.copy takes as a destination.
func ScanRemote(conn *ssh.Conn, dest, dir string) (*Catalog, error) {
	fsys, err := conn.FS(dir)
	if err != nil {
		return nil, err
	}
	return ScanFS(fsys, dest+":"+dir, func(rel string) string { return dest + ":" + path.Join(dir, rel) })
}
