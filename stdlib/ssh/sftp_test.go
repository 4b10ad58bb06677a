package ssh_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bkrun/bkrun/internal/sshtest"
	"github.com/bkrun/bkrun/internal/testenv"
)

func noPartials(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".partial-") {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}
}

// Both data paths: through "cat >> TMP" when the login runs commands, and
// SFTP writes alone for an sftp-only login (ForceCommand internal-sftp),
// which the probe detects.
func TestCreateCommitAbort(t *testing.T) {
	for name, o := range map[string]sshtest.Options{
		"cat":       {},
		"sftp-only": {ExtraConfig: []string{"ForceCommand internal-sftp"}},
	} {
		t.Run(name, func(t *testing.T) { createCommitAbort(t, o, name) })
	}
}

func createCommitAbort(t *testing.T, so sshtest.Options, path string) {
	s := sshtest.Start(t, so)
	c := dial(t, s, opts(s))
	dir := t.TempDir()
	target := filepath.Join(dir, "img.lz4")

	f, err := c.Create(target, false)
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.TrimSuffix(path, "-only"); f.DataPath() != want {
		t.Errorf("data path %s, want %s", f.DataPath(), want)
	}
	h := sha256.New()
	buf := make([]byte, 1<<20+17) // not aligned to the buffer or packets
	var n int64
	for n < 32<<20 {
		rand.Read(buf)
		w, err := f.Write(buf)
		if err != nil {
			t.Fatal(err)
		}
		h.Write(buf[:w])
		n += int64(w)
		if _, err := os.Lstat(target); err == nil {
			t.Fatal("the target is visible before Commit")
		}
	}
	if !strings.HasPrefix(filepath.Base(f.TempPath()), ".img.lz4.partial-") || filepath.Dir(f.TempPath()) != dir {
		t.Errorf("temp name %s", f.TempPath())
	}
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	f.Abort() // a no-op after Commit
	got, err := os.ReadFile(target)
	if err != nil || int64(len(got)) != n {
		t.Fatalf("committed file: %d bytes, %v", len(got), err)
	}
	if sum := sha256.Sum256(got); !bytes.Equal(sum[:], h.Sum(nil)) {
		t.Fatal("committed file differs")
	}
	noPartials(t, dir)

	// Reading it back.
	r, err := c.Open(target)
	if err != nil {
		t.Fatal(err)
	}
	h2 := sha256.New()
	if m, err := io.Copy(h2, r); err != nil || m != n || r.Size() != n {
		t.Fatalf("read back %d of %d (size %d): %v", m, n, r.Size(), err)
	}
	r.Close()
	if !bytes.Equal(h.Sum(nil), h2.Sum(nil)) {
		t.Fatal("read back differs")
	}

	// Existing target without overwrite: refused before anything is written.
	if _, err := c.Create(target, false); err == nil || !strings.Contains(err.Error(), "already exists (overwrite=false)") {
		t.Fatalf("existing target: %v", err)
	}
	noPartials(t, dir)
	// With overwrite it is replaced atomically.
	f, err = c.Create(target, true)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("new"))
	if b, _ := os.ReadFile(target); int64(len(b)) != n {
		t.Fatal("the old file changed before Commit")
	}
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(target); string(b) != "new" {
		t.Fatalf("overwrite: %q", b)
	}

	// Abort leaves nothing.
	f, err = c.Create(filepath.Join(dir, "aborted"), false)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(make([]byte, 3<<20))
	if err := f.Abort(); err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(); err == nil {
		t.Error("Commit after Abort succeeded")
	}
	if _, err := os.Lstat(filepath.Join(dir, "aborted")); err == nil {
		t.Error("aborted file exists")
	}
	noPartials(t, dir)

	// Missing directory, a directory as target.
	if _, err := c.Create(filepath.Join(dir, "nope", "x"), false); err == nil || !strings.Contains(err.Error(), "remote directory "+dir+"/nope/ does not exist") {
		t.Errorf("missing dir: %v", err)
	}
	if _, err := c.Create(dir, true); err == nil {
		t.Error("a directory as target accepted")
	}
	if _, err := c.Open(filepath.Join(dir, "missing")); err == nil {
		t.Error("Open of a missing file succeeded")
	}
}

