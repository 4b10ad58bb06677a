package ssh

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/bkrun/bkrun/stdlib/exec"
	"github.com/pkg/sftp"
	xssh "golang.org/x/crypto/ssh"
)

// SFTP tuning: 64 write requests in flight per file, each as large as an
// OpenSSH server accepts, behind a 4 MiB buffer (measured: 1 MiB keeps too few requests in flight).
const (
	sftpConcurrency = 64
	sftpPacket      = 255 << 10 // OpenSSH sftp-server takes up to 256 KiB messages
	writeBuffer     = 4 << 20
)

// SFTP returns the connection's SFTP client, started on first use.
func (c *Conn) SFTP() (*sftp.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sftp == nil && c.sftpErr == nil {
		c.sftp, c.sftpErr = sftp.NewClient(c.client,
			sftp.UseConcurrentWrites(true),
			sftp.UseConcurrentReads(true),
			sftp.MaxConcurrentRequestsPerFile(sftpConcurrency),
			sftp.MaxPacketUnchecked(sftpPacket),
		)
		if c.sftpErr != nil {
			c.sftpErr = fmt.Errorf("starting sftp (is the sftp subsystem enabled in sshd_config?): %w", c.sftpErr)
		}
	}
	if c.sftpErr != nil {
		return nil, c.fail("", c.sftpErr)
	}
	return c.sftp, nil
}

// RemoteFile is a file being written on the remote host under a temporary
// name; Commit renames it into place, Abort removes it.
type RemoteFile struct {
	c         *Conn
	sc        *sftp.Client
	Path      string
	tmp       string
	overwrite bool
	f         *sftp.File
	w         *bufio.Writer
	n         int64
	mu        sync.Mutex
	done      bool
	err       error
	cat       *catSession // the data path when the login runs commands; nil: SFTP writes
}

// catSession carries a file's bytes through "cat >> TMP" on its own channel.
// SFTP writes are requests that the server's sftp-server answers one by
// one; a plain channel streams at the transport's speed (bench/ssh.sh:
// about twice the rate on the same machine). SFTP still creates the
// temporary file (O_EXCL), syncs it, checks its size and renames it.
type catSession struct {
	s    *xssh.Session
	in   io.WriteCloser
	tail *tailBuffer
	done chan struct{} // closed when cat has exited (or the channel is gone)
	err  error         // its exit, valid after done
}

