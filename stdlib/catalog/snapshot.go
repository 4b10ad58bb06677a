package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/bkrun/bkrun/stdlib/btrfs"
	"github.com/bkrun/bkrun/stdlib/exec"
	"github.com/bkrun/bkrun/stdlib/ssh"
	"github.com/bkrun/bkrun/stdlib/stream"
)

// SnapshotFormat identifies the catalogue entry of a snapshot: SNAP.json
// next to a snapshot directory SNAP (a received btrfs subvolume).
const SnapshotFormat = "bkrun-snapshot/1"

// SnapshotSourceKind is the source_kind of a snapshot entry.
const SnapshotSourceKind = "btrfs-subvolume"

// SnapshotEntry is the catalogue entry of a snapshot. Its JSON fields are
// those of stream.Meta that apply to a subvolume (no size, hash or codec:
// the snapshot is a tree, not a stream). Extra carries "parent" (the name
// of the snapshot an incremental send was taken against; absent for a
// full send), and "uuid" and "received_uuid" of the snapshot as btrfs
// reports them when they were known when the entry was written.
type SnapshotEntry struct {
	Format       string         `json:"format"`
	Source       string         `json:"source"`      // host:path of the subvolume snapshotted
	SourceKind   string         `json:"source_kind"` // SnapshotSourceKind
	Started      time.Time      `json:"started"`     // when the snapshot was taken
	Finished     time.Time      `json:"finished"`    // when it was received (and the entry written)
	Seconds      float64        `json:"seconds"`
	Host         string         `json:"host,omitempty"` // the host that wrote the entry
	BkrunVersion string         `json:"bkrun_version"`
	Extra        map[string]any `json:"extra,omitempty"`
}

// Meta returns the entry as a stream.Meta (size, hash and codec empty),
// the form every Backup carries.
func (e *SnapshotEntry) Meta() *stream.Meta {
	return &stream.Meta{
		Format: e.Format, Source: e.Source, SourceKind: e.SourceKind,
		Started: e.Started, Finished: e.Finished, Seconds: e.Seconds,
		Host: e.Host, BkrunVersion: e.BkrunVersion, Extra: e.Extra,
	}
}

// formatOf returns the "format" of a JSON object, "" if there is none.
func formatOf(raw []byte) string {
	var f struct {
		Format string `json:"format"`
	}
	if json.Unmarshal(raw, &f) != nil {
		return ""
	}
	return f.Format
}

// ParseSnapshotEntry checks a snapshot entry read from path (named in
// errors).
func ParseSnapshotEntry(path string, raw []byte) (*SnapshotEntry, error) {
	var e SnapshotEntry
	if err := json.Unmarshal(raw, &e); err != nil {
		return nil, fmt.Errorf("%s: not a bkrun catalogue file: %w", path, err)
	}
	if e.Format != SnapshotFormat {
		return nil, fmt.Errorf("%s: unknown catalogue format %q (want %s)", path, e.Format, SnapshotFormat)
	}
	if e.Source == "" {
		return nil, fmt.Errorf("%s: no source", path)
	}
	if e.Finished.IsZero() {
		return nil, fmt.Errorf("%s: no finished time", path)
	}
	if p, ok := e.Extra["parent"]; ok {
		if s, ok := p.(string); !ok || s == "" || strings.Contains(s, "/") {
			return nil, fmt.Errorf("%s: parent %v is not a snapshot name", path, p)
		}
	}
	return &e, nil
}

// Marshal renders the entry as written to disk.
func (e *SnapshotEntry) Marshal() []byte {
	b, _ := json.MarshalIndent(e, "", "  ")
	return append(b, '\n')
}

// check fills the fixed fields and refuses an entry that could not be read
// back.
func (e *SnapshotEntry) check(snapshot string) error {
	e.Format, e.SourceKind = SnapshotFormat, SnapshotSourceKind
	for k, v := range e.Extra {
		if v == nil {
			delete(e.Extra, k)
		}
	}
	if len(e.Extra) == 0 {
		e.Extra = nil
	}
	if e.Finished.IsZero() {
		e.Finished = time.Now().UTC()
	}
	if e.Started.IsZero() {
		e.Started = e.Finished
	}
	e.Seconds = e.Finished.Sub(e.Started).Seconds()
	if e.Source == "" {
		return fmt.Errorf("catalogue entry of %s: no source", snapshot)
	}
	_, err := ParseSnapshotEntry(snapshot+".json", e.Marshal())
	return err
}

