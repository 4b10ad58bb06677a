package receive

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// session is a Receiver served over io.Pipe, and the Client talking to it.
type session struct {
	c    *Client
	in   *io.PipeWriter // the sender's side of the receiver's stdin
	done chan error
	log  *bytes.Buffer
}

func start(t *testing.T, root string, overwrite bool) *session {
	t.Helper()
	log := &bytes.Buffer{}
	r, err := New(Options{Root: root, Overwrite: overwrite, Logger: slog.New(slog.NewTextHandler(log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	s := &session{in: inW, done: make(chan error, 1), log: log}
	go func() {
		err := r.Serve(inR, outW)
		r.Cleanup()
		r.Close()
		inR.Close()
		outW.Close()
		s.done <- err
	}()
	s.c, err = NewClient(outR, inW)
	if err != nil {
		t.Fatal(err)
	}
	if s.c.Root != root {
		t.Errorf("greeting root %q, want %q", s.c.Root, root)
	}
	t.Cleanup(func() { inW.Close() })
	return s
}

// end closes the sender's side and returns what Serve returned.
func (s *session) end() error {
	s.in.Close()
	return <-s.done
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func put(t *testing.T, s *session, p string, overwrite bool, data []byte) error {
	t.Helper()
	f, err := s.c.Put(p, overwrite)
	if err != nil {
		return err
	}
	for len(data) > 0 { // odd-sized writes, across frame boundaries
		k := min(len(data), 300_001)
		if _, err := f.Write(data[:k]); err != nil {
			return err
		}
		data = data[k:]
	}
	return f.Commit()
}

func noPartials(t *testing.T, root string) {
	t.Helper()
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.Contains(fi.Name(), ".partial-") {
			t.Errorf("temporary file left behind: %s", p)
		}
		return nil
	})
}

func wantFile(t *testing.T, p string, data []byte) {
	t.Helper()
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("%s: %d bytes, not the %d expected", p, len(got), len(data))
	}
}

func wantErr(t *testing.T, err error, sub string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), sub) {
		t.Fatalf("error %v, want one containing %q", err, sub)
	}
}

