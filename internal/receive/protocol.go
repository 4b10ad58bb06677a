// Package receive is bkrun's upload receiver and its wire protocol,
// "bkrun-receive/1". The receiver (`bkrun receive --root DIR`, usually an
// authorized_keys forced command) speaks on its stdin and stdout; the
// sender streams each file without knowing its size or hash in advance:
//
//	receiver: {"proto":"bkrun-receive/1","root":"/backup"}
//	sender:   {"op":"put","path":"host/disk.img","overwrite":false}
//	receiver: {"ok":true}                       (or {"ok":false,"error":"..."}: op skipped)
//	sender:   frames: 4-byte big-endian length + bytes (≤ 4 MiB), ..., a zero-length frame
//	sender:   {"size":N,"blake3":"<hex BLAKE3-256 of the data>"}
//	receiver: {"ok":true,"path":"host/disk.img","size":N}   (or {"ok":false,"error":"..."})
//	...more ops...
//	sender:   {"op":"quit"}                     (or end of input)
//
// A trailer with "abort":true discards the upload and keeps the session.
// The package has no SSH in it: Serve and Client work on any reader and
// writer, so both ends are tested through io.Pipe.
package receive

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/zeebo/blake3"
)

// Protocol limits.
const (
	Proto     = "bkrun-receive/1"
	MaxFrame  = 4 << 20 // largest data frame the receiver accepts
	SendFrame = 1 << 20 // frame size the Client sends
	maxLine   = 64 << 10
)

// Hello is the receiver's greeting.
type Hello struct {
	Proto string `json:"proto"`
	Root  string `json:"root"`
}

// Op is one operation requested by the sender.
type Op struct {
	Op        string `json:"op"`
	Path      string `json:"path,omitempty"`
	Overwrite bool   `json:"overwrite,omitempty"`

	final string // btrfs: the name the received subvolume is given
}

// Reply is the receiver's answer to an op or a trailer.
type Reply struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	Path  string `json:"path,omitempty"`
	Size  *int64 `json:"size,omitempty"`
}

// Trailer follows the end frame of a put.
type Trailer struct {
	Size   int64  `json:"size"`
	BLAKE3 string `json:"blake3"`
	Abort  bool   `json:"abort,omitempty"`
}

// ErrLineTooLong is a JSON line longer than the protocol allows.
var ErrLineTooLong = errors.New("protocol line longer than 64 KiB")

// readLine reads one newline-terminated line of at most maxLine bytes. A
// clean end of input before the first byte is io.EOF; in the middle of a
// line it is io.ErrUnexpectedEOF.
func readLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxLine {
			return nil, ErrLineTooLong
		}
		switch {
		case err == nil:
			return line[:len(line)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			return nil, io.ErrUnexpectedEOF
		default:
			return nil, err
		}
	}
}

func writeJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// NotReceiverError is a peer whose first line is not a bkrun-receive/1
// greeting.
type NotReceiverError struct{ Got string }

func (e *NotReceiverError) Error() string {
	return "remote did not answer as bkrun receive (got " + e.Got + ")"
}

// Client is the sending end of a session.
type Client struct {
	r    *bufio.Reader
	w    io.Writer
	Root string // the receiver's root, from its greeting
	cur  *File
	err  error // the session is unusable
}

// NewClient reads the receiver's greeting from r; w carries ops and data.
func NewClient(r io.Reader, w io.Writer) (*Client, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	line, err := readLine(br)
	if err != nil {
		got := err.Error()
		if errors.Is(err, io.EOF) {
			got = "end of output"
		}
		return nil, &NotReceiverError{Got: got}
	}
	var h Hello
	if json.Unmarshal(line, &h) != nil || h.Proto != Proto {
		s := string(line)
		if len(s) > 100 {
			s = s[:100] + "..."
		}
		return nil, &NotReceiverError{Got: fmt.Sprintf("%q", s)}
	}
	return &Client{r: br, w: w, Root: h.Root}, nil
}

func (c *Client) reply() (Reply, error) {
	line, err := readLine(c.r)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Reply{}, fmt.Errorf("reading the receiver's reply: %w", err)
	}
	var r Reply
	if err := json.Unmarshal(line, &r); err != nil {
		return Reply{}, fmt.Errorf("bad reply from the receiver %q: %w", line, err)
	}
	return r, nil
}

// Put asks the receiver to accept path (relative to its root). It returns
// once the receiver has validated the path: a refusal is an error and the
// session stays usable. Only one file may be open at a time.
func (c *Client) Put(path string, overwrite bool) (*File, error) {
	return c.open("put", path, overwrite)
}

// BtrfsReceive starts sending a btrfs send stream to be received as the
// subvolume path (DIR/NAME under the receiver's root: received into DIR,
// then renamed NAME). After Commit, File.Received is its path.
func (c *Client) BtrfsReceive(path string) (*File, error) { return c.open("btrfs", path, false) }

