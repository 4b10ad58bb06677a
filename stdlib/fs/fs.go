// Package fs is bkrun's file-system toolkit: existence checks, stat, mkdir -p,
// listing, globbing, removal, renaming, small-file reads, atomic writes,
// temporary directories and advisory locks (lock.go).
//
// Errors name the object and the reason ("/backup/x: directory not empty")
// and wrap the underlying error, so errors.Is(err, fs.ErrNotExist) and
// syscall errno checks keep working; the Lua binding prefixes the operation
// ("fs.remove: /backup/x: directory not empty").
package fs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// DefaultMaxRead bounds Read unless the caller says otherwise. Anything
// bigger belongs in a stream, not in a Lua string.
const DefaultMaxRead = 16 << 20

// Info is what Stat reports about a path.
type Info struct {
	Type  string // file, dir, symlink, device, chardev, fifo, socket
	Size  int64
	Mode  uint32 // permission bits, with setuid/setgid/sticky (st_mode & 07777)
	Mtime int64  // unix seconds
	UID   int
	GID   int
}

// pathErr turns *os.PathError and *os.LinkError into "path: reason",
// keeping the errno wrapped. The Go ops ("lstat", "open") are dropped: the
// caller names the operation.
func pathErr(path string, err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", path, pe.Err)
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		return fmt.Errorf("%s: %w", path, le.Err)
	}
	return fmt.Errorf("%s: %w", path, err)
}

// Exists reports whether path exists, without following a final symlink.
// Only ENOENT means "no"; any other failure (EACCES, ENOTDIR, EIO) is an
// error, because a recipe that cannot tell must not guess.
func Exists(path string) (bool, error) {
	_, err := os.Lstat(path)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, syscall.ENOENT) {
		return false, nil
	}
	return false, pathErr(path, err)
}

// Stat describes path (lstat, or stat when follow is set). It returns nil
// and no error when the path does not exist.
func Stat(path string, follow bool) (*Info, error) {
	stat := os.Lstat
	if follow {
		stat = os.Stat
	}
	fi, err := stat(path)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return nil, nil
		}
		return nil, pathErr(path, err)
	}
	info := &Info{Type: typeName(fi.Mode()), Size: fi.Size(), Mtime: fi.ModTime().Unix()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		info.Mode = st.Mode & 07777
		info.UID, info.GID = int(st.Uid), int(st.Gid)
	} else {
		info.Mode = uint32(fi.Mode().Perm())
	}
	return info, nil
}

func typeName(m os.FileMode) string {
	switch {
	case m.IsRegular():
		return "file"
	case m&os.ModeDir != 0:
		return "dir"
	case m&os.ModeSymlink != 0:
		return "symlink"
	case m&os.ModeCharDevice != 0:
		return "chardev"
	case m&os.ModeDevice != 0:
		return "device"
	case m&os.ModeNamedPipe != 0:
		return "fifo"
	case m&os.ModeSocket != 0:
		return "socket"
	}
	return "unknown"
}

// Mkdir creates path and any missing parents (mkdir -p). Directories it
// creates get exactly mode (chmod after mkdir, so the umask does not
// interfere); existing directories are left as they are. Something other
// than a directory in the way is an error naming it.
func Mkdir(path string, mode os.FileMode) error {
	fi, err := os.Stat(path)
	switch {
	case err == nil && fi.IsDir():
		return nil
	case err == nil:
		return fmt.Errorf("%s: exists and is a %s, not a directory", path, typeName(fi.Mode()))
	case errors.Is(err, syscall.ENOTDIR):
		return fmt.Errorf("%s: %s is not a directory", path, blocker(path))
	case !errors.Is(err, syscall.ENOENT):
		return pathErr(path, err)
	}
	if parent := filepath.Dir(path); parent != path {
		if err := Mkdir(parent, mode); err != nil {
			return err
		}
	}
	if err := os.Mkdir(path, mode); err != nil {
		if errors.Is(err, syscall.EEXIST) {
			if fi, serr := os.Stat(path); serr == nil && fi.IsDir() {
				return nil // created concurrently
			}
		}
		return pathErr(path, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		return pathErr(path, err)
	}
	return nil
}

// blocker finds the ancestor of path that exists but is not a directory.
func blocker(path string) string {
	for p := filepath.Dir(path); ; p = filepath.Dir(p) {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
		if p == filepath.Dir(p) {
			return "a parent"
		}
	}
}

// List returns the names of the entries of dir, sorted.
func List(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, pathErr(dir, err)
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	sort.Strings(names)
	return names, nil
}

// Glob returns the paths matching pattern (filepath.Match syntax), sorted.
// No match is an empty list; a malformed pattern is an error.
func Glob(pattern string) ([]string, error) {
	m, err := filepath.Glob(pattern)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", pattern, err)
	}
	sort.Strings(m)
	return m, nil
}

