// Package btrfs drives btrfs-progs: subvolumes, read-only snapshots, and
// send/receive streams. Every command runs through stdlib/exec (argv, no
// shell, its own process group); its real exit status and the tail of its
// stderr reach the caller. Unlike btrfsctl in 2010 (seed 000), btrfs-progs
// exits 0 on success and non-zero on failure, so nothing is silenced.
//
// Errors have the form "btrfs OP PATH: btrfs exited 1: ERROR: ...".
package btrfs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/bkrun/bkrun/stdlib/exec"
	"golang.org/x/sys/unix"
)

// Magic is the f_type statfs reports for btrfs.
const Magic = 0x9123683E

// subvolRootIno is the inode number of every subvolume's root directory
// (BTRFS_FIRST_FREE_OBJECTID).
const subvolRootIno = 256

// Command is the btrfs-progs executable; tests may point it elsewhere.
var Command = "btrfs"

// OpError is a failed btrfs operation on a path.
type OpError struct {
	Op   string // "subvolume delete", "send", ...
	Path string
	Err  error // often *exec.Error with the exit status and stderr tail
}

func (e *OpError) Error() string { return "btrfs " + e.Op + " " + e.Path + ": " + e.Err.Error() }
func (e *OpError) Unwrap() error { return e.Err }

func opErr(op, path string, err error) error { return &OpError{Op: op, Path: path, Err: err} }

// ErrNotSubvolume is returned for a path that is not a subvolume root.
var ErrNotSubvolume = errors.New("not a btrfs subvolume")

// run runs btrfs with args and returns its captured stdout.
func run(ctx context.Context, op, path string, args ...string) (string, error) {
	res, err := exec.Run(ctx, exec.Cmd{Argv: append([]string{Command}, args...), Capture: true})
	if err != nil {
		return res.Stdout, opErr(op, path, err)
	}
	return res.Stdout, nil
}

// Argv returns the command line an operation runs, for dry-run output.
func Argv(args ...string) []string { return append([]string{Command}, args...) }

// IsSubvolume reports whether path is the root of a btrfs subvolume
// (including the top-level one): a directory on btrfs with inode 256.
func IsSubvolume(path string) bool {
	ok, _ := checkSubvolume(path)
	return ok
}

// checkSubvolume says why path is not a subvolume.
func checkSubvolume(path string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return false, err
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return false, err
	}
	if uint32(fs.Type) != Magic {
		return false, fmt.Errorf("%w: not on a btrfs filesystem", ErrNotSubvolume)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return false, fmt.Errorf("%w: not a directory", ErrNotSubvolume)
	}
	if st.Ino != subvolRootIno {
		return false, fmt.Errorf("%w: a plain directory (inode %d, a subvolume root has inode 256)", ErrNotSubvolume, st.Ino)
	}
	return true, nil
}

// ioctlSubvolGetflags is BTRFS_IOC_SUBVOL_GETFLAGS, _IOR(0x94, 25, u64);
// flagReadOnly is BTRFS_SUBVOL_RDONLY.
const (
	ioctlSubvolGetflags = 0x80089419
	flagReadOnly        = 1 << 1
)

// IsReadOnly reports whether path is the root of a read-only btrfs
// subvolume (a snapshot taken with -r, or a received one), with one ioctl
// and no process: cheap enough to ask of every directory in a scan. A path
// that is not a subvolume root is ErrNotSubvolume.
func IsReadOnly(path string) (bool, error) {
	if ok, err := checkSubvolume(path); !ok {
		return false, err
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	var flags uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), ioctlSubvolGetflags, uintptr(unsafe.Pointer(&flags))); errno != 0 {
		return false, &os.PathError{Op: "BTRFS_IOC_SUBVOL_GETFLAGS", Path: path, Err: errno}
	}
	return flags&flagReadOnly != 0, nil
}

// parentDir checks that the directory a new subvolume goes into exists
// and that the name is free.
func parentDir(op, path string) error {
	if _, err := os.Lstat(path); err == nil {
		return opErr(op, path, errors.New("already exists"))
	}
	dir := filepath.Dir(path)
	st, err := os.Stat(dir)
	if err != nil {
		return opErr(op, path, fmt.Errorf("parent directory: %w", err))
	}
	if !st.IsDir() {
		return opErr(op, path, fmt.Errorf("parent %s is not a directory", dir))
	}
	return nil
}

