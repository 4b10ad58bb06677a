package ssh

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bkrun/bkrun/internal/sshtest"
	"github.com/bkrun/bkrun/internal/testenv"
)

// buildBkrun builds the bkrun binary from the module root into dir.
func buildBkrun(t *testing.T, dir string) string {
	t.Helper()
	testenv.NeedCommand(t, "go")
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(gomod)) == "" {
		t.Fatalf("go env GOMOD: %v %q", err, gomod)
	}
	bin := filepath.Join(dir, "bkrun")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/bkrun")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building bkrun: %v\n%s", err, out)
	}
	return bin
}

// receiverServer starts sshd with `bkrun receive --root ROOT EXTRA...` as
// the forced command and returns a connection and the root.
func receiverServer(t *testing.T, bin string, extra ...string) (*Conn, string) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "backup")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	s := sshtest.Start(t, sshtest.Options{ForcedCommand: strings.Join(append([]string{bin, "receive", "--root", root}, extra...), " ")})
	c, err := Dial(context.Background(), s.Dest(), Options{Identity: []string{s.Identity()}, KnownHosts: s.KnownHosts(), ConfigFile: "none", AgentSocket: "none"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, root
}

func openReceiver(t *testing.T, c *Conn) *ReceiverSession {
	t.Helper()
	r, err := c.Receiver(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func putBytes(r *ReceiverSession, p string, overwrite bool, data []byte) error {
	f, err := r.Put(p, overwrite)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	return f.Commit()
}

func noPartialsUnder(t *testing.T, dir string) {
	t.Helper()
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.Contains(fi.Name(), ".partial-") {
			t.Errorf("temporary file left behind: %s", p)
		}
		return nil
	})
}

func mustContain(t *testing.T, err error, sub string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), sub) {
		t.Fatalf("error %v, want one containing %q", err, sub)
	}
}

