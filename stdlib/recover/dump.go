package recover

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/bkrun/bkrun/stdlib/catalog"
	"github.com/bkrun/bkrun/stdlib/exec"
	"github.com/bkrun/bkrun/stdlib/stream"
)

// feed runs c with the decoded bytes of backup b on its standard input.
func feed(ctx context.Context, b *catalog.Backup, c exec.Cmd, label string, o Options) (stream.Stats, error) {
	return feedAll(ctx, b, []exec.Cmd{c}, label, o)
}

// feedAll decodes backup b once and feeds the bytes to every command at
// the same time, each on its standard input. The commands run without a
// controlling terminal (restore would otherwise ask on /dev/tty for a next
// volume when an archive ends early). The whole backup is always decoded
// and checked against its hash, even when the commands stop reading early
// (restore -t stops after the directories): a corrupt backup is reported
// as such, before a command's failure, which it most likely caused.
func feedAll(ctx context.Context, b *catalog.Backup, cmds []exec.Cmd, label string, o Options) (stream.Stats, error) {
	dctx, stop := context.WithCancel(ctx)
	defer stop()
	prs := make([]*io.PipeReader, len(cmds))
	pws := make([]*io.PipeWriter, len(cmds))
	missing := make([]*notOnTape, len(cmds))
	for i := range cmds {
		prs[i], pws[i] = io.Pipe()
		cmds[i].StdinReader = prs[i]
		cmds[i].NoTTY = true
		missing[i] = &notOnTape{}
		if cmds[i].Stderr != nil {
			cmds[i].Stderr = io.MultiWriter(cmds[i].Stderr, missing[i])
		} else {
			cmds[i].Stderr = missing[i]
		}
	}
	var (
		st   stream.Stats
		derr error
	)
	done := make(chan struct{})
	set, finish := o.progress(label, b.Size)
	go func() {
		defer close(done)
		dead := make([]bool, len(cmds))
		st, derr = stream.Decode(dctx, b.Path, b.Meta, func(block []byte, _ bool) error {
			for i, pw := range pws {
				if dead[i] {
					continue
				}
				if _, err := pw.Write(block); err != nil {
					if !errors.Is(err, io.ErrClosedPipe) {
						return err
					}
					dead[i] = true // that command is done; the rest is only checked
				}
			}
			return nil
		}, set)
		for _, pw := range pws {
			pw.CloseWithError(derr)
		}
	}()
	rerrs := make([]error, len(cmds))
	var wg sync.WaitGroup
	for i := range cmds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := exec.Run(ctx, cmds[i])
			prs[i].Close()
			var ee *exec.Error
			var ie *exec.InputError
			if err != nil && !errors.As(err, &ee) && !errors.As(err, &ie) {
				// Not run (not installed) or interrupted: checking the
				// rest of the backup would tell nothing more.
				stop()
			}
			rerrs[i] = err
		}()
	}
	wg.Wait()
	<-done
	rerr := errors.Join(rerrs...)
	finish(derr == nil && rerr == nil)
	for i, err := range rerrs {
		var ee *exec.Error
		var ie *exec.InputError
		if err != nil && !errors.As(err, &ee) && !errors.As(err, &ie) {
			return st, fmt.Errorf("%s: %s: %w", b.Path, exec.Quote(cmds[i].Argv), err)
		}
	}
	if derr != nil {
		if errors.Is(derr, stream.ErrCorrupt) {
			return st, derr // names the backup already
		}
		return st, fmt.Errorf("%s: %w", b.Path, derr)
	}
	for i, err := range rerrs {
		if err != nil {
			return st, fmt.Errorf("%s: %s: %w", b.Path, exec.Quote(cmds[i].Argv), err)
		}
	}
	for i, m := range missing {
		if m.n > 0 {
			// restore reading a pipe exits 0 when the archive ends early.
			return st, fmt.Errorf("%s: %s: the archive ends early: %d name(s) not found on tape (%s)", b.Path, exec.Quote(cmds[i].Argv), m.n, m.first)
		}
	}
	return st, nil
}

