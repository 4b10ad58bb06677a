package stream_test

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bkrun/bkrun/internal/sshtest"
	"github.com/bkrun/bkrun/internal/testenv"
	"github.com/bkrun/bkrun/runtime"
	"github.com/bkrun/bkrun/stdlib/disk"
	"github.com/bkrun/bkrun/stdlib/ssh"
	"github.com/bkrun/bkrun/stdlib/stream"
)

func TestParseRemote(t *testing.T) {
	for in, want := range map[string]string{
		"backup@daisy:/backup/x.lz4": "backup@daisy|/backup/x.lz4",
		"daisy:x.lz4":                "daisy|x.lz4",
		"/backup/x.lz4":              "",
		"./a:b":                      "",
		"dir/a:b":                    "",
		"daisy:":                     "",
		":x":                         "",
	} {
		d, p, ok := stream.ParseRemote(in)
		got := ""
		if ok {
			got = d + "|" + p
		}
		if got != want {
			t.Errorf("ParseRemote(%q) = %q, want %q", in, got, want)
		}
	}
}

// remoteHost runs chunks against a real sshd on 127.0.0.1; the "remote"
// files are on this machine, so the test can look at them.
func remoteHost(t *testing.T, opts ...sshtest.Options) (*sshtest.Server, func(src string) error, *bytes.Buffer) {
	var o sshtest.Options
	if len(opts) > 0 {
		o = opts[0]
	}
	s := sshtest.Start(t, o)
	var out bytes.Buffer
	run := func(src string) error {
		h := runtime.New(runtime.Options{Modules: []*runtime.Module{stream.Module, disk.Module, ssh.Module}, Stdout: &out})
		defer h.Close()
		defer h.RunCleanup()
		_, err := h.RunChunk(fmt.Sprintf(`local stream, ssh = require "stream", require "ssh"
			SSH = { port = %d, identity = %q, known_hosts = %q, config = "none" }
			DEST = %q
			`, s.Port(), s.Identity(), s.KnownHosts(), s.User()+"@127.0.0.1")+src, "t", nil)
		return err
	}
	return s, run, &out
}

func TestCopyToRemoteHost(t *testing.T) {
	_, run, out := remoteHost(t)
	dir := t.TempDir()
	data := bytes.Repeat([]byte("remote backup block "), 300000)
	data = append(data, make([]byte, 3<<20)...)
	img := filepath.Join(dir, "disk.img")
	os.WriteFile(img, data, 0o644)
	rdir := t.TempDir()
	target := filepath.Join(rdir, "disk.img.lz4")
	err := run(fmt.Sprintf(`local r = stream.copy{from = %q, to = DEST .. ":" .. %q, ssh = SSH}
		print(r.path, r.size, r.hash)`, img, target))
	if err != nil {
		t.Fatal(runtime.Describe(err, true))
	}
	meta, err := stream.LoadMeta(target)
	if err != nil {
		t.Fatal(err)
	}
	if meta.Size != int64(len(data)) || !strings.Contains(out.String(), meta.Hash) {
		t.Errorf("catalogue %+v, output %s", meta, out.String())
	}
	if _, st, err := stream.Verify(t.Context(), target, nil); err != nil || st.Hash != meta.Hash {
		t.Fatalf("remote backup does not verify: %v", err)
	}
	// An existing backup is kept unless overwrite; a connection from
	// ssh.connect can be passed instead of options.
	err = run(fmt.Sprintf(`stream.copy{from = %q, to = DEST .. ":" .. %q, ssh = SSH}`, img, target))
	if err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("overwrite without overwrite=true: %v", err)
	}
	err = run(fmt.Sprintf(`local c = ssh.connect(DEST, SSH)
		stream.copy{from = %q, to = DEST .. ":" .. %q, ssh = c, overwrite = true, codec = "zstd"}`, img, target))
	if err != nil {
		t.Fatal(runtime.Describe(err, true))
	}
	if m, _ := stream.LoadMeta(target); m == nil || m.Codec != "zstd" {
		t.Errorf("overwrite did not replace the backup: %+v", m)
	}
	err = run(fmt.Sprintf(`stream.copy{from = %q, to = DEST .. ":/nonexistent-dir/x.lz4", ssh = SSH}`, img))
	if err == nil || !strings.Contains(err.Error(), "/nonexistent-dir") {
		t.Errorf("missing remote dir: %v", err)
	}
	assertNoPartial(t, rdir)
}

