// Package recover gets data back out of the backups bkrun wrote: it checks
// a backup without writing anything, restores an image or a whole dump
// chain (level 0 and the incrementals leading to the one asked for),
// attaches an image read-only as a browsable mount, lists the files of a
// backup and extracts single files; a received btrfs snapshot is checked
// and rolled back to (a writable snapshot of it) with btrfs itself. It
// builds on catalog (which backups exist, which dumps a chain needs),
// stream (decoding and hash checks), part (partition tables, loop
// devices), btrfs and exec (restore(8), mount).
//
// Bytes are decoded in Go and piped straight into restore(8); every decoded
// stream is checked against its catalogue entry (size and BLAKE3 tree hash).
package recover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/bkrun/bkrun/stdlib/catalog"
	"github.com/bkrun/bkrun/stdlib/stream"
)

// Options tune every operation; the zero value is usable.
type Options struct {
	// Catalog is the catalogue a dump chain is looked up in; nil scans the
	// directory of the backup (recursively).
	Catalog *catalog.Catalog
	// Logger receives one Info line per step; nil discards.
	Logger *slog.Logger
	// Progress, if set, is called when a long step starts (decoding total
	// bytes); it returns the callback for bytes done and the one that ends
	// the display.
	Progress func(label string, total int64) (set func(done int64), done func(ok bool))
	// Scratch is the directory for temporary decoded images and mount
	// points (attach, and files/extract of an image); default os.TempDir().
	Scratch string
	// Partition is the partition of an image to attach (0: choose, see
	// Attach).
	Partition int
	// Overwrite lets Restore of an image replace an existing target file.
	Overwrite bool
	// Exact makes Files and Extract of a dump restore the chain into a
	// temporary directory in Scratch and work from that tree, instead of
	// the restore -t listings: names deleted between dumps are then
	// absent, at the cost of the space and time of a full restore.
	Exact bool
}

func (o Options) log() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return o.Logger
}

func (o Options) scratch() string {
	if o.Scratch != "" {
		return o.Scratch
	}
	return os.TempDir()
}

// progress starts a display for a step, or returns no-ops.
func (o Options) progress(label string, total int64) (func(int64), func(bool)) {
	if o.Progress == nil {
		return nil, func(bool) {}
	}
	set, done := o.Progress(label, total)
	return set, done
}

// ErrNoEntry marks a file without a catalogue entry (X.json).
var ErrNoEntry = errors.New("no catalogue entry")

// Resolve finds the backup at path (its data file or its .json entry) in
// o.Catalog, or in a scan of the backup's directory, and returns it with
// the catalogue it was found in. A file without an entry is ErrNoEntry; an
// entry that catalog.Scan reports as a problem (data file truncated,
// damaged entry, snapshot directory missing) is an error giving the
// reason. A path "[user@]host:path" of a catalogue scanned over SFTP is
// refused: recover works on the machine that holds the backups.
func Resolve(path string, o Options) (*catalog.Backup, *catalog.Catalog, error) {
	if err := remoteBackup(path); err != nil {
		return nil, nil, err
	}
	path = strings.TrimSuffix(filepath.Clean(path), ".json")
	given := path
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	if _, err := os.Stat(stream.MetaPath(path)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if _, serr := os.Stat(path); serr != nil {
				return nil, nil, fmt.Errorf("%s: %w", path, unwrapPath(serr))
			}
			return nil, nil, fmt.Errorf("%s: %w %s", path, ErrNoEntry, filepath.Base(stream.MetaPath(path)))
		}
		return nil, nil, fmt.Errorf("%s: %w", path, unwrapPath(err))
	}
	cat := o.Catalog
	if cat == nil {
		c, err := catalog.Scan(filepath.Dir(path))
		if err != nil {
			return nil, nil, fmt.Errorf("catalog.scan: %w", err)
		}
		cat = c
	}
	// A catalogue scanned from a relative directory has relative paths.
	for _, p := range []string{given, path} {
		if b, ok := cat.Find(p); ok {
			return b, cat, nil
		}
	}
	for _, p := range cat.Problems {
		if p.Path == stream.MetaPath(path) || p.Path == path {
			return nil, nil, fmt.Errorf("%s: %s", path, p.Reason)
		}
	}
	return nil, nil, fmt.Errorf("%s: not a backup in the catalogue of %s", path, cat.Dir)
}

