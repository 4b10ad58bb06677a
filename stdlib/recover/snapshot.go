package recover

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/bkrun/bkrun/stdlib/btrfs"
	"github.com/bkrun/bkrun/stdlib/catalog"
	"github.com/bkrun/bkrun/stdlib/stream"
)

// A snapshot backup (catalog.KindSnapshot, a received btrfs subvolume with
// its SNAP.json entry) is already a browsable tree: nothing is decoded.
// Verify checks that it is still a read-only subvolume, the one the entry
// recorded; Restore takes a writable snapshot of it (the rollback); Files,
// Extract and Attach read the directory itself.

// remoteBackup refuses a backup named [user@]host:path (from a catalogue
// scanned over SFTP) that is not also a local path: recover works on the
// machine that holds the backups.
func remoteBackup(path string) error {
	dest, _, remote := stream.ParseRemote(path)
	if !remote {
		return nil
	}
	if _, err := os.Lstat(path); err == nil {
		return nil // a local name with a colon (2026-11-22T03:00:00Z)
	}
	return fmt.Errorf("%s: a backup on %s: recover works on local backups; run it on the backup server (bkrun recover DIR there)", path, dest)
}

// verifySnapshot checks the snapshot directory of b: a btrfs subvolume,
// read-only, with the UUIDs its entry recorded (when it recorded them).
func verifySnapshot(ctx context.Context, b *catalog.Backup, o Options) (VerifyResult, error) {
	r := VerifyResult{Path: b.Path, Kind: b.Kind}
	inf, err := btrfs.Show(ctx, b.Path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return r, fmt.Errorf("%s: snapshot directory is missing", b.Path)
		}
		return r, err
	}
	if !inf.ReadOnly {
		return r, fmt.Errorf("%s: the snapshot is writable (flags %s): it may have changed since it was received", b.Path, inf.Flags)
	}
	for _, id := range []struct{ key, got string }{{"uuid", inf.UUID}, {"received_uuid", inf.ReceivedUUID}} {
		if want, _ := b.Meta.Extra[id.key].(string); want != "" && want != id.got {
			return r, fmt.Errorf("%s: %s is %q, the catalogue entry says %q (not the snapshot that was received)", b.Path, id.key, id.got, want)
		}
	}
	r.UUID, r.ReceivedUUID = inf.UUID, inf.ReceivedUUID
	o.log().Info("recover: verified snapshot", "backup", b.Path, "uuid", inf.UUID)
	return r, nil
}

// restoreSnapshot makes a writable snapshot of b at target, which must not
// exist (and must be on the same btrfs filesystem).
func restoreSnapshot(ctx context.Context, b *catalog.Backup, target string, o Options) (RestoreResult, error) {
	r := RestoreResult{Target: target, Kind: b.Kind}
	if _, err := os.Lstat(target); err == nil {
		return r, fmt.Errorf("%s: already exists; a snapshot is restored as a new subvolume (move the old one aside first)", target)
	}
	if _, err := verifySnapshot(ctx, b, o); err != nil {
		return r, err
	}
	if err := btrfs.Snapshot(ctx, b.Path, target, false); err != nil {
		return r, err
	}
	r.Applied = []string{b.Path}
	o.log().Info("recover: restored snapshot", "backup", b.Path, "target", target)
	return r, nil
}