// WriteSnapshotEntry writes the entry of the local snapshot directory
// snapshot as snapshot.json: to a temporary name in the same directory,
// synced, renamed into place (replacing an older entry), and the directory
// synced. The snapshot must be a directory.
func WriteSnapshotEntry(snapshot string, e *SnapshotEntry) error {
	snapshot = filepath.Clean(snapshot)
	st, err := os.Stat(snapshot)
	if err != nil {
		return fmt.Errorf("catalogue entry of %s: %w", snapshot, unwrap(err))
	}
	if !st.IsDir() {
		return fmt.Errorf("catalogue entry of %s: not a directory", snapshot)
	}
	if err := e.check(snapshot); err != nil {
		return err
	}
	dst := stream.MetaPath(snapshot)
	f, err := os.CreateTemp(filepath.Dir(snapshot), "."+filepath.Base(dst)+".partial-*")
	if err != nil {
		return fmt.Errorf("catalogue entry %s: %w", dst, unwrap(err))
	}
	tmp := f.Name()
	_, err = f.Write(e.Marshal())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("catalogue entry %s: %w", dst, unwrap(err))
	}
	if d, err := os.Open(filepath.Dir(dst)); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			return fmt.Errorf("catalogue entry %s: syncing the directory: %w", dst, err)
		}
	}
	return nil
}

// WriteSnapshotEntryRemote writes the entry of the snapshot directory
// snapshot on the host behind conn, over SFTP: a temporary name, fsync,
// size check and rename (ssh.Conn.Create).
func WriteSnapshotEntryRemote(conn *ssh.Conn, snapshot string, e *SnapshotEntry) error {
	snapshot = path.Clean(snapshot)
	sc, err := conn.SFTP()
	if err != nil {
		return fmt.Errorf("catalogue entry of %s: %w", snapshot, err)
	}
	st, err := sc.Stat(snapshot)
	if err != nil {
		return fmt.Errorf("catalogue entry of %s:%s: %w", conn, snapshot, unwrap(err))
	}
	if !st.IsDir() {
		return fmt.Errorf("catalogue entry of %s:%s: not a directory", conn, snapshot)
	}
	if err := e.check(snapshot); err != nil {
		return err
	}
	f, err := conn.Create(stream.MetaPath(snapshot), true)
	if err != nil {
		return fmt.Errorf("catalogue entry: %w", err)
	}
	if _, err := f.Write(e.Marshal()); err != nil {
		f.Abort()
		return fmt.Errorf("catalogue entry: %w", err)
	}
	if err := f.Commit(); err != nil {
		return fmt.Errorf("catalogue entry: %w", err)
	}
	return nil
}

// WriteSnapshotEntryReceiver writes the entry of the snapshot snapshot
// (relative to the receiver's root) through a `bkrun receive` session: an
// upload the receiver verifies (size, hash) before renaming it into place.
// The receiver cannot tell whether the snapshot exists.
func WriteSnapshotEntryReceiver(sess *ssh.ReceiverSession, snapshot string, e *SnapshotEntry) error {
	snapshot = path.Clean(snapshot)
	if err := e.check(snapshot); err != nil {
		return err
	}
	f, err := sess.Put(stream.MetaPath(snapshot), true)
	if err != nil {
		return fmt.Errorf("catalogue entry %s: %w", stream.MetaPath(snapshot), err)
	}
	if _, err := f.Write(e.Marshal()); err != nil {
		f.Abort()
		return fmt.Errorf("catalogue entry %s: %w", stream.MetaPath(snapshot), err)
	}
	if err := f.Commit(); err != nil {
		return fmt.Errorf("catalogue entry %s: %w", stream.MetaPath(snapshot), err)
	}
	return nil
}

// SubvolumeIDs returns the UUID and received UUID of the subvolume at
// snapshot, locally (btrfs subvolume show) or, with conn, on the host
// behind it (the same command over SSH, parsed here).
func SubvolumeIDs(ctx context.Context, conn *ssh.Conn, snapshot string) (uuid, received string, err error) {
	var inf btrfs.Info
	if conn == nil {
		inf, err = btrfs.Show(ctx, snapshot)
	} else {
		var out string
		out, err = conn.Output(ctx, exec.Quote(btrfs.Argv("subvolume", "show", snapshot)))
		if err == nil {
			inf, err = btrfs.ParseShow(out)
		}
		if err != nil {
			err = fmt.Errorf("btrfs subvolume show %s on %s: %w", snapshot, conn, err)
		}
	}
	if err != nil {
		return "", "", err
	}
	return inf.UUID, inf.ReceivedUUID, nil
}

func unwrap(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