// Chain resolves path and returns the backups a restore of it applies,
// oldest first (see catalog.Chain). A missing level is an error naming it.
func Chain(path string, o Options) (*catalog.Backup, []*catalog.Backup, error) {
	b, cat, err := Resolve(path, o)
	if err != nil {
		return nil, nil, err
	}
	chain, err := cat.Chain(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: cannot restore: %w", b.Path, err)
	}
	return b, chain, nil
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// VerifyResult is what Verify checked.
type VerifyResult struct {
	Path    string
	Kind    string // catalog.KindImage, KindDump, KindStream or KindSnapshot
	Bytes   int64  // decoded bytes, equal to the catalogue's size
	Hash    string
	Entries int        // dumps: entries restore -t listed; 0 otherwise
	Header  DumpHeader // dumps: level and dates from the archive's header
	// Snapshots: the subvolume's UUIDs as btrfs reports them.
	UUID, ReceivedUUID string
}

// Verify decodes the backup at path and checks it against its catalogue
// entry without writing anything. A dump is also walked: its header must
// be a dump(8) header, and the decoded stream is piped both into restore
// -t (Entries is the number of names it lists) and into restore -x -N,
// which reads the whole archive and writes nothing; both must succeed.
// A snapshot is not decoded: its directory must be a read-only btrfs
// subvolume (btrfs subvolume show) with the UUIDs its entry recorded.
func Verify(ctx context.Context, path string, o Options) (VerifyResult, error) {
	b, _, err := Resolve(path, o)
	if err != nil {
		return VerifyResult{}, err
	}
	if b.Kind == catalog.KindSnapshot {
		return verifySnapshot(ctx, b, o)
	}
	r := VerifyResult{Path: b.Path, Kind: b.Kind}
	if b.Kind != catalog.KindDump {
		set, done := o.progress("verify", b.Size)
		_, st, err := stream.VerifyAgainst(ctx, b.Path, b.Meta, set)
		done(err == nil)
		if err != nil {
			return r, err
		}
		r.Bytes, r.Hash = st.Size, st.Hash
		o.log().Info("recover: verified", "backup", b.Path, "bytes", st.Size)
		return r, nil
	}
	if r.Header, err = ReadDumpHeader(ctx, b); err != nil {
		return r, err
	}
	entries, st, err := listDump(ctx, b, true, o)
	if err != nil {
		return r, err
	}
	r.Bytes, r.Hash, r.Entries = st.Size, st.Hash, len(entries)
	o.log().Info("recover: verified dump", "backup", b.Path, "bytes", st.Size, "entries", len(entries))
	return r, nil
}

// RestoreResult is what Restore did.
type RestoreResult struct {
	Target  string
	Kind    string
	Bytes   int64    // decoded bytes, summed over a dump chain
	Applied []string // the backups applied, oldest first
}

// Restore restores the backup at path onto target.
//
// An image or a stream is decoded onto a file or block device as
// stream.Restore does (verified; a file is written under a temporary name
// and renamed; Overwrite to replace an existing file).
//
// A dump is restored with its whole chain: the level 0 dump and the
// incrementals leading to it (catalog.Chain), each piped into `restore -r`
// run inside target, oldest first. target is created if missing and must
// otherwise be an empty directory. Every dump of the chain is decoded and
// checked against its hash before the first one is applied, so a missing
// level or a corrupt dump is refused before anything is written. restore's
// temporary files go to a directory inside target, removed afterwards, as
// is the restoresymtable restore -r leaves. If restore itself fails half-way
// the error says which dumps were applied: target is then partial.
//
// A snapshot is verified (see Verify) and restored as a writable snapshot
// of it at target (btrfs subvolume snapshot): the rollback of the
// subvolume it mirrors. target must not exist (Overwrite does not apply)
// and must be on the snapshot's btrfs filesystem.
func Restore(ctx context.Context, path, target string, o Options) (RestoreResult, error) {
	b, chain, err := Chain(path, o)
	if err != nil {
		return RestoreResult{}, err
	}
	if b.Kind == catalog.KindSnapshot {
		return restoreSnapshot(ctx, b, target, o)
	}
	r := RestoreResult{Target: target, Kind: b.Kind}
	if b.Kind != catalog.KindDump {
		set, done := o.progress("restore", b.Size)
		st, err := stream.Restore(ctx, b.Path, target, stream.RestoreOptions{Overwrite: o.Overwrite, Progress: set})
		done(err == nil)
		if err != nil {
			return r, err
		}
		r.Bytes, r.Applied = st.Size, []string{b.Path}
		o.log().Info("recover: restored", "backup", b.Path, "target", target, "bytes", st.Size)
		return r, nil
	}
	return restoreChain(ctx, chain, target, o)
}

// Entry is one name in a backup.
type Entry struct {
	Path   string // relative to the root of the filesystem, "dir/file"
	Backup string // the backup it is taken from (the newest dump holding it)
	Dir    bool   // known to be a directory (something is listed under it, or the image says so)
}

// Files lists the names in the backup at path, sorted. For a dump, the
// listings (restore -t) of every dump of its chain are merged; each name is
// taken from the newest dump that holds it. restore -t lists only what a
// dump holds, not what was deleted since the dump before it, so a file
// deleted between two dumps of the chain is still listed (from the older
// dump); with o.Exact the chain is restored into a temporary directory
// and walked instead, which lists exactly the tree of the last dump (Backup
// is then the last dump for every name). For an image the image is
// attached read-only (see Attach) and walked; a snapshot's directory is
// walked as it is.
func Files(ctx context.Context, path string, o Options) ([]Entry, error) {
	b, _, err := Resolve(path, o)
	if err != nil && !errors.Is(err, ErrNoEntry) {
		return nil, err
	}
	if b != nil && b.Kind == catalog.KindDump {
		return dumpFiles(ctx, path, o)
	}
	if b != nil && b.Kind == catalog.KindSnapshot {
		return walkMount(&Mount{Path: b.Path, Image: b.Path})
	}
	m, err := Attach(ctx, path, o)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	return walkMount(m)
}

// Extract copies the named files or directories out of the backup at path
// into dest (created if missing), keeping their place in the tree
// (dest/etc/fstab for "etc/fstab"), their mode and times (and owner, as
// root). A name that is not in the backup is an error naming it, before
// anything is written. Names are relative to the filesystem's root ("/x"
// and "./x" mean "x"); ".." is refused.
//
// Everything is first extracted into a fresh directory inside dest, then
// moved into place: an existing file is replaced, an existing directory is
// merged into, and a symbolic link already in dest is never followed (a
// conflict is an error). From a dump chain a file comes from the newest
// dump holding it, a directory from every dump holding it, oldest first
// (restore -x -a -o -u); like Files, this can bring back a name deleted
// between two dumps of the chain. With o.Exact the chain is restored into
// a temporary directory first and the names copied from there. From an
// image the image is attached read-only and the files copied; from a
// snapshot they are copied from its directory.
func Extract(ctx context.Context, path string, names []string, dest string, o Options) ([]string, error) {
	if len(names) == 0 {
		return nil, errors.New("no file names given")
	}
	rel := make([]string, len(names))
	for i, n := range names {
		c, err := cleanName(n)
		if err != nil {
			return nil, err
		}
		rel[i] = c
	}
	b, _, err := Resolve(path, o)
	if err != nil && !errors.Is(err, ErrNoEntry) {
		return nil, err
	}
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return nil, fmt.Errorf("%s: %w", dest, unwrapPath(err))
	}
	if st, err := os.Stat(dest); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("%s: not a directory", dest)
	}
	switch {
	case b != nil && b.Kind == catalog.KindDump:
		err = extractDump(ctx, path, rel, dest, o)
	case b != nil && b.Kind == catalog.KindSnapshot:
		err = copyOut(ctx, b.Path, b.Path, rel, dest, o)
	default:
		err = extractImage(ctx, path, rel, dest, o)
	}
	if err != nil {
		return nil, err
	}
	out := make([]string, len(rel))
	for i, r := range rel {
		out[i] = filepath.Join(dest, r)
	}
	return out, nil
}

// cleanName turns a name given by the user into a path relative to the
// root of the backed-up filesystem.
func cleanName(n string) (string, error) {
	c := filepath.Clean("/" + n)
	if strings.Contains(n, "\x00") || c == "/" {
		return "", fmt.Errorf("%q: not a file name in the backup (give a path such as etc/fstab; restore the whole backup with recover.restore)", n)
	}
	for _, part := range strings.Split(n, "/") {
		if part == ".." {
			return "", fmt.Errorf("%q: '..' is not allowed in a name to extract", n)
		}
	}
	return strings.TrimPrefix(c, "/"), nil
}