// Create makes a new empty subvolume at path; its parent directory must
// exist and path must not.
func Create(ctx context.Context, path string) error {
	if err := parentDir("subvolume create", path); err != nil {
		return err
	}
	_, err := run(ctx, "subvolume create", path, "subvolume", "create", path)
	return err
}

// Delete deletes the subvolume at path. A path that is not a subvolume
// (a plain directory, a file, something not on btrfs) is refused: removing
// a snapshot with rm -rf would instead unshare all its data.
func Delete(ctx context.Context, path string) error {
	if ok, err := checkSubvolume(path); !ok {
		return opErr("subvolume delete", path, err)
	}
	_, err := run(ctx, "subvolume delete", path, "subvolume", "delete", path)
	return err
}

// SnapshotArgs is the btrfs argv (after "btrfs") for a snapshot.
func SnapshotArgs(src, dst string, readonly bool) []string {
	args := []string{"subvolume", "snapshot"}
	if readonly {
		args = append(args, "-r")
	}
	return append(args, src, dst)
}

// Snapshot snapshots the subvolume src as dst, read-only if asked. dst
// must not exist (btrfs would otherwise put the snapshot inside it).
func Snapshot(ctx context.Context, src, dst string, readonly bool) error {
	if ok, err := checkSubvolume(src); !ok {
		return opErr("subvolume snapshot", src, err)
	}
	if err := parentDir("subvolume snapshot", dst); err != nil {
		return err
	}
	_, err := run(ctx, "subvolume snapshot", dst, SnapshotArgs(src, dst, readonly)...)
	return err
}

// Subvol is one line of `btrfs subvolume list`.
type Subvol struct {
	ID           uint64
	Gen          uint64
	TopLevel     uint64
	ParentUUID   string // "" when none
	ReceivedUUID string // "" when none
	UUID         string
	Path         string // relative to the filesystem's top-level subvolume
	ReadOnly     bool
}

// List lists every subvolume of the filesystem mounted at mount (paths
// relative to its top-level subvolume), with read-only flags.
func List(ctx context.Context, mount string) ([]Subvol, error) {
	out, err := run(ctx, "subvolume list", mount, "subvolume", "list", "-u", "-q", "-R", mount)
	if err != nil {
		return nil, err
	}
	subs, err := ParseList(out)
	if err != nil {
		return nil, opErr("subvolume list", mount, err)
	}
	roOut, err := run(ctx, "subvolume list", mount, "subvolume", "list", "-r", mount)
	if err != nil {
		return nil, err
	}
	ro, err := ParseList(roOut)
	if err != nil {
		return nil, opErr("subvolume list", mount, err)
	}
	isRO := map[uint64]bool{}
	for _, s := range ro {
		isRO[s.ID] = true
	}
	for i := range subs {
		subs[i].ReadOnly = isRO[subs[i].ID]
	}
	return subs, nil
}

// ParseList parses `btrfs subvolume list` output in any combination of
// the -u -q -R -g -c options: "key value" pairs up to "path", whose value
// is the rest of the line (it may contain spaces).
func ParseList(out string) ([]Subvol, error) {
	var subs []Subvol
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var s Subvol
		rest := line
		havePath, haveID := false, false
		for {
			rest = strings.TrimLeft(rest, " \t")
			if rest == "" {
				break
			}
			key, after, _ := strings.Cut(rest, " ")
			if key == "top" && strings.HasPrefix(after, "level ") {
				key, after = "top level", after[len("level "):]
			}
			if key == "path" {
				s.Path = after
				havePath = true
				break
			}
			after = strings.TrimLeft(after, " \t")
			val, next, _ := strings.Cut(after, " ")
			if val == "" {
				return nil, fmt.Errorf("cannot parse subvolume list line %q: no value for %q", line, key)
			}
			rest = next
			var err error
			switch key {
			case "ID":
				s.ID, err = strconv.ParseUint(val, 10, 64)
				haveID = true
			case "gen":
				s.Gen, err = strconv.ParseUint(val, 10, 64)
			case "top level":
				s.TopLevel, err = strconv.ParseUint(val, 10, 64)
			case "uuid":
				s.UUID = uuidOrEmpty(val)
			case "parent_uuid":
				s.ParentUUID = uuidOrEmpty(val)
			case "received_uuid":
				s.ReceivedUUID = uuidOrEmpty(val)
			case "otime": // -s: "otime 2024-01-01 12:00:00"
				_, rest, _ = strings.Cut(strings.TrimLeft(rest, " "), " ")
			default: // cgen, parent, ...: a single value, ignored
			}
			if err != nil {
				return nil, fmt.Errorf("cannot parse subvolume list line %q: %s: %w", line, key, err)
			}
		}
		if !haveID || !havePath {
			return nil, fmt.Errorf("cannot parse subvolume list line %q: no ID or path", line)
		}
		subs = append(subs, s)
	}
	return subs, nil
}