func TestPutRoundTrip(t *testing.T) {
	root := t.TempDir()
	s := start(t, root, false)
	img := randBytes(10<<20 + 12345)
	if err := put(t, s, "host/2024/disk.img", false, img); err != nil {
		t.Fatal(err)
	}
	meta := []byte(`{"size":10498105}`)
	if err := put(t, s, "host/2024/disk.img.json", false, meta); err != nil {
		t.Fatal(err)
	}
	if err := put(t, s, "empty", false, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.c.Quit(); err != nil {
		t.Fatal(err)
	}
	if err := <-s.done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	wantFile(t, filepath.Join(root, "host/2024/disk.img"), img)
	wantFile(t, filepath.Join(root, "host/2024/disk.img.json"), meta)
	wantFile(t, filepath.Join(root, "empty"), nil)
	if fi, _ := os.Stat(filepath.Join(root, "host")); fi.Mode().Perm() != 0o755&^umask() {
		t.Errorf("created directory mode %v", fi.Mode())
	}
	noPartials(t, root)
	if !strings.Contains(s.log.String(), "path=host/2024/disk.img size=10498105 result=ok") {
		t.Errorf("log:\n%s", s.log)
	}
}

func umask() os.FileMode {
	m := syscall.Umask(0)
	syscall.Umask(m)
	return os.FileMode(m)
}

func TestPathsRefused(t *testing.T) {
	base := t.TempDir()
	root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
	os.Mkdir(root, 0o755)
	os.Mkdir(outside, 0o755)
	os.WriteFile(filepath.Join(outside, "victim"), []byte("keep"), 0o644)
	os.Symlink(outside, filepath.Join(root, "out"))                        // parent component
	os.Symlink(filepath.Join(outside, "victim"), filepath.Join(root, "v")) // final component
	os.Symlink(filepath.Join(outside, "new"), filepath.Join(root, "dangling"))
	os.Mkdir(filepath.Join(root, "dir"), 0o755)
	os.WriteFile(filepath.Join(root, "file"), []byte("x"), 0o644)
	if err := syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := start(t, root, true)
	for _, tc := range []struct{ path, want string }{
		{"../x", `".." is not allowed`},
		{"a/../../x", `".." is not allowed`},
		{"a/../x", `".." is not allowed`},
		{"/etc/x", "absolute path"},
		{"", "empty path"},
		{".", "not a file name"},
		{"./", "not a file name"},
		{"a/", "not a file name"},
		{"x\x00y", "NUL"},
		{"out/x", "out is a symbolic link"},
		{"out/sub/x", "out is a symbolic link"},
		{"v", "v is a symbolic link"},
		{"dangling", "dangling is a symbolic link"},
		{"dir", "is a directory"},
		{"fifo", "not a regular file"},
		{"file/x", "file is not a directory"},
	} {
		err := put(t, s, tc.path, true, []byte("evil"))
		wantErr(t, err, tc.want)
	}
	// The session is still usable after refusals.
	if err := put(t, s, "ok", false, []byte("fine")); err != nil {
		t.Fatal(err)
	}
	if err := s.end(); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(outside)
	if len(ents) != 1 {
		t.Errorf("something was written outside the root: %v", ents)
	}
	wantFile(t, filepath.Join(outside, "victim"), []byte("keep"))
	if _, err := os.Stat(filepath.Join(base, "x")); err == nil {
		t.Error("../x was written")
	}
	if _, err := os.Lstat(filepath.Join(root, "a")); err == nil {
		t.Error("a refused path created a directory")
	}
	noPartials(t, base)
}

func TestOverwrite(t *testing.T) {
	root := t.TempDir()
	target := filepath.Join(root, "img")
	os.WriteFile(target, []byte("old"), 0o644)

	s := start(t, root, false)
	wantErr(t, put(t, s, "img", false, []byte("new")), "already exists (overwrite=false)")
	wantErr(t, put(t, s, "img", true, []byte("new")), "does not allow overwriting")
	s.end()
	wantFile(t, target, []byte("old"))

	s = start(t, root, true)
	wantErr(t, put(t, s, "img", false, []byte("new")), "already exists (overwrite=false)")
	wantFile(t, target, []byte("old"))
	if err := put(t, s, "img", true, []byte("new")); err != nil {
		t.Fatal(err)
	}
	s.end()
	wantFile(t, target, []byte("new"))
	noPartials(t, root)
}

func TestTargetAppearsDuringUpload(t *testing.T) {
	root := t.TempDir()
	s := start(t, root, true)
	f, err := s.c.Put("img", false)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(randBytes(3 << 20))
	os.WriteFile(filepath.Join(root, "img"), []byte("concurrent"), 0o644)
	wantErr(t, f.Commit(), "appeared while it was written")
	wantFile(t, filepath.Join(root, "img"), []byte("concurrent"))
	if err := s.end(); err != nil {
		t.Fatal(err)
	}
	noPartials(t, root)
}

func TestCorruptedUpload(t *testing.T) {
	root := t.TempDir()
	target := filepath.Join(root, "img")
	os.WriteFile(target, []byte("previous"), 0o644)
	s := start(t, root, true)
	f, err := s.c.Put("img", true)
	if err != nil {
		t.Fatal(err)
	}
	f.TestCorruptTrailer = true
	f.Write(randBytes(5 << 20))
	wantErr(t, f.Commit(), "BLAKE3 mismatch")
	wantFile(t, target, []byte("previous"))
	noPartials(t, root)
	// The session goes on.
	if err := put(t, s, "other", false, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := s.end(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s.log.String(), "BLAKE3 mismatch") {
		t.Errorf("log:\n%s", s.log)
	}
}

func TestAbortKeepsSession(t *testing.T) {
	root := t.TempDir()
	s := start(t, root, false)
	f, err := s.c.Put("img", false)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(randBytes(2<<20 + 5))
	if err := f.Abort(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(root, "img")); err == nil {
		t.Error("aborted file is there")
	}
	if err := put(t, s, "img", false, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := s.end(); err != nil {
		t.Fatal(err)
	}
	noPartials(t, root)
}

func TestTruncatedUpload(t *testing.T) {
	root := t.TempDir()
	target := filepath.Join(root, "img")
	os.WriteFile(target, []byte("previous"), 0o644)
	s := start(t, root, true)
	f, err := s.c.Put("img", true)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(randBytes(5<<20 + 77)) // five frames sent, part of a sixth buffered
	err = s.end()
	var pe *ProtocolError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "input ended after 5242880 bytes") {
		t.Fatalf("Serve: %v", err)
	}
	wantFile(t, target, []byte("previous"))
	noPartials(t, root)
}

// raw drives the receiver with hand-made bytes.
func raw(t *testing.T, root string, input []byte) (string, error) {
	t.Helper()
	r, err := New(Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var out bytes.Buffer
	err = r.Serve(bytes.NewReader(input), &out)
	return out.String(), err
}

func frame(n int) []byte {
	b := make([]byte, 4+n)
	binary.BigEndian.PutUint32(b, uint32(n))
	return b
}

func TestProtocolErrors(t *testing.T) {
	root := t.TempDir()
	op := []byte(`{"op":"put","path":"x"}` + "\n")
	for _, tc := range []struct {
		name  string
		input []byte
		want  string
		reply string
	}{
		{"frame too large", append(op, frame(MaxFrame + 1)[:4]...), "larger than the 4194304 allowed", `"ok":false`},
		{"not json", []byte("hello\n"), "bad op line", `"ok":false`},
		{"unknown op", []byte(`{"op":"rm","path":"x"}` + "\n"), `unknown op "rm"`, `"ok":false`},
		{"bad trailer", append(append(op, frame(3)...), append(frame(0), "nope\n"...)...), "bad trailer", `"ok":false`},
		{"no trailer", append(append(op, frame(3)...), frame(0)...), "reading the trailer", `{"ok":true}`},
		{"cut frame", append(op, frame(10)[:8]...), "middle of a frame", `{"ok":true}`},
		{"long line", bytes.Repeat([]byte("x"), 100<<10), "longer than 64 KiB", `bkrun-receive/1`},
	} {
		out, err := raw(t, root, tc.input)
		var pe *ProtocolError
		if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Serve returned %v, want a protocol error with %q", tc.name, err, tc.want)
		}
		if !strings.Contains(out, tc.reply) {
			t.Errorf("%s: output %q lacks %q", tc.name, out, tc.reply)
		}
	}
	// Size mismatch and a clean end are not protocol errors.
	in := append(append(op, frame(3)...), append(frame(0), `{"size":4,"blake3":"00"}`+"\n"...)...)
	out, err := raw(t, root, in)
	if err != nil || !strings.Contains(out, "size mismatch: the sender says 4 bytes, 3 arrived") {
		t.Errorf("size mismatch: %v %q", err, out)
	}
	if out, err := raw(t, root, []byte(`{"op":"quit"}`+"\n")); err != nil || !strings.HasPrefix(out, `{"proto":"bkrun-receive/1","root":"`) {
		t.Errorf("quit: %v %q", err, out)
	}
	noPartials(t, root)
	if ents, _ := os.ReadDir(root); len(ents) != 0 {
		t.Errorf("files left: %v", ents)
	}
}

func TestNotAReceiver(t *testing.T) {
	for in, want := range map[string]string{
		"":                                    "got end of output",
		"bash: bkrun: command not found\n":    `got "bash: bkrun: command not found"`,
		`{"proto":"something-else/2"}` + "\n": "something-else/2",
	} {
		_, err := NewClient(strings.NewReader(in), io.Discard)
		var ne *NotReceiverError
		if !errors.As(err, &ne) || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v", in, err)
		}
	}
}

func TestNewErrors(t *testing.T) {
	f := filepath.Join(t.TempDir(), "f")
	os.WriteFile(f, nil, 0o644)
	for root, want := range map[string]string{"": "no root", f: "not a directory", f + "x": "no such file"} {
		if _, err := New(Options{Root: root}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New(%q): %v", root, err)
		}
	}
}

// TestDiskFull writes into a 4 MiB tmpfs: the upload fails with the write
// error at commit, nothing is left behind and the session goes on.
func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	root := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", root).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs: %v: %s", err, out)
	}
	defer exec.Command("umount", root).Run()
	s := start(t, root, false)
	wantErr(t, put(t, s, "big", false, randBytes(8<<20)), "no space left on device")
	noPartials(t, root)
	if err := put(t, s, "small", false, []byte("fits")); err != nil {
		t.Fatal(err)
	}
	if err := s.end(); err != nil {
		t.Fatal(err)
	}
}