func (c *Client) open(op, path string, overwrite bool) (*File, error) {
	if c.err != nil {
		return nil, c.err
	}
	if c.cur != nil && !c.cur.done {
		return nil, fmt.Errorf("put %s: %s is still open (Commit or Abort it first)", path, c.cur.Path)
	}
	if err := writeJSON(c.w, Op{Op: op, Path: path, Overwrite: overwrite}); err != nil {
		c.err = fmt.Errorf("sending put %s: %w", path, err)
		return nil, c.err
	}
	r, err := c.reply()
	if err != nil {
		c.err = fmt.Errorf("put %s: %w", path, err)
		return nil, c.err
	}
	if !r.OK {
		return nil, fmt.Errorf("put %s: refused by the receiver: %s", path, r.Error)
	}
	f := &File{c: c, Path: path, h: blake3.New(), buf: make([]byte, 4, 4+SendFrame)}
	c.cur = f
	return f, nil
}

// Quit ends the session politely.
func (c *Client) Quit() error {
	if c.err != nil {
		return c.err
	}
	if c.cur != nil && !c.cur.done {
		c.cur.Abort()
	}
	c.err = errors.New("session ended")
	return writeJSON(c.w, Op{Op: "quit"})
}

// File is one upload in progress. Write streams; Commit finishes it.
type File struct {
	c    *Client
	Path string
	// Received is the path the receiver reports after Commit (for a btrfs
	// stream, the received subvolume).
	Received string
	h        *blake3.Hasher
	n        int64
	buf      []byte // 4-byte header + up to SendFrame bytes
	done     bool
	err      error

	// TestCorruptTrailer makes Commit send a wrong hash (tests only).
	TestCorruptTrailer bool
}

// Written is the number of bytes accepted so far.
func (f *File) Written() int64 { return f.n }

func (f *File) Write(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	if f.done {
		return 0, fmt.Errorf("write %s: already committed or aborted", f.Path)
	}
	total := 0
	for len(p) > 0 {
		k := min(len(p), 4+SendFrame-len(f.buf))
		f.buf = append(f.buf, p[:k]...)
		f.h.Write(p[:k])
		f.n += int64(k)
		total += k
		p = p[k:]
		if len(f.buf) == 4+SendFrame {
			if err := f.flush(); err != nil {
				return total, err
			}
		}
	}
	return total, nil
}

func (f *File) flush() error {
	if len(f.buf) == 4 {
		return nil
	}
	binary.BigEndian.PutUint32(f.buf, uint32(len(f.buf)-4))
	if _, err := f.c.w.Write(f.buf); err != nil {
		f.err = fmt.Errorf("sending %s: %w", f.Path, err)
		f.c.err = f.err
		return f.err
	}
	f.buf = f.buf[:4]
	return nil
}

func (f *File) finish(t Trailer) (Reply, error) {
	if err := f.flush(); err != nil {
		return Reply{}, err
	}
	var end [4]byte
	if _, err := f.c.w.Write(end[:]); err != nil {
		f.c.err = fmt.Errorf("sending %s: %w", f.Path, err)
		return Reply{}, f.c.err
	}
	if err := writeJSON(f.c.w, t); err != nil {
		f.c.err = fmt.Errorf("sending %s: %w", f.Path, err)
		return Reply{}, f.c.err
	}
	r, err := f.c.reply()
	if err != nil {
		f.c.err = fmt.Errorf("commit %s: %w", f.Path, err)
		return Reply{}, f.c.err
	}
	return r, nil
}

// Commit ends the data, sends size and hash and waits for the receiver to
// verify, sync and rename the file into place. An error means the file is
// not at its path (a previous file there is untouched).
func (f *File) Commit() error {
	if f.done {
		return fmt.Errorf("commit %s: already committed or aborted", f.Path)
	}
	f.done = true
	if f.err != nil {
		return f.err
	}
	sum := f.h.Sum(nil)
	if f.TestCorruptTrailer {
		sum[0] ^= 0xff
	}
	r, err := f.finish(Trailer{Size: f.n, BLAKE3: hex.EncodeToString(sum)})
	if err != nil {
		return err
	}
	if !r.OK {
		return fmt.Errorf("commit %s: the receiver refused it: %s", f.Path, r.Error)
	}
	if r.Size == nil || *r.Size != f.n {
		return fmt.Errorf("commit %s: the receiver reports %v bytes, %d were sent", f.Path, r.Size, f.n)
	}
	f.Received = r.Path
	return nil
}

// Abort discards the upload; the session stays usable. It is a no-op
// after Commit and safe to call more than once.
func (f *File) Abort() error {
	if f.done {
		return nil
	}
	f.done = true
	if f.err != nil {
		return nil
	}
	f.buf = f.buf[:4] // unsent data is dropped
	_, err := f.finish(Trailer{Abort: true})
	return err
}