// Remove deletes path. A missing path is not an error. Without recursive, a
// non-empty directory is an error. Recursive removal refuses "", "/", "."
// and "..", and refuses a tree with a mount point inside it: a snapshot left
// mounted under a temp dir must not be emptied by the clean-up.
func Remove(path string, recursive bool) error {
	if !recursive {
		err := os.Remove(path)
		switch {
		case err == nil, errors.Is(err, syscall.ENOENT):
			return nil
		case errors.Is(err, syscall.ENOTEMPTY), errors.Is(err, syscall.EEXIST):
			return fmt.Errorf("%s: directory not empty (use recursive=true to remove a tree)", path)
		}
		return pathErr(path, err)
	}
	if err := CheckRemoveAll(path); err != nil {
		return err
	}
	fi, err := os.Lstat(path)
	if errors.Is(err, syscall.ENOENT) {
		return nil
	}
	if err != nil {
		return pathErr(path, err)
	}
	if fi.IsDir() {
		if err := checkNoMounts(path); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(path); err != nil {
		return pathErr(path, err)
	}
	return nil
}

// CheckRemoveAll refuses paths whose recursive removal is always a mistake.
func CheckRemoveAll(path string) error {
	switch c := filepath.Clean(path); {
	case path == "":
		return errors.New("refusing to remove an empty path recursively")
	case c == "/" || c == "." || c == "..":
		return fmt.Errorf("refusing to remove %q recursively", path)
	}
	return nil
}

// checkNoMounts fails when a file system is mounted on dir or below it.
func checkNoMounts(dir string) error {
	real, err := filepath.EvalSymlinks(dir)
	if err == nil {
		real, err = filepath.Abs(real)
	}
	if err != nil {
		return pathErr(dir, err)
	}
	if real == "/" {
		return fmt.Errorf("refusing to remove %q recursively: it is /", dir)
	}
	mounts, err := mountPoints()
	if err != nil {
		// No /proc (a bare chroot): compare device numbers instead.
		return checkSameDevice(dir)
	}
	for _, mp := range mounts {
		if mp == real || strings.HasPrefix(mp, real+"/") {
			return fmt.Errorf("%s: not removing: %s is a mount point (unmount it first)", dir, mp)
		}
	}
	return nil
}

// mountPoints lists the mount points of this process's mount namespace.
func mountPoints() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 {
			out = append(out, unescapeMount(fields[4]))
		}
	}
	return out, sc.Err()
}

// unescapeMount decodes the \040-style escapes of /proc/self/mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func checkSameDevice(dir string) error {
	var root syscall.Stat_t
	if err := syscall.Lstat(dir, &root); err != nil {
		return pathErr(dir, err)
	}
	return filepath.WalkDir(dir, func(p string, d iofs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		var st syscall.Stat_t
		if syscall.Lstat(p, &st) == nil && st.Dev != root.Dev {
			return fmt.Errorf("%s: not removing: %s is a mount point (unmount it first)", dir, p)
		}
		return nil
	})
}

// Rename renames oldpath to newpath (rename(2): atomic, same file system
// only) and syncs the directories involved so the new name survives a crash.
func Rename(oldpath, newpath string) error {
	if err := os.Rename(oldpath, newpath); err != nil {
		var le *os.LinkError
		if errors.As(err, &le) {
			err = le.Err
		}
		if errors.Is(err, syscall.EXDEV) {
			return fmt.Errorf("%s -> %s: %w (rename works within one file system; copy instead)", oldpath, newpath, err)
		}
		return fmt.Errorf("%s -> %s: %w", oldpath, newpath, err)
	}
	dirs := []string{dirOf(newpath)}
	if d := dirOf(oldpath); d != dirs[0] {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		if err := syncDir(d); err != nil {
			return fmt.Errorf("%s -> %s: renamed, but %w", oldpath, newpath, err)
		}
	}
	return nil
}

func dirOf(path string) string { return filepath.Dir(path) }

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, unwrapPath(err))
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, unwrapPath(err))
	}
	return nil
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// TooLargeError is a Read of a file bigger than its limit.
type TooLargeError struct {
	Path string
	Max  int64
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("%s: larger than %s (max); read files this big as a stream, not into memory", e.Path, Size(e.Max))
}

