package receive

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	osexec "os/exec"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"
)

// Options configure a Receiver.
type Options struct {
	Root string // every upload lands under this directory
	// Overwrite lets a sender that asks for it ("overwrite":true) replace
	// an existing file. Without it an existing file is never replaced.
	Overwrite bool
	Logger    *slog.Logger // one line per op; nil: discarded
}

// Receiver accepts uploads under a root directory.
type Receiver struct {
	o    Options
	root int // O_DIRECTORY fd of the root
	log  *slog.Logger

	mu     sync.Mutex
	tmpDir int // directory fd of the file being received, -1 when none
	tmp    string
}

// ProtocolError is a sender that broke the protocol (or vanished in the
// middle of an upload); the session cannot go on.
type ProtocolError struct{ Err error }

func (e *ProtocolError) Error() string { return e.Err.Error() }
func (e *ProtocolError) Unwrap() error { return e.Err }

func protoErr(format string, a ...any) error { return &ProtocolError{fmt.Errorf(format, a...)} }

// New opens the root directory (which must exist).
func New(o Options) (*Receiver, error) {
	if o.Root == "" {
		return nil, errors.New("no root directory")
	}
	fi, err := os.Stat(o.Root)
	if err != nil {
		return nil, fmt.Errorf("root %s: %w", o.Root, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("root %s is not a directory", o.Root)
	}
	fd, err := unix.Open(o.Root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening root %s: %w", o.Root, err)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Receiver{o: o, root: fd, log: log, tmpDir: -1}, nil
}

// Close releases the root directory.
func (r *Receiver) Close() error { return unix.Close(r.root) }

// Cleanup removes the file being received, if any. It is safe to call
// from a signal handler goroutine while Serve runs.
func (r *Receiver) Cleanup() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tmpDir >= 0 {
		_ = unix.Unlinkat(r.tmpDir, r.tmp, 0)
		r.tmpDir, r.tmp = -1, ""
	}
}

func (r *Receiver) setTemp(dirfd int, name string) {
	r.mu.Lock()
	r.tmpDir, r.tmp = dirfd, name
	r.mu.Unlock()
}

// forgetTemp is called once the temporary name is gone (renamed).
func (r *Receiver) forgetTemp() { r.setTemp(-1, "") }

// Serve greets the sender on out and handles ops from in until "quit" or
// the end of input between ops (nil). A protocol error, an end of input
// in the middle of an upload, or a failure to write a reply is returned;
// the file being received is removed first in every case.
func (r *Receiver) Serve(in io.Reader, out io.Writer) error {
	if err := writeJSON(out, Hello{Proto: Proto, Root: r.o.Root}); err != nil {
		return fmt.Errorf("sending the greeting: %w", err)
	}
	br := bufio.NewReaderSize(in, 1<<20)
	for {
		line, err := readLine(br)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return protoErr("reading an op: %w", err)
		}
		var op Op
		if err := json.Unmarshal(line, &op); err != nil {
			msg := fmt.Sprintf("bad op line %.80q: %v", line, err)
			writeJSON(out, Reply{Error: msg})
			return protoErr("%s", msg)
		}
		switch op.Op {
		case "quit":
			return nil
		case "put":
			if err := r.put(br, out, op); err != nil {
				return err
			}
		case "btrfs":
			// A btrfs send stream for the directory op.Path: received like a
			// file next to where it goes, verified, then applied with
			// btrfs receive -f, so an unverified stream is never applied.
			op.final = path.Base(path.Clean(op.Path))
			op.Path = path.Join(path.Dir(path.Clean(op.Path)), streamName)
			if err := r.put(br, out, op); err != nil {
				return err
			}
		default:
			msg := fmt.Sprintf("unknown op %q (this receiver speaks %s: put, btrfs, quit)", op.Op, Proto)
			writeJSON(out, Reply{Error: msg})
			return protoErr("%s", msg)
		}
	}
}

func (r *Receiver) refuse(out io.Writer, p, msg string) error {
	r.log.Warn("put refused", "path", p, "error", msg)
	if err := writeJSON(out, Reply{Error: msg}); err != nil {
		return fmt.Errorf("sending a reply: %w", err)
	}
	return nil
}

