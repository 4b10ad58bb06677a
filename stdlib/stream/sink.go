package stream

import (
	"encoding/json"
	"errors"
	"fmt"
	"golang.org/x/sys/unix"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// MetaFormat identifies the catalogue file format.
const MetaFormat = "bkrun-image/1"

// Meta is the catalogue entry written next to every image as IMAGE.json:
// what was backed up, how, and the hash restore verifies against.
type Meta struct {
	Format       string         `json:"format"`
	Source       string         `json:"source"`
	SourceKind   string         `json:"source_kind,omitempty"`
	Size         int64          `json:"size"`
	Codec        string         `json:"codec"`
	BlockSize    int            `json:"block_size"`
	HashAlgo     string         `json:"hash_algo"`
	Hash         string         `json:"hash"`
	ZeroBytes    int64          `json:"zero_bytes"`
	HoleBytes    int64          `json:"hole_bytes"`
	BytesWritten int64          `json:"bytes_written"`
	Started      time.Time      `json:"started"`
	Finished     time.Time      `json:"finished"`
	Seconds      float64        `json:"seconds"`
	Host         string         `json:"host,omitempty"`
	BkrunVersion string         `json:"bkrun_version"`
	Extra        map[string]any `json:"extra,omitempty"`
}

// MetaPath is where the catalogue entry of an image lives.
func MetaPath(image string) string { return image + ".json" }

// ReadMeta loads and checks a catalogue entry.
func ReadMeta(path string) (*Meta, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseMeta(path, b)
}

// ParseMeta checks a catalogue entry read from name (a local path, or a
// remote one for catalogues scanned over SSH).
func ParseMeta(path string, b []byte) (*Meta, error) {
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: not a bkrun catalogue file: %w", path, err)
	}
	if m.Format != MetaFormat {
		return nil, fmt.Errorf("%s: unknown catalogue format %q (want %s)", path, m.Format, MetaFormat)
	}
	if m.BlockSize != BlockSize || m.HashAlgo != HashAlgo {
		return nil, fmt.Errorf("%s: unsupported block size %d or hash %q", path, m.BlockSize, m.HashAlgo)
	}
	if _, err := NewEncoder(m.Codec); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &m, nil
}

// FileSink writes an output under a temporary name in the destination
// directory; Commit syncs it and renames it into place with its catalogue
// entry, Abort removes it. Until Commit the previous backup, if any, is
// untouched and nothing half-written is visible under the final name.
type FileSink struct {
	Path string
	tmp  string
	f    *os.File
	done bool
	// The first Write chooses how the stream is written: with O_DIRECT
	// where the file system supports it (direct), else buffered with
	// writeBehind. Restore writes with WriteAt and uses neither.
	started bool
	direct  *directWriter
	wb      writeBehind
}

// CreateFile opens a sink for path. An existing path is refused unless
// overwrite is set (it is then replaced only by a complete new backup).
func CreateFile(path string, overwrite bool) (*FileSink, error) {
	dir := filepath.Dir(path)
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("%s: directory %s does not exist", path, dir)
	case err != nil:
		return nil, err
	case !st.IsDir():
		return nil, fmt.Errorf("%s: %s is not a directory", path, dir)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.IsDir() {
			return nil, fmt.Errorf("%s: is a directory", path)
		}
		if !st.Mode().IsRegular() {
			// Renaming over a device node or a symlink would destroy it
			// (or write through it); an output is always a regular file.
			return nil, fmt.Errorf("%s: exists and is not a regular file (%s); refusing to replace it", path, st.Mode().Type())
		}
		if !overwrite {
			return nil, fmt.Errorf("%s: already exists (overwrite=true replaces it once the new backup is complete)", path)
		}
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".partial-*")
	if err != nil {
		return nil, err
	}
	return &FileSink{Path: path, tmp: f.Name(), f: f, wb: writeBehind{fd: int(f.Fd())}}, nil
}

// TempPath is the name the output has until Commit.
func (s *FileSink) TempPath() string { return s.tmp }

func (s *FileSink) Write(p []byte) (int, error) {
	if !s.started {
		s.started = true
		s.direct = newDirectWriter(s.f)
	}
	if s.direct != nil {
		return s.direct.Write(p)
	}
	n, err := s.f.Write(p)
	s.wb.wrote(int64(n))
	return n, err
}

// Sync writes out what is still staged and makes the temporary file
// durable, so that it can be read back (verified) before Commit. No Write
// may follow.
func (s *FileSink) Sync() error {
	if s.direct != nil {
		if err := s.direct.Close(); err != nil {
			return fmt.Errorf("writing: %w", err)
		}
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("syncing: %w", err)
	}
	return nil
}

// Commit makes the output durable and visible: fsync, then the catalogue
// entry (if meta is not nil) and the image are renamed into place, image
// first, and the directory is synced.
func (s *FileSink) Commit(meta *Meta) error {
	if err := s.Sync(); err != nil {
		s.Abort()
		return err
	}
	if err := s.f.Close(); err != nil {
		s.Abort()
		return err
	}
	var metaTmp string
	if meta != nil {
		b, _ := jsonMarshal(meta)
		f, err := os.CreateTemp(filepath.Dir(s.Path), "."+filepath.Base(MetaPath(s.Path))+".partial-*")
		if err != nil {
			s.Abort()
			return err
		}
		metaTmp = f.Name()
		_, err = f.Write(b)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(metaTmp)
			s.Abort()
			return fmt.Errorf("writing catalogue entry: %w", err)
		}
		os.Chmod(metaTmp, 0o644)
	}
	os.Chmod(s.tmp, 0o644)
	if err := os.Rename(s.tmp, s.Path); err != nil {
		os.Remove(metaTmp)
		s.Abort()
		return err
	}
	s.done = true
	if metaTmp != "" {
		if err := os.Rename(metaTmp, MetaPath(s.Path)); err != nil {
			os.Remove(metaTmp)
			return fmt.Errorf("catalogue entry: %w", err)
		}
	}
	return syncDir(filepath.Dir(s.Path))
}

// Abort removes the temporary output. It is safe to call after Commit.
func (s *FileSink) Abort() error {
	if s.done {
		return nil
	}
	s.done = true
	if s.direct != nil {
		s.direct.abort()
	}
	s.f.Close()
	if err := os.Remove(s.tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func jsonMarshal(m *Meta) ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	return append(b, '\n'), err
}

// writeBehind starts writeback of the output while the copy goes on, so
// the final fsync does not wait for hundreds of megabytes at once, and
// drops written pages from the cache so that a backup does not evict the
// machine's working set. Without it the kernel starts writing only when
// dirty pages reach dirty_background_ratio (gigabytes on a large machine)
// and the whole output is flushed by the fsync at the end.
type writeBehind struct {
	fd      int
	written int64 // bytes written so far
	started int64 // writeback started up to here
	settled int64 // written back and dropped up to here
}

const writeBehindChunk = 8 << 20

func (w *writeBehind) wrote(n int64) {
	w.written += n
	if w.written-w.started < writeBehindChunk {
		return
	}
	// Start writeback of what was just written (does not wait)...
	_ = unix.SyncFileRange(w.fd, w.started, w.written-w.started, unix.SYNC_FILE_RANGE_WRITE)
	w.started = w.written
	// ...and wait for an older range, then drop it from the page cache.
	if end := w.started - 2*writeBehindChunk; end > w.settled {
		_ = unix.SyncFileRange(w.fd, w.settled, end-w.settled,
			unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER)
		_ = unix.Fadvise(w.fd, w.settled, end-w.settled, unix.FADV_DONTNEED)
		w.settled = end
	}
}
