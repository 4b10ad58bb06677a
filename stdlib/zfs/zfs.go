// Package zfs takes, lists, destroys, sends and receives ZFS snapshots
// through zfs(8).
package zfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/bkrun/bkrun/stdlib/exec"
)

// CommandTimeout bounds the short zfs commands (not send/receive).
var CommandTimeout = 5 * time.Minute

// Snap is a snapshot as zfs list reports it.
type Snap struct {
	Name    string // pool/dataset@name
	Created time.Time
}

func run(ctx context.Context, stdin string, argv ...string) (string, error) {
	res, err := exec.Run(ctx, exec.Cmd{Argv: argv, Capture: true, Stdin: stdin, Timeout: CommandTimeout})
	return res.Stdout, err
}

func checkSnapName(s string) error {
	ds, name, ok := strings.Cut(s, "@")
	if !ok || ds == "" || name == "" || strings.ContainsAny(name, "@/ ") {
		return fmt.Errorf("%q is not a snapshot name (pool/dataset@name)", s)
	}
	return nil
}

// Snapshot creates snap ("pool/ds@name").
func Snapshot(ctx context.Context, snap string) error {
	if err := checkSnapName(snap); err != nil {
		return err
	}
	_, err := run(ctx, "", "zfs", "snapshot", snap)
	return err
}

// Destroy destroys a snapshot. It refuses anything that is not a snapshot
// name: `zfs destroy pool/ds` would destroy the dataset itself.
func Destroy(ctx context.Context, snap string) error {
	if err := checkSnapName(snap); err != nil {
		return fmt.Errorf("refusing to destroy: %w", err)
	}
	_, err := run(ctx, "", "zfs", "destroy", snap)
	return err
}

// List returns the snapshots of dataset (not of its children), oldest first.
func List(ctx context.Context, dataset string) ([]Snap, error) {
	out, err := run(ctx, "", "zfs", "list", "-H", "-p", "-t", "snapshot", "-o", "name,creation", "-s", "creation", "-r", dataset)
	if err != nil {
		return nil, err
	}
	var snaps []Snap
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Split(l, "\t")
		if len(f) != 2 || !strings.HasPrefix(f[0], dataset+"@") {
			continue
		}
		sec, err := strconv.ParseInt(strings.TrimSpace(f[1]), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("zfs list: bad creation time in %q", l)
		}
		snaps = append(snaps, Snap{Name: f[0], Created: time.Unix(sec, 0)})
	}
	return snaps, nil
}

// Send streams snap, incrementally from base when base is not empty. A
// failing send surfaces as a read error, never as a short stream.
func Send(ctx context.Context, snap, base string) (*exec.StreamReader, error) {
	if err := checkSnapName(snap); err != nil {
		return nil, err
	}
	argv := []string{"zfs", "send"}
	if base != "" {
		if err := checkSnapName(base); err != nil {
			return nil, fmt.Errorf("base: %w", err)
		}
		argv = append(argv, "-i", base)
	}
	return exec.Stream(ctx, exec.Cmd{Argv: append(argv, snap)})
}

// Receive feeds a send stream to `zfs receive [-F] target`.
func Receive(ctx context.Context, target string, r io.Reader, force bool) error {
	argv := []string{"zfs", "receive"}
	if force {
		argv = append(argv, "-F")
	}
	argv = append(argv, target)
	// A failing stream (a failed send) stops zfs receive: exec.Run
	// reports it as an InputError.
	_, err := exec.Run(ctx, exec.Cmd{Argv: argv, Capture: true, StdinReader: r})
	var ie *exec.InputError
	if errors.As(err, &ie) {
		return fmt.Errorf("reading the send stream: %w", ie.Err)
	}
	return err
}