// canCat tells, once per connection, whether the login runs shell
// commands (it may be sftp-only: ForceCommand internal-sftp, a nologin
// shell, a restricted key, a server without cat), by running "echo | cat"
// with a short deadline.
func (c *Conn) canCat() bool {
	c.mu.Lock()
	probed, ok := c.catProbed, c.catOK
	c.mu.Unlock()
	if probed {
		return ok
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const marker = "bkrun-cat-ok"
	out, err := c.Output(ctx, "echo "+marker+" | cat") // needs a POSIX shell and cat
	ok = err == nil && strings.HasSuffix(out, marker)
	c.mu.Lock()
	c.catProbed, c.catOK = true, ok
	c.mu.Unlock()
	return ok
}

// startCat opens the data channel into tmp.
func (c *Conn) startCat(tmp string) (*catSession, error) {
	s, err := c.client.NewSession()
	if err != nil {
		return nil, err
	}
	in, err := s.StdinPipe()
	if err != nil {
		s.Close()
		return nil, err
	}
	cs := &catSession{s: s, in: in, tail: &tailBuffer{max: 4 << 10}}
	s.Stderr = cs.tail
	// Append to the file SFTP created, and only if it is still there: a
	// shell that starts late (the connection died, the clean-up already
	// removed the file over a new one) must not create it again.
	q := exec.Quote([]string{tmp})
	if err := s.Start("test -f " + q + " && exec cat >> " + q); err != nil {
		s.Close()
		return nil, err
	}
	cs.done = make(chan struct{})
	go func() { cs.err = s.Wait(); close(cs.done) }()
	return cs, nil
}

// wait waits at most d for cat to exit and reports whether it did.
func (cs *catSession) wait(d time.Duration) bool {
	select {
	case <-cs.done:
		return true
	case <-time.After(d):
		return false
	}
}

// finish ends the input and waits for cat to have written everything.
func (cs *catSession) finish() error {
	if err := cs.in.Close(); err != nil {
		return err
	}
	<-cs.done
	if cs.err != nil {
		if t := strings.TrimSpace(cs.tail.String()); t != "" {
			return fmt.Errorf("%w: %s", cs.err, t)
		}
		return cs.err
	}
	return nil
}

// why explains a failed write into the channel with what cat said when
// it stopped (a full disk: "cat: write error: No space left on device").
func (cs *catSession) why(err error) error {
	cs.wait(2 * time.Second)
	if t := strings.TrimSpace(cs.tail.String()); t != "" {
		return fmt.Errorf("%w: %s", err, t)
	}
	return err
}

// Create starts writing path on the remote host. The bytes go to
// DIR/.BASE.partial-RANDOM; nothing appears at path before Commit. A
// missing directory, or an existing path without overwrite, is refused
// before anything is written.
func (c *Conn) Create(p string, overwrite bool) (*RemoteFile, error) {
	sc, err := c.SFTP()
	if err != nil {
		return nil, err
	}
	dir, base := path.Split(p)
	if base == "" || base == "." || base == ".." {
		return nil, c.fail("create "+p, errors.New("not a file name"))
	}
	if dir == "" {
		dir = "."
	}
	fi, err := sc.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, c.fail("create "+p, fmt.Errorf("remote directory %s does not exist", dir))
	case err != nil:
		return nil, c.fail("create "+p, fmt.Errorf("remote directory %s: %w", dir, err))
	case !fi.IsDir():
		return nil, c.fail("create "+p, fmt.Errorf("%s is not a directory", dir))
	}
	if fi, err := sc.Lstat(p); err == nil {
		switch {
		case fi.IsDir():
			return nil, c.fail("create "+p, errors.New("is a directory"))
		case !fi.Mode().IsRegular():
			return nil, c.fail("create "+p, fmt.Errorf("exists and is not a regular file (%v); refusing to replace it", fi.Mode().Type()))
		case !overwrite:
			return nil, c.fail("create "+p, errors.New("already exists (overwrite=false); the existing file is kept"))
		}
		if _, ok := sc.HasExtension("posix-rename@openssh.com"); !ok {
			return nil, c.fail("create "+p, errors.New("already exists and the server lacks posix-rename@openssh.com, so it cannot be replaced atomically"))
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, c.fail("create "+p, err)
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := path.Join(dir, "."+base+".partial-"+hex.EncodeToString(rnd[:]))
	f, err := sc.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return nil, c.fail("create "+tmp, err)
	}
	rf := &RemoteFile{c: c, sc: sc, Path: p, tmp: tmp, overwrite: overwrite, f: f}
	if c.canCat() {
		if cs, err := c.startCat(tmp); err == nil {
			rf.cat = cs
			rf.w = bufio.NewWriterSize(cs.in, 1<<20)
			return rf, nil
		}
	}
	rf.w = bufio.NewWriterSize(fileWriter{f}, writeBuffer)
	return rf, nil
}

// fileWriter hides sftp.File's ReadFrom from bufio (which would bypass
// the buffer for large copies and, with its own read-ahead, hold whole
// chunks of the source hostage to a dead connection).
type fileWriter struct{ f *sftp.File }

func (w fileWriter) Write(p []byte) (int, error) { return w.f.Write(p) }

// TempPath is the temporary name the bytes are written to.
func (f *RemoteFile) TempPath() string { return f.tmp }

// DataPath tells how the bytes travel: "cat" (a command channel) or
// "sftp" (SFTP writes, for logins that cannot run commands).
func (f *RemoteFile) DataPath() string {
	if f.cat != nil {
		return "cat"
	}
	return "sftp"
}

// Conn is the connection the file is written over.
func (f *RemoteFile) Conn() *Conn { return f.c }

// Overwrite tells whether Commit may replace an existing file.
func (f *RemoteFile) Overwrite() bool { return f.overwrite }

// Done tells whether the file was committed or aborted.
func (f *RemoteFile) Done() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.done
}

// Written is the number of bytes accepted so far.
func (f *RemoteFile) Written() int64 { return f.n }

func (f *RemoteFile) Write(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	if f.done {
		return 0, f.c.fail("write "+f.Path, os.ErrClosed)
	}
	n, err := f.w.Write(p)
	f.n += int64(n)
	if err != nil {
		if f.cat != nil {
			err = f.cat.why(err)
		}
		f.err = f.c.fail("write "+f.tmp, explainFailure(err))
		return n, f.err
	}
	return n, nil
}

// Commit flushes, syncs (fsync@openssh.com when the server has it), checks
// the remote size and renames the file into place: with posix-rename when
// overwriting, with a plain SFTP rename (which refuses an existing target)
// otherwise. After a failed Commit the temporary file is removed.
func (f *RemoteFile) Commit() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done {
		return f.c.fail("commit "+f.Path, errors.New("already committed or aborted"))
	}
	err := f.commit()
	if err != nil {
		f.abort()
	}
	f.done = true
	return err
}

