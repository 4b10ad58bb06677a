package libs

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// MaxSize bounds what one library may unpack to: a library is a handful of
// Lua files, not a place to fill a disk.
const MaxSize = 64 << 20

// Source is where a library comes from.
type Source struct {
	Location string // git URL, or an absolute local path
	Kind     string // "git", "dir" or "tar"
	Ref      string // git only: tag, branch or commit
}

func (s Source) String() string {
	if s.Ref != "" {
		return s.Location + "@" + s.Ref
	}
	return s.Location
}

var scpLike = regexp.MustCompile(`^[\w.-]+@[\w.-]+:`)

func isURL(s string) bool { return strings.Contains(s, "://") || scpLike.MatchString(s) }

// ParseSource reads SRC[@ref]: a git repository (URL or local path), a
// directory, or a .tar, .tar.gz or .tgz file. A local path that exists as
// given is never split at an @.
func ParseSource(spec string) (Source, error) {
	if spec == "" {
		return Source{}, errors.New("empty library source")
	}
	loc, ref := spec, ""
	if _, err := os.Stat(spec); err != nil {
		if i := strings.LastIndex(spec, "@"); i > 0 && i > strings.LastIndexAny(spec, "/:") {
			loc, ref = spec[:i], spec[i+1:]
			if ref == "" {
				return Source{}, fmt.Errorf("%s: empty ref after @", spec)
			}
		}
	}
	if isURL(loc) {
		return Source{Location: loc, Kind: "git", Ref: ref}, nil
	}
	abs, err := filepath.Abs(loc)
	if err != nil {
		return Source{}, err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return Source{}, fmt.Errorf("library source %s: %w", loc, unwrapPathError(err))
	}
	s := Source{Location: abs, Ref: ref}
	switch {
	case st.IsDir():
		if _, err := os.Stat(filepath.Join(abs, ".git")); err == nil {
			s.Kind = "git"
		} else {
			s.Kind = "dir"
		}
	case isTarball(abs):
		s.Kind = "tar"
	default:
		return Source{}, fmt.Errorf("library source %s: not a git repository, a directory or a .tar/.tar.gz/.tgz file", loc)
	}
	if ref != "" && s.Kind != "git" {
		return Source{}, fmt.Errorf("library source %s: @%s needs a git repository (%s is a %s)", spec, ref, loc, map[string]string{"dir": "directory", "tar": "tarball"}[s.Kind])
	}
	return s, nil
}

func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func isTarball(p string) bool {
	for _, ext := range []string{".tar", ".tar.gz", ".tgz"} {
		if strings.HasSuffix(p, ext) {
			return true
		}
	}
	return false
}