func uuidOrEmpty(s string) string {
	if s == "-" {
		return ""
	}
	return s
}

// Info is what `btrfs subvolume show` reports.
type Info struct {
	Path         string // as given
	Name         string
	UUID         string
	ParentUUID   string // "" when none
	ReceivedUUID string // "" unless the subvolume was received
	ID           uint64
	Gen          uint64
	ParentID     uint64
	TopLevel     uint64
	ReadOnly     bool
	Flags        string // "readonly", "-", ...
	Created      time.Time
}

// Show describes the subvolume at path.
func Show(ctx context.Context, path string) (Info, error) {
	if ok, err := checkSubvolume(path); !ok {
		return Info{}, opErr("subvolume show", path, err)
	}
	out, err := run(ctx, "subvolume show", path, "subvolume", "show", path)
	if err != nil {
		return Info{}, err
	}
	inf, err := ParseShow(out)
	if err != nil {
		return Info{}, opErr("subvolume show", path, err)
	}
	inf.Path = path
	return inf, nil
}

// ParseShow parses `btrfs subvolume show` output ("Key: \t\tvalue" lines
// after the path line; the snapshot list at the end is ignored).
func ParseShow(out string) (Info, error) {
	var inf Info
	seen := 0
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		var err error
		switch key {
		case "Name":
			inf.Name = val
		case "UUID":
			inf.UUID, seen = uuidOrEmpty(val), seen+1
		case "Parent UUID":
			inf.ParentUUID = uuidOrEmpty(val)
		case "Received UUID":
			inf.ReceivedUUID = uuidOrEmpty(val)
		case "Subvolume ID":
			inf.ID, err = strconv.ParseUint(val, 10, 64)
			seen++
		case "Generation":
			inf.Gen, err = strconv.ParseUint(val, 10, 64)
		case "Parent ID":
			inf.ParentID, err = strconv.ParseUint(val, 10, 64)
		case "Top level ID":
			inf.TopLevel, err = strconv.ParseUint(val, 10, 64)
		case "Flags":
			inf.Flags = val
			inf.ReadOnly = strings.Contains(val, "readonly")
		case "Creation time":
			if val != "-" {
				inf.Created, err = time.Parse("2006-01-02 15:04:05 -0700", val)
			}
		case "Snapshot(s)":
			return finishShow(inf, seen)
		}
		if err != nil {
			return inf, fmt.Errorf("cannot parse subvolume show line %q: %w", line, err)
		}
	}
	return finishShow(inf, seen)
}

func finishShow(inf Info, seen int) (Info, error) {
	if seen < 2 {
		return inf, errors.New("cannot parse subvolume show output: no UUID or Subvolume ID")
	}
	return inf, nil
}

// SendArgs is the btrfs argv (after "btrfs") for a send.
func SendArgs(snap, parent string) []string {
	args := []string{"send"}
	if parent != "" {
		args = append(args, "-p", parent)
	}
	return append(args, snap)
}

// SendStream is a running `btrfs send`: reading it yields the send stream.
// The stream ends with io.EOF only after btrfs exited 0; a failing send is
// a read error carrying its exit status and stderr, never a clean short
// stream. Close stops an unfinished send (its process group is killed).
type SendStream struct {
	snap, parent string
	pr           *io.PipeReader
	cancel       context.CancelFunc
	done         chan struct{}
	err          error // the send's outcome, set before done is closed
	once         sync.Once
}