// notOnTape counts restore's "NAME: (inode N) not found on tape" lines:
// reading from a pipe, restore reports an archive that ends before the
// files it announced that way, and still exits 0.
type notOnTape struct {
	partial []byte
	n       int
	first   string
}

func (w *notOnTape) Write(p []byte) (int, error) {
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		line := string(w.partial[:i])
		w.partial = w.partial[i+1:]
		if strings.HasSuffix(line, " not found on tape") {
			if w.n == 0 {
				w.first = line
			}
			w.n++
		}
	}
	return len(p), nil
}

// listing parses restore -t output ("   12\t./etc/fstab") as it arrives.
type listing struct {
	partial []byte
	names   []string
}

func (l *listing) Write(p []byte) (int, error) {
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.line(string(l.partial[:i]))
		l.partial = l.partial[i+1:]
	}
	return len(p), nil
}

func (l *listing) line(s string) {
	s = strings.TrimLeft(s, " ")
	tab := strings.IndexByte(s, '\t')
	if tab <= 0 || strings.Trim(s[:tab], "0123456789") != "" {
		return // a header line ("Dump   date: ...")
	}
	name := s[tab+1:]
	if name == "." || name == "" {
		return
	}
	l.names = append(l.names, strings.TrimPrefix(name, "./"))
}

// scratchDir makes a private directory for restore's temporary files.
func scratchDir(dir, prefix string) (string, error) {
	d, err := os.MkdirTemp(dir, prefix)
	if err != nil {
		return "", fmt.Errorf("temporary directory: %w", err)
	}
	return d, nil
}

// listDump pipes one dump into restore -t and returns the names it lists.
// With walk, the same decoded stream also goes through restore -x -N
// (extract everything, write nothing), which reads the archive to its end:
// restore -t stops after the directories and would pass a dump cut short.
func listDump(ctx context.Context, b *catalog.Backup, walk bool, o Options) ([]string, stream.Stats, error) {
	tmp, err := scratchDir(o.scratch(), "bkrun-restore-")
	if err != nil {
		return nil, stream.Stats{}, err
	}
	defer os.RemoveAll(tmp)
	var l listing
	o.log().Info("recover: listing dump", "backup", b.Path, "level", b.Level, "walk", walk)
	cmds := []exec.Cmd{{Argv: []string{"restore", "-t", "-f", "-", "-T", tmp}, Stdout: &l}}
	if walk {
		// -o: restore sets the mode of its working directory, a private
		// empty one; -N writes no file.
		walkDir := filepath.Join(tmp, "walk")
		if err := os.Mkdir(walkDir, 0o700); err != nil {
			return nil, stream.Stats{}, err
		}
		cmds = append(cmds, exec.Cmd{Argv: []string{"restore", "-x", "-N", "-a", "-o", "-f", "-", "-T", tmp}, Dir: walkDir})
	}
	label := "list"
	if walk {
		label = "verify"
	}
	st, err := feedAll(ctx, b, cmds, label, o)
	return l.names, st, err
}