// TestReceiver runs `bkrun receive` behind a real sshd as a forced
// command; the binary is built once for all the subtests.
func TestReceiver(t *testing.T) {
	bin := buildBkrun(t, t.TempDir())

	t.Run("stream 64 MiB and its metadata", func(t *testing.T) {
		c, root := receiverServer(t, bin)
		r := openReceiver(t, c)
		if r.Root() != root {
			t.Errorf("root %q, want %q", r.Root(), root)
		}
		f, err := r.Put("host/disk.img", false)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		buf := make([]byte, 1<<20+17)
		for f.Written() < 64<<20 {
			rand.Read(buf)
			n, err := f.Write(buf)
			if err != nil {
				t.Fatal(err)
			}
			h.Write(buf[:n])
		}
		if _, err := os.Lstat(filepath.Join(root, "host/disk.img")); err == nil {
			t.Fatal("the target is visible before Commit")
		}
		if err := f.Commit(); err != nil {
			t.Fatal(err)
		}
		meta := []byte(`{"image":"disk.img"}`)
		if err := putBytes(r, "host/disk.img.json", false, meta); err != nil {
			t.Fatal(err)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		got, err := os.Open(filepath.Join(root, "host/disk.img"))
		if err != nil {
			t.Fatal(err)
		}
		defer got.Close()
		h2 := sha256.New()
		n, _ := io.Copy(h2, got)
		if n != f.Written() || !bytes.Equal(h.Sum(nil), h2.Sum(nil)) {
			t.Fatalf("received %d bytes, sent %d; sha256 equal: %v", n, f.Written(), bytes.Equal(h.Sum(nil), h2.Sum(nil)))
		}
		if b, _ := os.ReadFile(filepath.Join(root, "host/disk.img.json")); !bytes.Equal(b, meta) {
			t.Errorf("metadata %q", b)
		}
		noPartialsUnder(t, root)
	})

	t.Run("overwrite refused then allowed", func(t *testing.T) {
		c, root := receiverServer(t, bin, "--overwrite")
		r := openReceiver(t, c)
		if err := putBytes(r, "img", false, []byte("one")); err != nil {
			t.Fatal(err)
		}
		mustContain(t, putBytes(r, "img", false, []byte("two")), "already exists (overwrite=false)")
		if b, _ := os.ReadFile(filepath.Join(root, "img")); string(b) != "one" {
			t.Fatalf("refused overwrite changed the file: %q", b)
		}
		if err := putBytes(r, "img", true, []byte("two")); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(filepath.Join(root, "img")); string(b) != "two" {
			t.Fatalf("overwrite: %q", b)
		}
	})

	t.Run("paths outside the root refused", func(t *testing.T) {
		c, root := receiverServer(t, bin)
		outside := filepath.Join(filepath.Dir(root), "outside")
		os.Mkdir(outside, 0o755)
		os.WriteFile(filepath.Join(outside, "victim"), []byte("keep"), 0o644)
		os.Symlink(outside, filepath.Join(root, "link"))
		os.Symlink(filepath.Join(outside, "victim"), filepath.Join(root, "flink"))
		r := openReceiver(t, c)
		for p, want := range map[string]string{
			"../x":      `".." is not allowed`,
			"/etc/x":    "absolute path",
			"a/../../x": `".." is not allowed`,
			"link/x":    "link is a symbolic link",
			"flink":     "flink is a symbolic link",
			"":          "empty path",
			".":         "not a file name",
		} {
			err := putBytes(r, p, true, []byte("evil"))
			mustContain(t, err, "refused by the receiver: ")
			mustContain(t, err, want)
		}
		if err := putBytes(r, "fine", false, []byte("ok")); err != nil {
			t.Fatal(err)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if ents, _ := os.ReadDir(outside); len(ents) != 1 {
			t.Errorf("written outside the root: %v", ents)
		}
		if b, _ := os.ReadFile(filepath.Join(outside, "victim")); string(b) != "keep" {
			t.Errorf("victim: %q", b)
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(root), "x")); err == nil {
			t.Error("../x written")
		}
	})

	t.Run("corrupted upload refused", func(t *testing.T) {
		c, root := receiverServer(t, bin, "--overwrite")
		os.WriteFile(filepath.Join(root, "img"), []byte("previous"), 0o644)
		r := openReceiver(t, c)
		f, err := r.Put("img", true)
		if err != nil {
			t.Fatal(err)
		}
		f.f.TestCorruptTrailer = true
		f.Write(bytes.Repeat([]byte("x"), 3<<20))
		mustContain(t, f.Commit(), "BLAKE3 mismatch")
		if b, _ := os.ReadFile(filepath.Join(root, "img")); string(b) != "previous" {
			t.Errorf("previous file changed: %q", b)
		}
		noPartialsUnder(t, root)
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("truncated upload leaves nothing", func(t *testing.T) {
		c, root := receiverServer(t, bin)
		r := openReceiver(t, c)
		f, err := r.Put("dir/img", false)
		if err != nil {
			t.Fatal(err)
		}
		f.Write(bytes.Repeat([]byte("y"), 5<<20+3))
		r.in.Close() // the sender goes away mid-stream
		err = r.Close()
		var ee *ExitError
		if !errors.As(err, &ee) || ee.Status != 1 || !strings.Contains(ee.Stderr, "in the middle of") {
			t.Fatalf("Close: %v", err)
		}
		if _, err := os.Lstat(filepath.Join(root, "dir/img")); err == nil {
			t.Error("truncated file is visible")
		}
		noPartialsUnder(t, root)
	})

	t.Run("not a receiver", func(t *testing.T) {
		s := sshtest.Start(t, sshtest.Options{})
		c, err := Dial(context.Background(), s.Dest(), Options{Identity: []string{s.Identity()}, KnownHosts: s.KnownHosts(), ConfigFile: "none", AgentSocket: "none"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = c.Receiver(context.Background(), "echo hello")
		mustContain(t, err, "remote did not answer as bkrun receive (got \"hello\")")
		mustContain(t, err, "ssh: "+c.String()+": ")
		_, err = c.Receiver(context.Background(), "no-such-bkrun-binary receive")
		mustContain(t, err, "remote did not answer as bkrun receive (got end of output; stderr: ")
		mustContain(t, err, "not found")
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, err = c.Receiver(ctx, "sleep 30")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("silent remote: %v", err)
		}
	})
}