func (r *Receiver) put(br *bufio.Reader, out io.Writer, op Op) error {
	start := time.Now()
	rel, dirfd, base, overwrite, err := r.prepare(op)
	if err != nil {
		return r.refuse(out, op.Path, err.Error())
	}
	defer unix.Close(dirfd)
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := "." + base + ".partial-" + hex.EncodeToString(rnd[:])
	fd, err := unix.Openat(dirfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return r.refuse(out, rel, fmt.Sprintf("creating %s: %v", path.Join(path.Dir(rel), tmp), err))
	}
	r.setTemp(dirfd, tmp)
	f := os.NewFile(uintptr(fd), path.Join(path.Dir(rel), tmp))
	closed := false
	fail := func() {
		if !closed {
			f.Close()
			closed = true
		}
		r.Cleanup()
	}
	defer fail() // no-op after a successful rename
	if err := writeJSON(out, Reply{OK: true}); err != nil {
		return fmt.Errorf("sending a reply: %w", err)
	}

	// Data frames. A write error (disk full) removes the file at once but
	// keeps reading, so that the sender hears why at its commit.
	h := blake3.New()
	buf := make([]byte, 1<<20)
	var n int64
	var werr error
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			r.log.Warn("put failed", "path", rel, "size", n, "error", "input ended in the middle of the data")
			return protoErr("put %s: input ended after %d bytes, in the middle of the data (connection dropped?): %w", rel, n, err)
		}
		size := binary.BigEndian.Uint32(hdr[:])
		if size == 0 {
			break
		}
		if size > MaxFrame {
			fail()
			msg := fmt.Sprintf("frame of %d bytes is larger than the %d allowed", size, MaxFrame)
			writeJSON(out, Reply{Error: msg})
			r.log.Warn("put failed", "path", rel, "size", n, "error", msg)
			return protoErr("put %s: %s", rel, msg)
		}
		for left := int(size); left > 0; {
			k := min(left, len(buf))
			if _, err := io.ReadFull(br, buf[:k]); err != nil {
				r.log.Warn("put failed", "path", rel, "size", n, "error", "input ended in the middle of a frame")
				return protoErr("put %s: input ended after %d bytes, in the middle of a frame (connection dropped?): %w", rel, n, err)
			}
			h.Write(buf[:k])
			if werr == nil {
				if _, err := f.Write(buf[:k]); err != nil {
					werr = err
					fail()
				}
			}
			n += int64(k)
			left -= k
		}
	}
	line, err := readLine(br)
	if err != nil {
		r.log.Warn("put failed", "path", rel, "size", n, "error", "no trailer")
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return protoErr("put %s: reading the trailer: %w", rel, err)
	}
	var t Trailer
	if err := json.Unmarshal(line, &t); err != nil {
		fail()
		msg := fmt.Sprintf("bad trailer %.80q: %v", line, err)
		writeJSON(out, Reply{Error: msg})
		return protoErr("put %s: %s", rel, msg)
	}
	var msg string
	switch {
	case t.Abort:
		msg = "aborted by the sender"
	case werr != nil:
		msg = fmt.Sprintf("writing %s: %v", f.Name(), werr)
	case t.Size != n:
		msg = fmt.Sprintf("size mismatch: the sender says %d bytes, %d arrived", t.Size, n)
	case !strings.EqualFold(t.BLAKE3, hex.EncodeToString(h.Sum(nil))):
		msg = fmt.Sprintf("BLAKE3 mismatch: the sender says %.64s, the data received hashes to %x", t.BLAKE3, h.Sum(nil))
	default:
		var err error
		if op.Op == "btrfs" {
			rel, err = r.btrfsReceive(f, dirfd, tmp, path.Dir(rel), op.final)
		} else {
			err = r.commit(f, dirfd, tmp, base, overwrite)
		}
		if err != nil {
			msg = err.Error()
		} else {
			closed = true
		}
	}
	if msg != "" {
		fail()
		r.log.Warn("put failed", "path", rel, "size", n, "error", msg)
		if err := writeJSON(out, Reply{Error: msg}); err != nil {
			return fmt.Errorf("sending a reply: %w", err)
		}
		return nil
	}
	r.log.Info("put", "path", rel, "size", n, "result", "ok", "seconds", time.Since(start).Seconds())
	if err := writeJSON(out, Reply{OK: true, Path: rel, Size: &n}); err != nil {
		return fmt.Errorf("sending a reply: %w", err)
	}
	return nil
}

// commit syncs and closes f, renames it into place and syncs the
// directory. On success the temporary name is forgotten.
func (r *Receiver) commit(f *os.File, dirfd int, tmp, base string, overwrite bool) error {
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %v", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %v", f.Name(), err)
	}
	if overwrite {
		if err := unix.Renameat(dirfd, tmp, dirfd, base); err != nil {
			return fmt.Errorf("rename %s: %v", tmp, err)
		}
	} else if err := renameNoReplace(dirfd, tmp, base); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return errors.New("the target appeared while it was written; the existing file is kept")
		}
		return fmt.Errorf("rename %s: %v", tmp, err)
	}
	r.forgetTemp()
	if err := unix.Fsync(dirfd); err != nil {
		return fmt.Errorf("fsync of the directory: %v", err)
	}
	return nil
}

// renameNoReplace renames without ever replacing an existing target:
// renameat2(RENAME_NOREPLACE), or link+unlink on a file system without it.
func renameNoReplace(dirfd int, from, to string) error {
	err := unix.Renameat2(dirfd, from, dirfd, to, unix.RENAME_NOREPLACE)
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
		return err
	}
	if err := unix.Linkat(dirfd, from, dirfd, to, 0); err != nil {
		return err
	}
	return unix.Unlinkat(dirfd, from, 0)
}

// refusal is a put refused before any data is read.
type refusal string

func (e refusal) Error() string { return string(e) }

// CheckPath validates a sender's path without touching the file system:
// relative, no "..", not empty, no NUL. It returns the cleaned path.
func CheckPath(p string) (string, error) {
	switch {
	case p == "":
		return "", refusal("empty path")
	case strings.ContainsRune(p, 0):
		return "", refusal("path contains a NUL byte")
	case strings.HasPrefix(p, "/"):
		return "", refusal(fmt.Sprintf("absolute path %q refused: paths are relative to the receiver's root", p))
	}
	for _, c := range strings.Split(p, "/") {
		if c == ".." {
			return "", refusal(fmt.Sprintf("path %q refused: \"..\" is not allowed", p))
		}
	}
	clean := path.Clean(p)
	if clean == "." || strings.HasSuffix(p, "/") {
		return "", refusal(fmt.Sprintf("path %q is not a file name", p))
	}
	return clean, nil
}

var noOpenat2 atomic.Bool