// restoreChain applies a dump chain inside target.
func restoreChain(ctx context.Context, chain []*catalog.Backup, target string, o Options) (RestoreResult, error) {
	last := chain[len(chain)-1]
	r := RestoreResult{Target: target, Kind: catalog.KindDump}
	if err := emptyDir(target); err != nil {
		return r, err
	}
	// Check every piece before writing anything.
	for _, b := range chain {
		set, done := o.progress("verify", b.Size)
		_, _, err := stream.VerifyAgainst(ctx, b.Path, b.Meta, set)
		done(err == nil)
		if err != nil {
			return r, fmt.Errorf("%s: chain of %s: %w", target, last.Path, err)
		}
		o.log().Info("recover: verified", "backup", b.Path, "level", b.Level)
	}
	if err := checkDates(ctx, chain); err != nil {
		return r, fmt.Errorf("%s: chain of %s: %w", target, last.Path, err)
	}
	if err := os.MkdirAll(target, 0o700); err != nil {
		return r, fmt.Errorf("%s: %w", target, unwrapPath(err))
	}
	tmp, err := scratchDir(target, ".bkrun-restore-")
	if err != nil {
		return r, fmt.Errorf("%s: %w", target, err)
	}
	defer os.RemoveAll(tmp)
	for i, b := range chain {
		o.log().Info("recover: applying dump", "step", fmt.Sprintf("%d/%d", i+1, len(chain)), "backup", b.Path, "level", b.Level, "target", target)
		st, err := feed(ctx, b, exec.Cmd{Argv: []string{"restore", "-r", "-f", "-", "-T", tmp}, Dir: target}, "restore", o)
		if err != nil {
			applied := "none"
			if len(r.Applied) > 0 {
				applied = strings.Join(r.Applied, ", ")
			}
			return r, fmt.Errorf("%s: partially restored (applied: %s): %w", target, applied, err)
		}
		r.Bytes += st.Size
		r.Applied = append(r.Applied, b.Path)
	}
	if err := os.Remove(filepath.Join(target, "restoresymtable")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return r, fmt.Errorf("%s: removing restoresymtable: %w", target, err)
	}
	o.log().Info("recover: restored dump chain", "backup", last.Path, "dumps", len(chain), "target", target, "bytes", r.Bytes)
	return r, nil
}