var (
	validName     = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]*$`)
	versionSuffix = regexp.MustCompile(`-v?[0-9][0-9A-Za-z._-]*$`)
)

// DefaultName is the library name a source gives: its base name without
// .git or the tarball extension (and a tarball's -VERSION suffix).
func DefaultName(s Source) string {
	base := strings.TrimRight(s.Location, "/")
	if i := strings.LastIndexAny(base, "/:"); i >= 0 {
		base = base[i+1:]
	}
	base = strings.TrimSuffix(base, ".git")
	if s.Kind == "tar" {
		for _, ext := range []string{".tar.gz", ".tgz", ".tar"} {
			base = strings.TrimSuffix(base, ext)
		}
		base = versionSuffix.ReplaceAllString(base, "")
	}
	return base
}

// CheckName refuses a name that require cannot load as one library, or
// that is reserved for the libraries built into bkrun.
func CheckName(name string) error {
	if !validName.MatchString(name) {
		return fmt.Errorf("%q is not a valid library name (letters, digits, _ and -; give one with --name)", name)
	}
	if name == "bkrun" {
		return errors.New(`the library name "bkrun" is reserved for the libraries built into bkrun`)
	}
	return nil
}

// Options tune Install.
type Options struct {
	Name  string // library name; default DefaultName(src)
	Force bool   // replace an installed library or a stray directory of that name
}

// Result is what Install, Update did.
type Result struct {
	Name  string
	Dir   string // the library directory holding it
	Entry *Entry
	Old   *Entry // the replaced entry, if any
}

// Install fetches src into dir/NAME and records it in dir's lock file. The
// library is assembled in a temporary directory inside dir and renamed into
// place: a failure leaves neither a partial library nor a lock entry.
func Install(ctx context.Context, src Source, dir string, o Options) (*Result, error) {
	name := o.Name
	if name == "" {
		name = DefaultName(src)
	}
	if err := CheckName(name); err != nil {
		return nil, err
	}
	return install(ctx, src, dir, name, o.Force)
}

// Update fetches name again from the source and ref in dir's lock file.
func Update(ctx context.Context, dir, name string) (*Result, error) {
	lk, err := ReadLock(dir)
	if err != nil {
		return nil, err
	}
	e, ok := lk.Libraries[name]
	if !ok {
		return nil, fmt.Errorf("no library %s in %s", name, dir)
	}
	return install(ctx, Source{Location: e.Source, Kind: e.Kind, Ref: e.Ref}, dir, name, true)
}

// Remove deletes dir/name and its lock entry.
func Remove(dir, name string) error {
	if lk, err := ReadLock(dir); err != nil {
		return err
	} else if _, ok := lk.Libraries[name]; !ok {
		return fmt.Errorf("no library %s in %s", name, dir)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return err
	}
	defer unlock()
	lk, err := ReadLock(dir)
	if err != nil {
		return err
	}
	if _, ok := lk.Libraries[name]; !ok {
		return fmt.Errorf("no library %s in %s", name, dir)
	}
	tmp, err := os.MkdirTemp(dir, ".remove-"+name+"-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	target := filepath.Join(dir, name)
	if err := os.Rename(target, filepath.Join(tmp, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	delete(lk.Libraries, name)
	if err := lk.write(dir); err != nil {
		os.Rename(filepath.Join(tmp, name), target)
		return err
	}
	return nil
}

func install(ctx context.Context, src Source, dir, name string, force bool) (*Result, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	lk, err := ReadLock(dir)
	if err != nil {
		return nil, err
	}
	target := filepath.Join(dir, name)
	old := lk.Libraries[name]
	if _, err := os.Lstat(target); err == nil && !force {
		if old != nil {
			return nil, fmt.Errorf("library %s is already installed in %s (from %s; bkrun lib update %s, or --force to replace it)", name, dir, Source{Location: old.Source, Ref: old.Ref}, name)
		}
		return nil, fmt.Errorf("%s exists and is not an installed library (--force replaces it)", target)
	}
	if _, err := os.Lstat(filepath.Join(dir, name+".lua")); err == nil {
		return nil, fmt.Errorf("%s would shadow the library %s (require finds NAME.lua before NAME/init.lua); remove it first", filepath.Join(dir, name+".lua"), name)
	}

	tmp, err := os.MkdirTemp(dir, ".install-"+name+"-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	root := filepath.Join(tmp, "src")
	var rev string
	switch src.Kind {
	case "git":
		rev, err = fetchGit(ctx, src, root)
	case "dir":
		rev, err = "dir", copyTree(src.Location, root)
	case "tar":
		rev, root, err = unpackTar(src.Location, root)
	default:
		err = fmt.Errorf("unknown source kind %q", src.Kind)
	}
	if err != nil {
		return nil, err
	}
	files, err := hashTree(root)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	hasLua := false
	for f := range files {
		hasLua = hasLua || strings.HasSuffix(f, ".lua")
	}
	if !hasLua {
		return nil, fmt.Errorf("%s: no .lua file in it: not a Lua library", src)
	}
	e := &Entry{Source: src.Location, Kind: src.Kind, Ref: src.Ref, Revision: rev, Installed: time.Now().UTC().Truncate(time.Second), Files: files}

	aside := filepath.Join(tmp, "old")
	hadOld := false
	if _, err := os.Lstat(target); err == nil {
		if err := os.Rename(target, aside); err != nil {
			return nil, err
		}
		hadOld = true
	}
	restore := func() {
		if hadOld {
			os.RemoveAll(target)
			os.Rename(aside, target)
		}
	}
	if err := os.Rename(root, target); err != nil {
		restore()
		return nil, err
	}
	lk.Libraries[name] = e
	if err := lk.write(dir); err != nil {
		os.Rename(target, root)
		restore()
		return nil, err
	}
	return &Result{Name: name, Dir: dir, Entry: e, Old: old}, nil
}

// lockDir serialises changes to one library directory.
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, "."+LockFile+".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// fetchGit clones src into root, checks out its ref, and drops .git.
func fetchGit(ctx context.Context, src Source, root string) (string, error) {
	if _, err := exec.LookPath("git"); err != nil {
		return "", fmt.Errorf("%s: a git source needs the git command, not found in $PATH", src)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	git := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "git", args...)
		cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "LC_ALL=C")
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			msg := strings.TrimSpace(errb.String())
			if i := strings.IndexByte(msg, '\n'); i >= 0 {
				msg = msg[:i]
			}
			if msg == "" {
				msg = err.Error()
			}
			return "", fmt.Errorf("git %s: %s", args[0], msg)
		}
		return strings.TrimSpace(out.String()), nil
	}
	if _, err := git("clone", "--quiet", "--", src.Location, root); err != nil {
		return "", fmt.Errorf("%s: %w", src, err)
	}
	if src.Ref != "" {
		commit, err := git("-C", root, "rev-parse", "--verify", "--quiet", src.Ref+"^{commit}")
		if err != nil {
			commit, err = git("-C", root, "rev-parse", "--verify", "--quiet", "origin/"+src.Ref+"^{commit}")
		}
		if err != nil {
			return "", fmt.Errorf("%s: no tag, branch or commit %q in %s", src, src.Ref, src.Location)
		}
		if _, err := git("-C", root, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit); err != nil {
			return "", fmt.Errorf("%s: %w", src, err)
		}
	}
	rev, err := git("-C", root, "rev-parse", "HEAD")
	if err != nil {
		return "", fmt.Errorf("%s: %w", src, err)
	}
	if err := os.RemoveAll(filepath.Join(root, ".git")); err != nil {
		return "", err
	}
	return rev, nil
}

// copyTree copies the files and directories of from into to; anything else
// (a symlink, a device) is refused.
func copyTree(from, to string) error {
	var total int64
	return filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(dst, 0o755)
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			if total += info.Size(); total > MaxSize {
				return fmt.Errorf("%s: larger than %d MiB: not a Lua library", from, MaxSize>>20)
			}
			return copyFile(p, dst, info.Mode())
		default:
			return fmt.Errorf("%s: %s is a symlink or special file (libraries hold only files and directories)", from, rel)
		}
	})
}

func copyFile(from, to string, mode fs.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	return writeFile(to, in, mode)
}

func writeFile(to string, r io.Reader, mode fs.FileMode) error {
	perm := fs.FileMode(0o644)
	if mode&0o111 != 0 {
		perm = 0o755
	}
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, r); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// unpackTar unpacks a .tar, .tar.gz or .tgz file into root, refusing any
// entry that is absolute, climbs out with .., or is a link or a device.
// A tarball whose only top-level entry is a directory (NAME-1.0/...) has
// that directory as the library. It returns "sha256:<hex>" of the file.
func unpackTar(file, root string) (rev, libRoot string, err error) {
	f, err := os.Open(file)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	sum := sha256.New()
	br := bufio.NewReader(io.TeeReader(f, sum))
	var r io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return "", "", fmt.Errorf("%s: %w", file, err)
		}
		r = zr
	}
	if err := os.Mkdir(root, 0o755); err != nil {
		return "", "", err
	}
	tr := tar.NewReader(r)
	var total int64
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", "", fmt.Errorf("%s: %w", file, err)
		}
		if h.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		if strings.HasPrefix(h.Name, "/") || filepath.IsAbs(h.Name) {
			return "", "", fmt.Errorf("%s: entry %q is an absolute path: refused", file, h.Name)
		}
		clean := path.Clean(h.Name)
		if clean == ".." || strings.HasPrefix(clean, "../") {
			return "", "", fmt.Errorf("%s: entry %q escapes the library directory: refused", file, h.Name)
		}
		if clean == "." {
			continue
		}
		dst := filepath.Join(root, filepath.FromSlash(clean))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return "", "", err
			}
		case tar.TypeReg, tar.TypeRegA:
			if total += h.Size; total > MaxSize {
				return "", "", fmt.Errorf("%s: larger than %d MiB: not a Lua library", file, MaxSize>>20)
			}
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return "", "", err
			}
			if err := writeFile(dst, tr, fs.FileMode(h.Mode)); err != nil {
				return "", "", err
			}
		case tar.TypeSymlink:
			return "", "", fmt.Errorf("%s: entry %q is a symlink (to %q): refused, libraries hold only files and directories", file, h.Name, h.Linkname)
		case tar.TypeLink:
			return "", "", fmt.Errorf("%s: entry %q is a hard link (to %q): refused, libraries hold only files and directories", file, h.Name, h.Linkname)
		default:
			return "", "", fmt.Errorf("%s: entry %q is not a file or directory (type %q): refused", file, h.Name, h.Typeflag)
		}
	}
	if _, err := io.Copy(io.Discard, br); err != nil { // hash the whole file
		return "", "", err
	}
	libRoot = root
	if ents, err := os.ReadDir(root); err == nil && len(ents) == 1 && ents[0].IsDir() {
		libRoot = filepath.Join(root, ents[0].Name())
	}
	return "sha256:" + hex.EncodeToString(sum.Sum(nil)), libRoot, nil
}