// Read returns the contents of a small file. Files over max bytes
// (DefaultMaxRead when max <= 0) are refused with *TooLargeError.
func Read(path string, max int64) ([]byte, error) {
	if max <= 0 {
		max = DefaultMaxRead
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, pathErr(path, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() > max {
		return nil, &TooLargeError{Path: path, Max: max}
	}
	// Sizes of /proc files and devices are not known in advance: read one
	// byte past the limit to notice an overflow.
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, pathErr(path, err)
	}
	if int64(len(data)) > max {
		return nil, &TooLargeError{Path: path, Max: max}
	}
	return data, nil
}

// Size renders a byte count for messages: 16 MiB, 1.5 GiB, 512 bytes.
func Size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d bytes", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	v := float64(n) / float64(div)
	s := strconv.FormatFloat(v, 'f', 1, 64)
	s = strings.TrimSuffix(s, ".0")
	return s + " " + string("KMGTPE"[exp]) + "iB"
}

// DefaultMode is the mode of files written by the Lua binding by default.
const DefaultMode os.FileMode = 0644

// Write replaces path with data atomically: the data goes to a temporary
// file in the same directory (.<base>.tmp-NNNN), which is synced and then
// renamed over path; the directory is synced last. Readers see the old
// contents or the new, never a mix. On failure the temporary file is
// removed and path is untouched. A symlink at path is replaced, not
// followed; the new file is owned by the writing user and gets exactly
// mode (not reduced by the umask). Without sync, neither the file nor the
// directory is fsynced: still atomic for readers, not durable across a
// crash.
func Write(path string, data []byte, mode os.FileMode, sync bool) (err error) {
	dir, base := filepath.Split(path)
	if base == "" {
		return fmt.Errorf("%s: not a file name", path)
	}
	if dir == "" {
		dir = "."
	}
	tmpBase := base
	if len(tmpBase) > 200 { // keep the temp name under NAME_MAX
		tmpBase = tmpBase[:200]
	}
	f, err := os.CreateTemp(dir, "."+tmpBase+".tmp-*")
	if err != nil {
		return fmt.Errorf("%s: create temp file: %w", path, unwrapPath(err))
	}
	tmp := f.Name()
	step := "write"
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			err = fmt.Errorf("%s: %s temp file %s: %w", path, step, filepath.Base(tmp), unwrapPath(err))
		}
	}()
	step = "chmod"
	if err = f.Chmod(mode); err != nil {
		return err
	}
	step = "write"
	if _, err = f.Write(data); err != nil {
		return err
	}
	if sync {
		step = "sync"
		if err = f.Sync(); err != nil {
			return err
		}
	}
	step = "close"
	if err = f.Close(); err != nil {
		return err
	}
	step = "rename"
	if err = os.Rename(tmp, path); err != nil {
		var le *os.LinkError
		if errors.As(err, &le) {
			err = le.Err
		}
		if fi, serr := os.Lstat(path); serr == nil && fi.IsDir() {
			err = syscall.EISDIR // os.Rename says EEXIST, which misleads
		}
		return err
	}
	if sync {
		if serr := syncDir(dir); serr != nil {
			return fmt.Errorf("%s: written, but %w", path, serr)
		}
	}
	return nil
}

// TempDir creates a new directory under $TMPDIR (or /tmp) named
// <prefix>NNNN. The caller removes it.
func TempDir(prefix string) (string, error) {
	if prefix == "" {
		prefix = "bkrun-"
	}
	if strings.ContainsRune(prefix, '/') {
		return "", fmt.Errorf("prefix %q contains a /", prefix)
	}
	d, err := os.MkdirTemp("", prefix+"*")
	if err != nil {
		return "", pathErr(filepath.Join(os.TempDir(), prefix+"*"), err)
	}
	return d, nil
}

// ParseMode reads a permission mode written in octal ("0755", "755",
// "1777").
func ParseMode(s string) (os.FileMode, error) {
	t := strings.TrimPrefix(strings.TrimPrefix(s, "0o"), "0")
	if t == "" && s != "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(t, 8, 32)
	if err != nil || n > 07777 {
		return 0, fmt.Errorf("invalid mode %q (want octal digits, e.g. \"0755\")", s)
	}
	m := os.FileMode(n & 0777)
	if n&04000 != 0 {
		m |= os.ModeSetuid
	}
	if n&02000 != 0 {
		m |= os.ModeSetgid
	}
	if n&01000 != 0 {
		m |= os.ModeSticky
	}
	return m, nil
}

// FormatMode renders a mode as ParseMode reads it: "0755", "1777".
func FormatMode(m os.FileMode) string {
	n := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		n |= 04000
	}
	if m&os.ModeSetgid != 0 {
		n |= 02000
	}
	if m&os.ModeSticky != 0 {
		n |= 01000
	}
	return fmt.Sprintf("%04o", n)
}