// emptyDir accepts a missing path or an empty directory.
func emptyDir(target string) error {
	st, err := os.Lstat(target)
	if errors.Is(err, os.ErrNotExist) {
		if _, perr := os.Stat(filepath.Dir(target)); perr != nil {
			return fmt.Errorf("%s: parent directory: %w", target, unwrapPath(perr))
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", target, unwrapPath(err))
	}
	if !st.IsDir() {
		return fmt.Errorf("%s: not a directory (a dump is restored into a directory)", target)
	}
	d, err := os.Open(target)
	if err != nil {
		return fmt.Errorf("%s: %w", target, unwrapPath(err))
	}
	defer d.Close()
	if names, _ := d.Readdirnames(1); len(names) > 0 {
		return fmt.Errorf("%s: not empty (a dump chain is restored into an empty or new directory)", target)
	}
	return nil
}

// chainListing lists every dump of the chain of path: for each name, the
// index in chain of the newest dump holding it.
func chainListing(ctx context.Context, path string, o Options) ([]*catalog.Backup, map[string]int, error) {
	_, chain, err := Chain(path, o)
	if err != nil {
		return nil, nil, err
	}
	newest := map[string]int{}
	for i, b := range chain {
		names, _, err := listDump(ctx, b, false, o)
		if err != nil {
			return nil, nil, err
		}
		for _, n := range names {
			newest[n] = i
		}
	}
	return chain, newest, nil
}

func dumpFiles(ctx context.Context, path string, o Options) ([]Entry, error) {
	if o.Exact {
		return exactFiles(ctx, path, o)
	}
	chain, newest, err := chainListing(ctx, path, o)
	if err != nil {
		return nil, err
	}
	dirs := map[string]bool{}
	for n := range newest {
		for d := filepath.Dir(n); d != "."; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	out := make([]Entry, 0, len(newest))
	for n, i := range newest {
		out = append(out, Entry{Path: n, Backup: chain[i].Path, Dir: dirs[n]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

func extractDump(ctx context.Context, path string, names []string, dest string, o Options) error {
	if o.Exact {
		_, chain, err := Chain(path, o)
		if err != nil {
			return err
		}
		tmp, err := scratchDir(o.scratch(), "bkrun-extract-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		root := filepath.Join(tmp, "root")
		if _, err := restoreChain(ctx, chain, root, o); err != nil {
			return err
		}
		return copyOut(ctx, root, path, names, dest, o)
	}
	chain, newest, err := chainListing(ctx, path, o)
	if err != nil {
		return err
	}
	// Which dumps hold each name: a file comes from the newest, a
	// directory from every dump that holds it (an incremental holds only
	// what changed below it).
	holds := make([]map[string]bool, len(chain))
	for i := range holds {
		holds[i] = map[string]bool{}
	}
	var missing []string
	for _, n := range names {
		i, ok := newest[n]
		if !ok {
			missing = append(missing, n)
			continue
		}
		holds[i][n] = true
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s: not in the backup (dump chain of %d): %s", path, len(chain), strings.Join(missing, ", "))
	}
	isDir := func(n string) bool {
		for m := range newest {
			if strings.HasPrefix(m, n+"/") {
				return true
			}
		}
		return false
	}
	for _, n := range names {
		if !isDir(n) {
			continue
		}
		for i := range chain {
			if containsName(newest, n, i) {
				holds[i][n] = true
			}
		}
	}
	stage, err := scratchDir(dest, ".bkrun-extract-")
	if err != nil {
		return fmt.Errorf("%s: %w", dest, err)
	}
	defer os.RemoveAll(stage)
	root, tmp := filepath.Join(stage, "root"), filepath.Join(stage, "tmp")
	for _, d := range []string{root, tmp} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return fmt.Errorf("%s: %w", dest, err)
		}
	}
	for i, b := range chain {
		if len(holds[i]) == 0 {
			continue
		}
		argv := []string{"restore", "-x", "-a", "-o", "-u", "-f", "-", "-T", tmp}
		var list []string
		for n := range holds[i] {
			list = append(list, n)
		}
		sort.Strings(list)
		for _, n := range list {
			argv = append(argv, "./"+n)
		}
		o.log().Info("recover: extracting from dump", "backup", b.Path, "level", b.Level, "names", len(list))
		if _, err := feed(ctx, b, exec.Cmd{Argv: argv, Dir: root}, "extract", o); err != nil {
			return err
		}
	}
	if err := merge(root, dest); err != nil {
		return err
	}
	o.log().Info("recover: extracted", "backup", path, "names", len(names), "dest", dest)
	return nil
}

// containsName reports whether dump i of a chain holds n or something
// under it. Only the newest index per name is known, which is enough: a
// directory is re-listed by every dump that holds a change below it.
func containsName(newest map[string]int, n string, i int) bool {
	if newest[n] == i {
		return true
	}
	for m, j := range newest {
		if j == i && strings.HasPrefix(m, n+"/") {
			return true
		}
	}
	return false
}

// merge moves the tree under src into dst: missing names are renamed into
// place, files replace files, directories are merged. A symbolic link in
// dst is never followed; a file where dst has a directory (or the other
// way round) is an error.
func merge(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		s, d := filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())
		dfi, err := os.Lstat(d)
		switch {
		case errors.Is(err, os.ErrNotExist):
			if err := os.Rename(s, d); err != nil {
				return fmt.Errorf("%s: %w", d, unwrapPath(err))
			}
		case err != nil:
			return fmt.Errorf("%s: %w", d, unwrapPath(err))
		case e.IsDir() && dfi.IsDir():
			if err := merge(s, d); err != nil {
				return err
			}
		case !e.IsDir() && !dfi.IsDir():
			if err := os.Rename(s, d); err != nil {
				return fmt.Errorf("%s: %w", d, unwrapPath(err))
			}
		case e.IsDir():
			return fmt.Errorf("%s: exists and is not a directory (%s); the backup has a directory there", d, dfi.Mode().Type())
		default:
			return fmt.Errorf("%s: is a directory; the backup has a file there", d)
		}
	}
	return nil
}

// exactFiles restores the chain of path into a temporary directory and
// walks it.
func exactFiles(ctx context.Context, path string, o Options) ([]Entry, error) {
	_, chain, err := Chain(path, o)
	if err != nil {
		return nil, err
	}
	tmp, err := scratchDir(o.scratch(), "bkrun-files-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	target := filepath.Join(tmp, "root")
	if _, err := restoreChain(ctx, chain, target, o); err != nil {
		return nil, err
	}
	last := chain[len(chain)-1].Path
	var out []Entry
	err = filepath.WalkDir(target, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == target {
			return nil
		}
		rel, _ := filepath.Rel(target, p)
		out = append(out, Entry{Path: rel, Backup: last, Dir: d.IsDir()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: walking the restored tree: %w", path, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}