// TestConnectionDroppedMidUpload kills sshd (and its sessions) while a file
// is being written: the write or the commit fails promptly and the previous
// file at the target is untouched.
func TestConnectionDroppedMidUpload(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	dir := t.TempDir()
	target := filepath.Join(dir, "backup")
	os.WriteFile(target, []byte("previous good backup"), 0o644)
	o := opts(s)
	o.KeepAlive = 500 * time.Millisecond
	c := dial(t, s, o)
	f, err := c.Create(target, true)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	var werr error
	start := time.Now()
	for i := 0; i < 4096 && werr == nil; i++ {
		if i == 16 {
			s.Kill()
			start = time.Now()
		}
		_, werr = f.Write(buf)
	}
	if werr == nil {
		werr = f.Commit()
	}
	if werr == nil {
		t.Fatal("upload over a killed connection succeeded")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the failure took %v", d)
	}
	t.Logf("error after kill: %v", werr)
	if !strings.Contains(werr.Error(), s.Dest()) {
		t.Errorf("the error does not name the connection: %v", werr)
	}
	f.Abort()
	if b, _ := os.ReadFile(target); string(b) != "previous good backup" {
		t.Fatalf("previous backup changed: %q", b)
	}
}

// TestKeepaliveDetectsHungPeer freezes sshd: no FIN, no RST, just silence.
// The keepalive must close the connection so the blocked call fails.
func TestKeepaliveDetectsHungPeer(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	o := opts(s)
	o.KeepAlive = 200 * time.Millisecond
	c := dial(t, s, o)
	s.Freeze()
	defer s.Thaw()
	start := time.Now()
	_, err := c.Output(context.Background(), "echo hello")
	if err == nil || !strings.Contains(err.Error(), "connection lost (no keepalive reply for 600ms)") {
		t.Fatalf("hung peer: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("detection took %v", d)
	}
	if err := c.Wait(); err == nil || !strings.Contains(err.Error(), "connection lost") {
		t.Errorf("Wait: %v", err)
	}
}

// BenchmarkUploadRate compares Create with `ssh host 'cat > f' < file` on a
// 256 MiB file: go test -run ^$ -bench UploadRate -benchtime 1x ./stdlib/ssh/
func BenchmarkUploadRate(b *testing.B) {
	for i := 0; i < b.N; i++ {
		uploadRate(b)
	}
}

func uploadRate(t testing.TB) {
	testenv.NeedCommand(t, "ssh")
	s := sshtest.Start(t, sshtest.Options{})
	c := dial(t, s, opts(s))
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	const size = 256 << 20
	data := make([]byte, size)
	rand.Read(data)
	os.WriteFile(src, data, 0o644)
	for round := 0; round < 3; round++ {
		start := time.Now()
		in, _ := os.Open(src)
		f, err := c.Create(filepath.Join(dir, "bk"+strconv.Itoa(round)), false)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(f, in); err != nil {
			t.Fatal(err)
		}
		if err := f.Commit(); err != nil {
			t.Fatal(err)
		}
		in.Close()
		bk := time.Since(start)

		start = time.Now()
		in, _ = os.Open(src)
		cmd := exec.Command("ssh", "-F", "none", "-p", strconv.Itoa(s.Port()), "-i", s.Identity(), "-o", "IdentitiesOnly=yes",
			"-o", "BatchMode=yes", "-o", "UserKnownHostsFile="+s.KnownHosts(), s.User()+"@127.0.0.1", "cat > "+filepath.Join(dir, "os"+strconv.Itoa(round)))
		cmd.Stdin = in
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatal(err, string(out))
		}
		in.Close()
		osh := time.Since(start)

		start = time.Now()
		in, _ = os.Open(src)
		if err := c.Exec(context.Background(), "cat > "+filepath.Join(dir, "ex"+strconv.Itoa(round)), in, nil, nil); err != nil {
			t.Fatal(err)
		}
		in.Close()
		ex := time.Since(start)
		mb := func(d time.Duration) float64 { return size / d.Seconds() / (1 << 20) }
		t.Logf("256 MiB: bkrun Create %.0f MiB/s, bkrun Exec cat %.0f MiB/s, OpenSSH ssh 'cat > f' %.0f MiB/s (Create/OpenSSH %.2fx)",
			mb(bk), mb(ex), mb(osh), osh.Seconds()/bk.Seconds())
		for _, n := range []string{"bk", "os", "ex"} {
			os.Remove(filepath.Join(dir, n+strconv.Itoa(round)))
		}
	}
}