// Pull a remote image into a backup written on (another) remote host with
// the connection's own file objects: conn:open as the source, conn:create
// as the destination, committed with its catalogue entry.
func TestCopyRemoteFileObjects(t *testing.T) {
	_, run, _ := remoteHost(t)
	src := filepath.Join(t.TempDir(), "vm.img")
	data := append(bytes.Repeat([]byte("guest disk "), 200000), make([]byte, 2<<20)...)
	os.WriteFile(src, data, 0o644)
	rdir := t.TempDir()
	target := filepath.Join(rdir, "vm.img.lz4")
	err := run(fmt.Sprintf(`local a, b = ssh.connect(DEST, SSH), ssh.connect(DEST, SSH)
		local r = stream.copy{from = a:open(%q), to = b:create(%q)}
		assert(r.size == %d, r.size)
		assert(r.source:find("@127.0.0.1:", 1, true), r.source)
		-- A file already committed cannot be written again.
		local f = b:create(%q)
		f:commit()
		local ok, msg = pcall(stream.copy, {from = a:open(%q), to = f})
		assert(not ok and msg:find("already committed", 1, true), msg)`,
		src, target, len(data), filepath.Join(rdir, "empty"), src))
	if err != nil {
		t.Fatal(runtime.Describe(err, true))
	}
	meta, err := stream.LoadMeta(target)
	if err != nil || meta.SourceKind != "remote-file" || meta.Size != int64(len(data)) {
		t.Fatalf("catalogue %+v: %v", meta, err)
	}
	if _, st, err := stream.Verify(t.Context(), target, nil); err != nil || st.Hash != meta.Hash {
		t.Fatalf("backup does not verify: %v", err)
	}
	assertNoPartial(t, rdir)
}

