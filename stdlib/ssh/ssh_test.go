package ssh_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bkrun/bkrun/internal/sshtest"
	"github.com/bkrun/bkrun/internal/testenv"
	"github.com/bkrun/bkrun/stdlib/ssh"
)

// opts trusts the server and uses its client key, ignoring the user's own
// ~/.ssh and agent.
func opts(s *sshtest.Server) ssh.Options {
	return ssh.Options{Identity: []string{s.Identity()}, KnownHosts: s.KnownHosts(), ConfigFile: "none", AgentSocket: "none"}
}

func dial(t testing.TB, s *sshtest.Server, o ssh.Options) *ssh.Conn {
	t.Helper()
	c, err := ssh.Dial(context.Background(), s.Dest(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestParseDest(t *testing.T) {
	for _, tc := range []struct {
		in, user, host string
		port           int
	}{
		{"host", "", "host", 0},
		{"u@host", "u", "host", 0},
		{"u@host:2222", "u", "host", 2222},
		{"[::1]:22", "", "::1", 22},
		{"u@[fe80::1]", "u", "fe80::1", 0},
		{"::1", "", "::1", 0},
	} {
		u, h, p, err := ssh.ParseDest(tc.in)
		if err != nil || u != tc.user || h != tc.host || p != tc.port {
			t.Errorf("ParseDest(%q) = %q %q %d %v", tc.in, u, h, p, err)
		}
	}
	for _, bad := range []string{"", "@h", "h:0", "h:x", "h:70000", "u@"} {
		if _, _, _, err := ssh.ParseDest(bad); err == nil {
			t.Errorf("ParseDest(%q) accepted", bad)
		}
	}
}

func TestConnectIdentityKnownHosts(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	for _, id := range []string{s.Identity(), s.IdentityRSA()} {
		o := opts(s)
		o.Identity = []string{id}
		c := dial(t, s, o)
		out, err := c.Output(context.Background(), "echo hello; echo $USER")
		if err != nil || out != "hello\n"+s.User() {
			t.Fatalf("%s: %q %v", id, out, err)
		}
		if c.String() != s.Dest() {
			t.Errorf("String() = %q, want %q", c.String(), s.Dest())
		}
	}
	if !strings.Contains(s.Log(), "aes128-gcm@openssh.com") && !strings.Contains(s.Log(), "Accepted publickey") {
		t.Log(s.Log())
	}
}

func TestConfigHostAlias(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	cfg := filepath.Join(t.TempDir(), "config")
	os.WriteFile(cfg, []byte(fmt.Sprintf("Host other\n  HostName 192.0.2.1\n\nHost backup\n  HostName 127.0.0.1\n  Port %d\n  User %s\n  IdentityFile %s\n", s.Port(), s.User(), s.Identity())), 0o600)
	c, err := ssh.Dial(context.Background(), "backup", ssh.Options{ConfigFile: cfg, KnownHosts: s.KnownHosts(), AgentSocket: "none"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Host != "127.0.0.1" || c.Port != s.Port() || c.User != s.User() {
		t.Errorf("alias resolved to %s", c)
	}
	if out, err := c.Output(context.Background(), "echo ok"); out != "ok" || err != nil {
		t.Errorf("%q %v", out, err)
	}
	// Explicit options override the config: a wrong port fails.
	_, err = ssh.Dial(context.Background(), "backup", ssh.Options{ConfigFile: cfg, KnownHosts: s.KnownHosts(), AgentSocket: "none", Port: closedPort(t), ConnectTimeout: 2 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("explicit port did not override the config: %v", err)
	}
	if errors.Is(err, ssh.ErrRefused) {
		t.Error("a network error is marked ErrRefused: a tunnel would stop instead of retrying")
	}
}

func TestUnknownHostAndAcceptNew(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	o := opts(s)
	o.KnownHosts = filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(o.KnownHosts, []byte("# empty\n"), 0o600)
	_, err := ssh.Dial(context.Background(), s.Dest(), o)
	want := fmt.Sprintf("ssh: host key for [127.0.0.1]:%d is unknown (not in %s); add it with ssh-keyscan or accept_new=true", s.Port(), o.KnownHosts)
	if err == nil || err.Error() != want {
		t.Fatalf("unknown host: %v\nwant: %s", err, want)
	}
	if !errors.Is(err, ssh.ErrRefused) {
		t.Error("unknown host key not marked ErrRefused")
	}
	o.AcceptNew = true
	c := dial(t, s, o)
	c.Close()
	b, _ := os.ReadFile(o.KnownHosts)
	if !strings.Contains(string(b), s.KnownHostsLine()) {
		t.Fatalf("accept_new did not record the key:\n%s", b)
	}
	// Now known: no accept_new needed.
	o.AcceptNew = false
	dial(t, s, o).Close()
	// A known_hosts file that does not exist yet is created.
	o.KnownHosts = filepath.Join(t.TempDir(), "sub", "known_hosts")
	o.AcceptNew = true
	dial(t, s, o).Close()
	if b, err := os.ReadFile(o.KnownHosts); err != nil || !strings.Contains(string(b), s.KnownHostsLine()) {
		t.Fatalf("new known_hosts: %v %s", err, b)
	}
}

func TestChangedHostKeyRefused(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	dir := t.TempDir()
	other := filepath.Join(dir, "other")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other).CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	pub, _ := os.ReadFile(other + ".pub")
	f := strings.Fields(string(pub))
	known := filepath.Join(dir, "known_hosts")
	os.WriteFile(known, []byte(fmt.Sprintf("# a comment\n[127.0.0.1]:%d %s %s\n", s.Port(), f[0], f[1])), 0o600)
	for _, accept := range []bool{false, true} {
		o := opts(s)
		o.KnownHosts, o.AcceptNew = known, accept
		_, err := ssh.Dial(context.Background(), s.Dest(), o)
		want := fmt.Sprintf("ssh: [127.0.0.1]:%d: HOST KEY CHANGED (%s:2 has a different key) — possible man-in-the-middle; not connecting", s.Port(), known)
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Fatalf("accept_new=%v: %v\nwant: %s", accept, err, want)
		}
	}
	if b, _ := os.ReadFile(known); strings.Count(string(b), "\n") != 2 {
		t.Errorf("known_hosts was modified:\n%s", b)
	}
}

func TestWrongIdentity(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	key := filepath.Join(t.TempDir(), "id_wrong")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	o := opts(s)
	o.Identity = []string{key}
	_, err := ssh.Dial(context.Background(), s.Dest(), o)
	want := fmt.Sprintf("ssh: %s: authentication failed (tried %s)", s.Dest(), key)
	if err == nil || err.Error() != want {
		t.Fatalf("%v\nwant: %s", err, want)
	}
	if !errors.Is(err, ssh.ErrRefused) {
		t.Error("authentication failure not marked ErrRefused")
	}
	// An encrypted key without an agent is a clear error.
	enc := filepath.Join(t.TempDir(), "id_enc")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", enc).CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	o.Identity = []string{enc}
	_, err = ssh.Dial(context.Background(), s.Dest(), o)
	if err == nil || !strings.Contains(err.Error(), enc+" is encrypted and no ssh-agent is running") {
		t.Fatalf("encrypted key: %v", err)
	}
	// An agent socket that is not there, and no key.
	o.Identity, o.AgentSocket = nil, filepath.Join(t.TempDir(), "no-agent")
	t.Setenv("HOME", t.TempDir())
	_, err = ssh.Dial(context.Background(), s.Dest(), o)
	if err == nil || !strings.Contains(err.Error(), "is not running") {
		t.Fatalf("missing agent: %v", err)
	}
}

func TestAgent(t *testing.T) {
	testenv.NeedCommand(t, "ssh-agent")
	testenv.NeedCommand(t, "ssh-add")
	s := sshtest.Start(t, sshtest.Options{})
	sock := filepath.Join(t.TempDir(), "agent.sock")
	agent := exec.Command("ssh-agent", "-D", "-a", sock)
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Process.Kill(); agent.Wait() })
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i > 250 {
			t.Fatal("ssh-agent did not create its socket")
		}
		time.Sleep(20 * time.Millisecond)
	}
	add := exec.Command("ssh-add", s.Identity())
	add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	t.Setenv("SSH_AUTH_SOCK", sock)
	t.Setenv("HOME", t.TempDir()) // no default identity files
	c, err := ssh.Dial(context.Background(), s.Dest(), ssh.Options{KnownHosts: s.KnownHosts(), ConfigFile: "none"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if out, err := c.Output(context.Background(), "echo agent"); out != "agent" || err != nil {
		t.Fatalf("%q %v", out, err)
	}
}

func closedPort(t *testing.T) int {
	s := sshtest.Start(t, sshtest.Options{})
	s.Stop()
	return s.Port()
}

func TestUnreachable(t *testing.T) {
	port := closedPort(t)
	start := time.Now()
	_, err := ssh.Dial(context.Background(), fmt.Sprintf("root@127.0.0.1:%d", port), ssh.Options{ConfigFile: "none", AgentSocket: "none",
		Identity: []string{"/nonexistent"}, ConnectTimeout: 3 * time.Second})
	// The identity is checked before connecting: an explicit missing key
	// is a configuration error.
	if err == nil || !strings.Contains(err.Error(), "/nonexistent") {
		t.Fatalf("missing identity: %v", err)
	}
	s := sshtest.Start(t, sshtest.Options{})
	o := opts(s)
	o.ConnectTimeout = 3 * time.Second
	_, err = ssh.Dial(context.Background(), fmt.Sprintf("%s@127.0.0.1:%d", s.User(), port), o)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("ssh: %s@127.0.0.1:%d: ", s.User(), port)) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("closed port: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("refusal took %v", d)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	s.Freeze()
	defer s.Thaw()
	o := opts(s)
	o.ConnectTimeout = 500 * time.Millisecond
	start := time.Now()
	_, err := ssh.Dial(context.Background(), s.Dest(), o)
	if err == nil || !strings.Contains(err.Error(), "timed out after 500ms") {
		t.Fatalf("frozen server: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("timeout took %v", d)
	}
}

func TestExecStreaming(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	c := dial(t, s, opts(s))
	const size = 64 << 20
	remote := filepath.Join(t.TempDir(), "f")
	src := io.LimitReader(rand.Reader, size)
	h1 := sha256.New()
	var stderr bytes.Buffer
	if err := c.Exec(context.Background(), "cat > "+remote, io.TeeReader(src, h1), nil, &stderr); err != nil {
		t.Fatal(err, stderr.String())
	}
	h2 := sha256.New()
	cw := &countWriter{w: h2}
	if err := c.Exec(context.Background(), "cat "+remote, nil, cw, nil); err != nil {
		t.Fatal(err)
	}
	if cw.n != size || !bytes.Equal(h1.Sum(nil), h2.Sum(nil)) {
		t.Fatalf("round trip: %d bytes, hashes differ: %v", cw.n, !bytes.Equal(h1.Sum(nil), h2.Sum(nil)))
	}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return c.w.Write(p) }

func TestExecFailures(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	c := dial(t, s, opts(s))
	err := c.Exec(context.Background(), "echo first >&2; echo 'no space left' >&2; exit 3", nil, nil, nil)
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.Status != 3 {
		t.Fatalf("%v", err)
	}
	want := fmt.Sprintf(`ssh: %s: remote command "echo first >&2; echo 'no space left' >&2; exit 3" exited 3: first / no space left`, s.Dest())
	if err.Error() != want {
		t.Errorf("got  %s\nwant %s", err, want)
	}
	// A command that exits without reading its input is judged by its status.
	if err := c.Exec(context.Background(), "true", io.LimitReader(rand.Reader, 8<<20), nil, nil); err != nil {
		t.Errorf("true with unread input: %v", err)
	}
	// A failing input fails the call. (Whether the remote command is
	// stopped depends on the server honouring signals, which OpenSSH
	// refuses for root logins: receivers verify what they got.)
	dir := t.TempDir()
	err = c.Exec(context.Background(), "cat > "+dir+"/out", io.MultiReader(strings.NewReader("partial"), errReader{}), nil, nil)
	if err == nil || !strings.Contains(err.Error(), "reading its input: disk on fire") {
		t.Errorf("input error: %v", err)
	}
	// Cancelling the context ends a running command promptly.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = c.Exec(ctx, "sleep 30", nil, nil, nil)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 3*time.Second {
		t.Errorf("cancel: %v after %v", err, time.Since(start))
	}
	if out, err := c.Output(context.Background(), "echo still usable"); out != "still usable" || err != nil {
		t.Errorf("after cancel: %q %v", out, err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }
