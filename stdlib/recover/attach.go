package recover

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bkrun/bkrun/stdlib/catalog"
	"github.com/bkrun/bkrun/stdlib/exec"
	"github.com/bkrun/bkrun/stdlib/part"
	"github.com/bkrun/bkrun/stdlib/stream"
)

// Mount is an image attached read-only and mounted.
type Mount struct {
	Path      string // the mount point
	Device    string // the loop device
	Image     string // the image attached: the backup itself, or a decoded temporary copy
	Partition int    // the partition mounted; 0 for the whole image
	FSType    string // "ext4" for ext2/3/4, else "" (what mount detected)

	mu   sync.Mutex
	undo []undoStep
}

type undoStep struct {
	name string
	fn   func() error
}

func (m *Mount) push(name string, fn func() error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.undo = append(m.undo, undoStep{name, fn})
}

// Steps names the undo steps Close runs, in the order it runs them.
func (m *Mount) Steps() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for i := len(m.undo) - 1; i >= 0; i-- {
		out = append(out, m.undo[i].name)
	}
	return out
}

// Close unmounts, detaches the loop device and removes the temporary
// mount point and image, in reverse order of creation. Every step runs
// even when one fails; calling Close again does nothing.
func (m *Mount) Close() error {
	m.mu.Lock()
	steps := m.undo
	m.undo = nil
	m.mu.Unlock()
	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		if err := steps[i].fn(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", steps[i].name, err))
		}
	}
	return errors.Join(errs...)
}

// Linux partition types Attach picks on its own.
var linuxTypes = map[string]bool{"linux": true, "linux-root-x86-64": true, "linux-home": true}