func assertNoPartial(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), "partial") {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

// The server dies mid-upload: the copy fails, and the backup that was
// there before is untouched.
func TestRemoteCopyConnectionDropped(t *testing.T) {
	s, run, _ := remoteHost(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "big.img")
	f, _ := os.Create(img)
	r := rand.New(rand.NewSource(7))
	blk := make([]byte, 1<<20)
	for i := 0; i < 128; i++ { // incompressible: the upload takes a while
		r.Read(blk)
		f.Write(blk)
	}
	f.Close()
	rdir := t.TempDir()
	target := filepath.Join(rdir, "x.lz4")
	os.WriteFile(target, []byte("previous backup"), 0o644)
	go func() {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if m, _ := filepath.Glob(filepath.Join(rdir, ".x.lz4.partial-*")); len(m) > 0 {
				time.Sleep(20 * time.Millisecond)
				s.Kill()
				// The server comes back (a restarted sshd): the clean-up
				// removes the temporary file over a new connection.
				s.Restart()
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	start := time.Now()
	err := run(fmt.Sprintf(`stream.copy{from = %q, to = DEST .. ":" .. %q, ssh = SSH, overwrite = true}`, img, target))
	if err == nil {
		t.Fatal("copy succeeded although sshd was killed")
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("failure took %v", d)
	}
	if b, _ := os.ReadFile(target); string(b) != "previous backup" {
		t.Error("previous backup touched")
	}
	if _, err := os.Stat(stream.MetaPath(target)); err == nil {
		t.Error("catalogue entry written for a failed upload")
	}
	assertNoPartial(t, rdir)
	t.Logf("error: %v", err)
}

// via="receive": the other host runs `bkrun receive --root DIR` as a
// forced command; paths are relative to DIR and cannot leave it.
func TestCopyThroughReceiver(t *testing.T) {
	mod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "bkrun")
	if out, err := exec.Command("go", "build", "-o", bin, filepath.Join(filepath.Dir(strings.TrimSpace(string(mod))), "cmd", "bkrun")).CombinedOutput(); err != nil {
		t.Fatalf("building bkrun: %v\n%s", err, out)
	}
	root := t.TempDir()
	_, run, _ := remoteHost(t, sshtest.Options{ForcedCommand: bin + " receive --root " + root})
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	os.WriteFile(img, append(bytes.Repeat([]byte("through the receiver "), 200000), make([]byte, 2<<20)...), 0o644)
	if err := run(fmt.Sprintf(`stream.copy{from = %q, to = DEST .. ":site/disk.img.lz4", ssh = SSH, via = "receive"}`, img)); err != nil {
		t.Fatal(runtime.Describe(err, true))
	}
	target := filepath.Join(root, "site", "disk.img.lz4")
	if _, _, err := stream.Verify(t.Context(), target, nil); err != nil {
		t.Fatalf("received backup does not verify: %v", err)
	}
	for _, bad := range []string{"../escape.lz4", "/etc/escape.lz4"} {
		err := run(fmt.Sprintf(`stream.copy{from = %q, to = DEST .. ":" .. %q, ssh = SSH, via = "receive"}`, img, bad))
		if err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	err = run(fmt.Sprintf(`stream.copy{from = %q, to = DEST .. ":site/disk.img.lz4", ssh = SSH, via = "receive"}`, img))
	if err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("existing backup replaced without overwrite: %v", err)
	}
	assertNoPartial(t, filepath.Join(root, "site"))
}

// The remote disk fills up: the copy fails naming the cause, the partial
// file is removed over the still-open connection, and the backup already
// there is untouched.
func TestRemoteDiskFull(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts sshtest.Options
		why  string
	}{
		// The login runs commands: the data goes through cat, which says why.
		{"cat", sshtest.Options{}, "No space left on device"},
		// An sftp-only login: SFTP cannot say why (SSH_FX_FAILURE); bkrun names the usual cause.
		{"sftp-only", sshtest.Options{ExtraConfig: []string{"ForceCommand internal-sftp"}}, "usually a full disk or quota"},
	} {
		t.Run(tc.name, func(t *testing.T) { remoteDiskFull(t, tc.opts, tc.why) })
	}
}

func remoteDiskFull(t *testing.T, opts sshtest.Options, why string) {
	testenv.NeedRoot(t)
	_, run, _ := remoteHost(t, opts)
	rdir := t.TempDir()
	err := exec.Command("mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", rdir).Run()
	testenv.Need(t, err == nil, "mount -t tmpfs")
	t.Cleanup(func() { exec.Command("umount", rdir).Run() })
	target := filepath.Join(rdir, "x.img")
	os.WriteFile(target, []byte("previous backup"), 0o644)
	img := filepath.Join(t.TempDir(), "big.img")
	f, _ := os.Create(img)
	r := rand.New(rand.NewSource(3))
	blk := make([]byte, 1<<20)
	for i := 0; i < 16; i++ {
		r.Read(blk)
		f.Write(blk)
	}
	f.Close()
	err = run(fmt.Sprintf(`stream.copy{from = %q, to = DEST .. ":" .. %q, ssh = SSH, overwrite = true, codec = "none"}`, img, target))
	if err == nil {
		t.Fatal("copy to a full remote disk succeeded")
	}
	if !strings.Contains(err.Error(), target) || !strings.Contains(err.Error(), why) {
		t.Errorf("error does not name the destination and the likely cause: %v", err)
	}
	if b, _ := os.ReadFile(target); string(b) != "previous backup" {
		t.Error("previous backup touched")
	}
	assertNoPartial(t, rdir)
	t.Logf("error: %v", err)
}