// Send starts `btrfs send [-p parent] snap` and returns its stream.
func Send(ctx context.Context, snap, parent string) (*SendStream, error) {
	if ok, err := checkSubvolume(snap); !ok {
		return nil, opErr("send", snap, err)
	}
	if parent != "" {
		if ok, err := checkSubvolume(parent); !ok {
			return nil, opErr("send", snap, fmt.Errorf("parent %s: %w", parent, err))
		}
	}
	if _, err := osexec.LookPath(Command); err != nil {
		return nil, opErr("send", snap, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	s := &SendStream{snap: snap, parent: parent, pr: pr, cancel: cancel, done: make(chan struct{})}
	go func() {
		_, err := exec.Run(ctx, exec.Cmd{Argv: Argv(SendArgs(snap, parent)...), Stdout: pw})
		if err != nil {
			err = opErr("send", snap, err)
		}
		s.err = err
		close(s.done)
		pw.CloseWithError(err) // nil: readers see io.EOF
	}()
	return s, nil
}

// Read reads the send stream.
func (s *SendStream) Read(p []byte) (int, error) { return s.pr.Read(p) }

// Close stops the send if it is still running and waits for it. It
// returns the send's error unless the stream was read to its end.
func (s *SendStream) Close() error {
	s.once.Do(func() {
		select {
		case <-s.done:
		default:
			s.cancel()
			s.pr.CloseWithError(errors.New("send stream closed"))
		}
		<-s.done
		s.cancel()
	})
	return s.err
}

// Path is the snapshot being sent (stream.copy names its source by it).
func (s *SendStream) Path() string { return s.snap }

// Kind describes the source for catalogue entries.
func (s *SendStream) Kind() string {
	if s.parent != "" {
		return "btrfs-send-incremental"
	}
	return "btrfs-send"
}

func (s *SendStream) String() string {
	return "btrfs send " + strings.Join(SendArgs(s.snap, s.parent)[1:], " ")
}

// Receive runs `btrfs receive DIR` on the send stream read from r and
// returns the path of the subvolume it created (announced by btrfs as
// "At subvol NAME" or "At snapshot NAME"). If r fails, the receive
// is killed and r's error returned. A subvolume left half-received by a
// failure is deleted when it did not exist before.
func Receive(ctx context.Context, dir string, r io.Reader) (string, error) {
	const op = "receive"
	st, err := os.Stat(dir)
	if err != nil {
		return "", opErr(op, dir, err)
	}
	if !st.IsDir() {
		return "", opErr(op, dir, errors.New("not a directory"))
	}
	before := map[string]bool{}
	if ents, err := os.ReadDir(dir); err == nil {
		for _, e := range ents {
			before[e.Name()] = true
		}
	}
	// The stream goes to btrfs receive's stdin. If the source fails (a
	// failing send, a corrupt file) the stream is incomplete: exec.Run
	// stops receive and reports an InputError.
	res, rerr := exec.Run(ctx, exec.Cmd{Argv: Argv("receive", dir), Capture: true, StdinReader: r})
	var readErr error
	var ie *exec.InputError
	if errors.As(rerr, &ie) {
		readErr = ie.Err
	}
	// btrfs-progs 6.x prints "At subvol" on stdout, older ones on stderr.
	name := receivedName(res.Stdout + "\n" + res.Stderr)
	if rerr == nil && readErr == nil {
		if name == "" {
			return "", opErr(op, dir, fmt.Errorf("btrfs receive succeeded but named no subvolume (stderr: %q)", exec.StderrTail(res.Stderr)))
		}
		return filepath.Join(dir, name), nil
	}
	if readErr != nil {
		err = fmt.Errorf("reading the send stream: %w", readErr)
	} else {
		err = rerr
	}
	if name != "" && !before[firstElem(name)] {
		p := filepath.Join(dir, name)
		if IsSubvolume(p) {
			if derr := Delete(context.WithoutCancel(ctx), p); derr != nil {
				err = fmt.Errorf("%w (and removing the partial subvolume failed: %v)", err, derr)
			} else {
				err = fmt.Errorf("%w (partial subvolume %s deleted)", err, p)
			}
		}
	}
	return "", opErr(op, dir, err)
}

func firstElem(name string) string {
	first, _, _ := strings.Cut(name, "/")
	return first
}

// receivedName finds the subvolume btrfs receive announced on stderr
// ("At subvol NAME" for a full stream, "At snapshot NAME" for an
// incremental one); the last one wins.
func receivedName(stderr string) string {
	name := ""
	for _, line := range strings.Split(stderr, "\n") {
		line = strings.TrimRight(line, "\r")
		for _, p := range []string{"At subvol ", "At snapshot "} {
			if strings.HasPrefix(line, p) {
				name = line[len(p):]
			}
		}
	}
	return name
}