// openDir opens the directory name inside dirfd without following a
// symlink, and without leaving dirfd: openat2(RESOLVE_BENEATH|
// RESOLVE_NO_SYMLINKS) where the kernel has it, else openat(O_NOFOLLOW).
func openDir(dirfd int, name string) (int, error) {
	flags := unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	if !noOpenat2.Load() {
		fd, err := unix.Openat2(dirfd, name, &unix.OpenHow{
			Flags:   uint64(flags),
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM) {
			return fd, err
		}
		noOpenat2.Store(true) // no openat2 (old kernel or seccomp)
	}
	return unix.Openat(dirfd, name, flags, 0)
}

// prepare validates op.Path and walks to its directory, creating missing
// directories (0755) and refusing anything that is not a real directory.
// It returns the cleaned path, an fd of its directory, the base name and
// whether an existing file may be replaced.
func (r *Receiver) prepare(op Op) (rel string, dirfd int, base string, overwrite bool, err error) {
	rel, err = CheckPath(op.Path)
	if err != nil {
		return "", -1, "", false, err
	}
	dir, base := path.Split(rel)
	fd, err := unix.Dup(r.root)
	if err != nil {
		return "", -1, "", false, err
	}
	defer func() {
		if err != nil {
			unix.Close(fd)
		}
	}()
	walked := ""
	for _, c := range strings.Split(strings.TrimSuffix(dir, "/"), "/") {
		if c == "" {
			continue
		}
		walked = path.Join(walked, c)
		var st unix.Stat_t
		err = unix.Fstatat(fd, c, &st, unix.AT_SYMLINK_NOFOLLOW)
		if errors.Is(err, unix.ENOENT) {
			if err = unix.Mkdirat(fd, c, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
				return "", -1, "", false, fmt.Errorf("creating directory %s: %v", walked, err)
			}
			err = unix.Fstatat(fd, c, &st, unix.AT_SYMLINK_NOFOLLOW)
		}
		switch {
		case err != nil:
			return "", -1, "", false, fmt.Errorf("%s: %v", walked, err)
		case st.Mode&unix.S_IFMT == unix.S_IFLNK:
			return "", -1, "", false, refusal(fmt.Sprintf("%s is a symbolic link; the receiver follows none", walked))
		case st.Mode&unix.S_IFMT != unix.S_IFDIR:
			return "", -1, "", false, refusal(fmt.Sprintf("%s is not a directory", walked))
		}
		nfd, err2 := openDir(fd, c)
		if err2 != nil {
			err = err2
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
				err = refusal(fmt.Sprintf("%s is, or became, a symbolic link; the receiver follows none", walked))
			}
			return "", -1, "", false, fmt.Errorf("%s: %w", walked, err)
		}
		unix.Close(fd)
		fd = nfd
	}
	var st unix.Stat_t
	err = unix.Fstatat(fd, base, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT):
		err = nil
	case err != nil:
		return "", -1, "", false, fmt.Errorf("%s: %v", rel, err)
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		err = refusal(fmt.Sprintf("%s is a symbolic link; refusing to write through or replace it", rel))
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		err = refusal(fmt.Sprintf("%s is a directory", rel))
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		err = refusal(fmt.Sprintf("%s exists and is not a regular file; refusing to replace it", rel))
	case !op.Overwrite:
		err = refusal(fmt.Sprintf("%s already exists (overwrite=false); the existing file is kept", rel))
	case !r.o.Overwrite:
		err = refusal(fmt.Sprintf("%s already exists and this receiver does not allow overwriting (it runs without --overwrite); the existing file is kept", rel))
	}
	if err != nil {
		return "", -1, "", false, err
	}
	return rel, fd, base, op.Overwrite && r.o.Overwrite, nil
}

// streamName is the placeholder file name a btrfs op is validated as: the
// stream is stored as its temporary name in the target directory.
const streamName = ".btrfs-stream"

// btrfsReceive applies a verified send stream (the temporary file tmp in
// dirfd) with btrfs receive into that directory, then removes the file.
// It returns the received subvolume's path relative to the root.
func (r *Receiver) btrfsReceive(f *os.File, dirfd int, tmp, relDir, final string) (string, error) {
	if final == "" || final == "." || final == ".." || strings.HasPrefix(final, ".") {
		return "", fmt.Errorf("btrfs: %q is not a name for the received subvolume", final)
	}
	if _, err := os.Lstat(fmt.Sprintf("/proc/%d/fd/%d/%s", os.Getpid(), dirfd, final)); err == nil {
		return "", fmt.Errorf("btrfs: %s already exists; the existing subvolume is kept", path.Join(relDir, final))
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("close %s: %v", f.Name(), err)
	}
	defer r.Cleanup() // the stream file goes in every case
	// The directory was opened beneath the root without following
	// symlinks; /proc/PID/fd names exactly that directory (for the child
	// too, which /proc/self would not).
	dir := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), dirfd)
	cmd := osexec.Command("btrfs", "receive", "-e", "-f", dir+"/"+tmp, dir)
	out, err := cmd.CombinedOutput()
	name := ""
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "At" && (f[1] == "subvol" || f[1] == "snapshot") {
			name = f[2]
		}
	}
	if err != nil {
		if name != "" { // a half-received subvolume must not look like a backup
			osexec.Command("btrfs", "subvolume", "delete", dir+"/"+name).Run()
		}
		return "", fmt.Errorf("btrfs receive: %v: %s", err, strings.TrimSpace(lastLines(string(out))))
	}
	if name == "" {
		return "", fmt.Errorf("btrfs receive named no subvolume: %s", strings.TrimSpace(string(out)))
	}
	if err := renameNoReplace(dirfd, name, final); err != nil {
		osexec.Command("btrfs", "subvolume", "delete", dir+"/"+name).Run()
		return "", fmt.Errorf("btrfs: naming the received subvolume %s: %v (deleted it)", final, err)
	}
	return path.Join(relDir, final), nil
}

func lastLines(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > 3 {
		l = l[len(l)-3:]
	}
	return strings.Join(l, " / ")
}