func (f *RemoteFile) commit() error {
	if f.err != nil {
		return f.err
	}
	if err := f.w.Flush(); err != nil {
		return f.c.fail("write "+f.tmp, err)
	}
	if f.cat != nil {
		err := f.cat.finish()
		f.cat = nil
		if err != nil {
			return f.c.fail("write "+f.tmp, explainFailure(err))
		}
	}
	if _, ok := f.sc.HasExtension("fsync@openssh.com"); ok {
		if err := f.f.Sync(); err != nil {
			return f.c.fail("fsync "+f.tmp, err)
		}
	}
	fi, err := f.f.Stat()
	if err != nil {
		return f.c.fail("stat "+f.tmp, err)
	}
	if fi.Size() != f.n {
		return f.c.fail("commit "+f.Path, fmt.Errorf("remote file has %d bytes, %d were written", fi.Size(), f.n))
	}
	if err := f.f.Close(); err != nil {
		return f.c.fail("close "+f.tmp, err)
	}
	f.f = nil
	if f.overwrite {
		err = f.sc.PosixRename(f.tmp, f.Path)
	} else {
		err = f.sc.Rename(f.tmp, f.Path)
		if err != nil {
			if _, serr := f.sc.Lstat(f.Path); serr == nil {
				err = errors.New("appeared while it was written (overwrite=false); the existing file is kept")
			}
		}
	}
	if err != nil {
		return f.c.fail("rename "+f.tmp+" to "+f.Path, err)
	}
	return nil
}

// Abort closes and removes the temporary file. It is a no-op after Commit
// and safe to call more than once (defer it). When the connection is gone
// the temporary file may stay behind on the server; it never has the
// target's name.
func (f *RemoteFile) Abort() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done {
		return nil
	}
	f.done = true
	return f.abort()
}

func (f *RemoteFile) abort() error {
	if f.cat != nil {
		// Let cat end before the file is removed (end of input ends it; a
		// dead connection ends the wait; a shell starting later finds no
		// file and does not create one).
		f.cat.in.Close()
		f.cat.wait(5 * time.Second)
		f.cat.s.Close()
		f.cat = nil
	}
	if f.f != nil {
		f.f.Close()
		f.f = nil
	}
	err := f.sc.Remove(f.tmp)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		// The connection died mid-upload: a new one removes the
		// temporary file, so nothing half-written stays on the server.
		err = f.removeOverNewConnection()
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return f.c.fail("remove "+f.tmp, err)
	}
	return nil
}

func (f *RemoteFile) removeOverNewConnection() error {
	// The server may be restarting: a few tries over about six seconds.
	var err error
	for i, wait := range []time.Duration{0, 300 * time.Millisecond, time.Second, 2 * time.Second, 3 * time.Second} {
		time.Sleep(wait)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var c2 *Conn
		c2, err = f.c.Redial(ctx)
		cancel()
		if err != nil {
			err = fmt.Errorf("the connection was lost and %d new one(s) failed: %w", i+1, err)
			continue
		}
		defer c2.Close()
		sc, serr := c2.SFTP()
		if serr != nil {
			return serr
		}
		return sc.Remove(f.tmp)
	}
	return err
}

// RemoteReader reads a remote file.
type RemoteReader struct {
	f    *sftp.File
	c    *Conn
	path string
	size int64
}

// Open opens a remote file for reading.
func (c *Conn) Open(p string) (*RemoteReader, error) {
	sc, err := c.SFTP()
	if err != nil {
		return nil, err
	}
	f, err := sc.Open(p)
	if err != nil {
		return nil, c.fail("open "+p, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, c.fail("stat "+p, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, c.fail("open "+p, errors.New("not a regular file"))
	}
	return &RemoteReader{f: f, c: c, path: p, size: fi.Size()}, nil
}

// Size is the file's size when it was opened.
func (r *RemoteReader) Size() int64 { return r.size }

// Path names the file as user@host:port:path, for logs and catalogues.
func (r *RemoteReader) Path() string { return r.c.String() + ":" + r.path }

// Kind is what a catalogue entry records as the source's kind.
func (r *RemoteReader) Kind() string { return "remote-file" }

func (r *RemoteReader) Read(p []byte) (int, error) {
	n, err := r.f.Read(p)
	if err != nil && err != io.EOF {
		err = r.c.fail("read "+r.path, err)
	}
	return n, err
}

// WriteTo copies the file to w with concurrent SFTP reads.
func (r *RemoteReader) WriteTo(w io.Writer) (int64, error) {
	n, err := r.f.WriteTo(w)
	if err != nil {
		err = r.c.fail("read "+r.path, err)
	}
	return n, err
}

// Close closes the file.
func (r *RemoteReader) Close() error { return r.f.Close() }

// explainFailure adds what SFTP v3 cannot say: OpenSSH's sftp-server
// answers a write that fails for lack of space (or quota) with the generic
// SSH_FX_FAILURE.
func explainFailure(err error) error {
	var se *sftp.StatusError
	if errors.As(err, &se) && se.FxCode() == sftp.ErrSSHFxFailure {
		return fmt.Errorf("%w (the server gives no reason; usually a full disk or quota)", err)
	}
	return err
}