// Attach makes an image browsable read-only and returns where it is mounted.
//
// path is an image backup (with its catalogue entry; a dump cannot be
// attached) or a raw image file or device without one. A compressed backup
// is first decoded into a sparse temporary image in o.Scratch (verified
// against its hash); an uncompressed one is attached in place, read-only
// and unverified (Verify checks it).
//
// The partition table is read natively (part). With o.Partition > 0 that
// partition is attached; without it, an image with no partition table is
// attached whole, and an image with partitions attaches its only partition,
// or its only Linux partition (type linux, linux-root-x86-64, linux-home);
// otherwise the error lists the partitions to choose from.
//
// The partition is attached as a read-only loop device and mounted
// read-only on a temporary directory (ext2/3/4 with -o ro,noload, so a
// dirty journal is not replayed). Whatever was set up is undone by Close,
// and by Attach itself when a later step fails: nothing is left attached.
//
// A snapshot (a read-only btrfs subvolume) is browsable as it is: its Mount
// is its own directory, with nothing to undo.
func Attach(ctx context.Context, path string, o Options) (_ *Mount, err error) {
	m := &Mount{Partition: o.Partition}
	defer func() {
		if err != nil {
			if cerr := m.Close(); cerr != nil {
				err = fmt.Errorf("%w (and undoing: %v)", err, cerr)
			}
		}
	}()
	log := o.log()
	image := path
	b, _, rerr := Resolve(path, o)
	switch {
	case errors.Is(rerr, ErrNoEntry):
		st, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, unwrapPath(err))
		}
		if !st.Mode().IsRegular() && st.Mode()&fs.ModeDevice == 0 {
			return nil, fmt.Errorf("%s: not an image file or block device", path)
		}
	case rerr != nil:
		return nil, rerr
	case b.Kind == catalog.KindDump:
		return nil, fmt.Errorf("%s: a dump archive has no filesystem to mount; use recover.files, recover.extract or recover.restore", b.Path)
	case b.Kind == catalog.KindSnapshot:
		// Already a read-only tree: its own path, nothing to undo.
		if st, err := os.Stat(b.Path); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("%s: snapshot directory is missing", b.Path)
		}
		m.Path, m.Image = b.Path, b.Path
		return m, nil
	case b.Meta.Codec != "none":
		dir, err := os.MkdirTemp(o.scratch(), "bkrun-recover-")
		if err != nil {
			return nil, fmt.Errorf("temporary image: %w", err)
		}
		m.push("rm -r "+dir, func() error { return os.RemoveAll(dir) })
		image = filepath.Join(dir, strings.TrimSuffix(filepath.Base(b.Path), ".lz4"))
		image = strings.TrimSuffix(image, ".zst") + ".img"
		log.Info("recover: decoding image", "backup", b.Path, "to", image, "bytes", b.Size)
		set, done := o.progress("decode", b.Size)
		_, err = stream.Restore(ctx, b.Path, image, stream.RestoreOptions{Progress: set})
		done(err == nil)
		if err != nil {
			return nil, err
		}
	default:
		image = b.Path
	}
	m.Image = image

	p, whole, err := choosePartition(image, o.Partition)
	if err != nil {
		return nil, err
	}
	if !whole {
		m.Partition = p.Index
	}
	dev, detach, err := part.Attach(ctx, image, p)
	if err != nil {
		return nil, err
	}
	m.Device = dev
	m.push("losetup -d "+dev, detach)
	log.Info("recover: attached", "image", image, "partition", p.Index, "device", dev)

	mnt, err := os.MkdirTemp(o.scratch(), "bkrun-mnt-")
	if err != nil {
		return nil, fmt.Errorf("mount point: %w", err)
	}
	m.push("rmdir "+mnt, func() error { return os.Remove(mnt) })

	argv := []string{"mount", "-o", "ro", dev, mnt}
	if isExt(image, p.Start) {
		m.FSType = "ext4"
		argv = []string{"mount", "-t", "ext4", "-o", "ro,noload", dev, mnt}
	}
	if _, err := exec.Run(ctx, exec.Cmd{Argv: argv, Timeout: 5 * time.Minute}); err != nil {
		what := fmt.Sprintf("partition %d", p.Index)
		if whole {
			if m.FSType == "" {
				return nil, fmt.Errorf("%s: not a disk image: no partition table and no filesystem mount recognises (%v)", path, err)
			}
			what = "the whole image"
		}
		return nil, fmt.Errorf("%s: mounting %s (%s): %w", path, what, dev, err)
	}
	m.push("umount "+mnt, func() error {
		// Clean-up must work after an interrupt: a fresh context.
		_, err := exec.Run(context.Background(), exec.Cmd{Argv: []string{"umount", mnt}, Timeout: 5 * time.Minute})
		return err
	})
	m.Path = mnt
	log.Info("recover: mounted read-only", "image", image, "device", dev, "at", mnt)
	return m, nil
}

// choosePartition picks what to attach: partition n, or the whole image
// (whole=true, Index 0), or the one partition Attach may choose on its own.
func choosePartition(image string, n int) (p part.Partition, whole bool, err error) {
	size, hasTable, err := probe(image)
	if err != nil {
		return p, false, err
	}
	if !hasTable {
		if n > 0 {
			return p, false, fmt.Errorf("%s: no partition table (no 0x55AA signature); partition %d asked for (omit the partition to attach the whole image)", image, n)
		}
		return part.Partition{Index: 0, Start: 0, Size: size}, true, nil
	}
	t, err := part.ReadFile(image)
	if err != nil {
		return p, false, err
	}
	if n > 0 {
		q, ok := t.Lookup(n)
		if !ok {
			return p, false, fmt.Errorf("%s: no partition %d (%s table, partitions: %s)", image, n, t.Kind, t.Indexes())
		}
		return q, false, nil
	}
	if len(t.Partitions) == 1 {
		return t.Partitions[0], false, nil
	}
	var linux []part.Partition
	for _, q := range t.Partitions {
		if linuxTypes[q.TypeName] {
			linux = append(linux, q)
		}
	}
	if len(linux) == 1 {
		return linux[0], false, nil
	}
	var desc []string
	for _, q := range t.Partitions {
		name := q.TypeName
		if name == "" {
			name = q.Type
		}
		desc = append(desc, fmt.Sprintf("%d (%s, %d MiB)", q.Index, name, q.Size>>20))
	}
	if len(desc) == 0 {
		return p, false, fmt.Errorf("%s: the %s partition table has no partitions", image, t.Kind)
	}
	return p, false, fmt.Errorf("%s: several partitions, give one with partition=N: %s", image, strings.Join(desc, ", "))
}

// probe returns the size of an image and whether its first sector carries
// the MBR signature (an MBR or a GPT protective MBR).
func probe(image string) (int64, bool, error) {
	f, err := os.Open(image)
	if err != nil {
		return 0, false, fmt.Errorf("%s: %w", image, unwrapPath(err))
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, false, fmt.Errorf("%s: %w", image, err)
	}
	if size == 0 {
		return 0, false, fmt.Errorf("%s: empty image", image)
	}
	var sig [2]byte
	if _, err := f.ReadAt(sig[:], 510); err != nil {
		return size, false, nil // shorter than a sector: no table
	}
	return size, sig == [2]byte{0x55, 0xaa}, nil
}

// isExt reports whether an ext2/3/4 superblock starts 1024 bytes into the
// partition at off (magic 0xEF53 at byte 56 of the superblock).
func isExt(image string, off int64) bool {
	f, err := os.Open(image)
	if err != nil {
		return false
	}
	defer f.Close()
	var b [2]byte
	if _, err := f.ReadAt(b[:], off+1024+56); err != nil {
		return false
	}
	return binary.LittleEndian.Uint16(b[:]) == 0xEF53
}

// walkMount lists a mounted image, relative to its root.
func walkMount(m *Mount) ([]Entry, error) {
	var out []Entry
	err := filepath.WalkDir(m.Path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("%s: %w", p, unwrapPath(err))
		}
		if p == m.Path {
			return nil
		}
		rel, _ := filepath.Rel(m.Path, p)
		out = append(out, Entry{Path: rel, Backup: m.Image, Dir: d.IsDir()})
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

func extractImage(ctx context.Context, path string, names []string, dest string, o Options) error {
	m, err := Attach(ctx, path, o)
	if err != nil {
		return err
	}
	defer m.Close()
	return copyOut(ctx, m.Path, path, names, dest, o)
}

// copyOut copies names from the tree at root (a mounted image, a restored
// dump chain) into dest through a staging directory (see Extract).
func copyOut(ctx context.Context, root, path string, names []string, dest string, o Options) error {
	var missing []string
	for _, n := range names {
		if !inImage(root, n) {
			missing = append(missing, n)
		}
	}
	names = outermost(names)
	if len(missing) > 0 {
		return fmt.Errorf("%s: not in the backup: %s", path, strings.Join(missing, ", "))
	}
	stage, err := scratchDir(dest, ".bkrun-extract-")
	if err != nil {
		return fmt.Errorf("%s: %w", dest, err)
	}
	defer os.RemoveAll(stage)
	c := copier{ctx: ctx, log: o}
	for _, n := range names {
		// Parent directories first, with their own mode and times.
		parts := strings.Split(n, "/")
		for i := 1; i < len(parts); i++ {
			rel := filepath.Join(parts[:i]...)
			if _, err := os.Lstat(filepath.Join(stage, rel)); err == nil {
				continue
			}
			if err := c.dir(filepath.Join(root, rel), filepath.Join(stage, rel)); err != nil {
				return err
			}
		}
		if err := c.copy(filepath.Join(root, n), filepath.Join(stage, n)); err != nil {
			return err
		}
	}
	// Directory times last: creating entries changed them.
	for i := len(c.dirs) - 1; i >= 0; i-- {
		d := c.dirs[i]
		os.Chtimes(d.dst, d.atime, d.mtime)
	}
	if err := merge(stage, dest); err != nil {
		return err
	}
	o.log().Info("recover: extracted", "backup", path, "names", len(names), "dest", dest)
	return nil
}

// inImage reports whether rel names something in the mounted tree at
// root without going through a symbolic link (a link to /etc in the image
// must not make the host's /etc look like part of the backup).
func inImage(root, rel string) bool {
	parts := strings.Split(rel, "/")
	for i := 1; i <= len(parts); i++ {
		fi, err := os.Lstat(filepath.Join(root, filepath.Join(parts[:i]...)))
		if err != nil || (i < len(parts) && !fi.IsDir()) {
			return false
		}
	}
	return true
}

// outermost drops duplicate names and names under another name given.
func outermost(names []string) []string {
	sorted := append([]string(nil), names...)
	sort.Strings(sorted)
	var out []string
	for _, n := range sorted {
		if len(out) > 0 {
			last := out[len(out)-1]
			if n == last || strings.HasPrefix(n, last+"/") {
				continue
			}
		}
		out = append(out, n)
	}
	return out
}

type dirTimes struct {
	dst          string
	atime, mtime time.Time
}

// copier copies a tree out of a mounted image, keeping modes, times and,
// as root, owners. Devices, FIFOs and sockets are skipped (logged).
type copier struct {
	ctx  context.Context
	log  Options
	dirs []dirTimes
}

func times(fi fs.FileInfo) (time.Time, time.Time) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fi.ModTime(), fi.ModTime()
	}
	return time.Unix(st.Atim.Unix()), fi.ModTime()
}

func owner(dst string, fi fs.FileInfo) error {
	if os.Geteuid() != 0 {
		return nil
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if err := os.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
			return fmt.Errorf("%s: %w", dst, unwrapPath(err))
		}
	}
	return nil
}

func (c *copier) copy(src, dst string) error {
	if err := c.ctx.Err(); err != nil {
		return context.Cause(c.ctx)
	}
	fi, err := os.Lstat(src)
	if err != nil {
		return fmt.Errorf("%s: %w", src, unwrapPath(err))
	}
	switch {
	case fi.IsDir():
		if err := c.dir(src, dst); err != nil {
			return err
		}
		entries, err := os.ReadDir(src)
		if err != nil {
			return fmt.Errorf("%s: %w", src, unwrapPath(err))
		}
		for _, e := range entries {
			if err := c.copy(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
				return err
			}
		}
		return nil
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(src)
		if err != nil {
			return fmt.Errorf("%s: %w", src, unwrapPath(err))
		}
		if err := os.Symlink(target, dst); err != nil {
			return fmt.Errorf("%s: %w", dst, unwrapPath(err))
		}
		return owner(dst, fi)
	case fi.Mode().IsRegular():
		return c.file(src, dst, fi)
	default:
		c.log.log().Warn("recover: skipping special file", "path", src, "type", fi.Mode().Type().String())
		return nil
	}
}

// dir creates dst like directory src; its times are set at the end.
func (c *copier) dir(src, dst string) error {
	fi, err := os.Lstat(src)
	if err != nil {
		return fmt.Errorf("%s: %w", src, unwrapPath(err))
	}
	if err := os.Mkdir(dst, 0o700); err != nil {
		return fmt.Errorf("%s: %w", dst, unwrapPath(err))
	}
	if err := owner(dst, fi); err != nil {
		return err
	}
	if err := os.Chmod(dst, fi.Mode().Perm()|fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
		return fmt.Errorf("%s: %w", dst, unwrapPath(err))
	}
	at, mt := times(fi)
	c.dirs = append(c.dirs, dirTimes{dst, at, mt})
	return nil
}

func (c *copier) file(src, dst string, fi fs.FileInfo) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("%s: %w", src, unwrapPath(err))
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("%s: %w", dst, unwrapPath(err))
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copying %s to %s: %w", src, dst, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("%s: %w", dst, err)
	}
	if err := owner(dst, fi); err != nil {
		return err
	}
	// After chown, which clears set-id bits.
	if err := os.Chmod(dst, fi.Mode().Perm()|fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
		return fmt.Errorf("%s: %w", dst, unwrapPath(err))
	}
	at, mt := times(fi)
	if err := os.Chtimes(dst, at, mt); err != nil {
		return fmt.Errorf("%s: %w", dst, unwrapPath(err))
	}
	return nil
}
