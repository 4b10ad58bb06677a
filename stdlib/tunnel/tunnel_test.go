package tunnel_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bkrun/bkrun/internal/sshtest"
	"github.com/bkrun/bkrun/internal/testenv"
	"github.com/bkrun/bkrun/stdlib/ssh"
	"github.com/bkrun/bkrun/stdlib/tunnel"
	xssh "golang.org/x/crypto/ssh"
)

// Timings for tests: a short poll and timeout, a fast backoff.
const (
	poll       = 300 * time.Millisecond
	timeout    = 500 * time.Millisecond
	backoffMax = 500 * time.Millisecond
)

// echoServer is the "MySQL": it echoes what it reads.
func echoServer(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func addr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// roundTrip sends a line through port and expects it back.
func roundTrip(port int) error {
	c, err := net.DialTimeout("tcp", addr(port), time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	msg := fmt.Sprintf("ping %d\n", time.Now().UnixNano())
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("got %q, want %q", buf, msg)
	}
	return nil
}

// eventually retries fn until it succeeds or within has passed, and
// returns how long it took.
func eventually(t *testing.T, within time.Duration, what string, fn func() error) time.Duration {
	t.Helper()
	start := time.Now()
	var err error
	for time.Since(start) < within {
		if err = fn(); err == nil {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v: %v", what, within, err)
	return 0
}

func waitLog(t *testing.T, logs *testenv.SyncBuffer, s string, n int, within time.Duration) {
	t.Helper()
	eventually(t, within, fmt.Sprintf("log line %q ×%d", s, n), func() error {
		if countIn(logs, s) >= n {
			return nil
		}
		return errors.New("not yet")
	})
}

func baseConfig(s *sshtest.Server) tunnel.Config {
	return tunnel.Config{
		Dest: s.Dest(),
		SSH: ssh.Options{
			Identity:    []string{s.Identity()},
			KnownHosts:  s.KnownHosts(),
			ConfigFile:  "none",
			AgentSocket: "none",
		},
		Poll:       poll,
		Timeout:    timeout,
		BackoffMin: 100 * time.Millisecond,
		BackoffMax: backoffMax,
		Stable:     2 * time.Second,
	}
}

type running struct {
	cancel context.CancelFunc
	done   chan error
	logs   *testenv.SyncBuffer
}

// start runs the tunnel in the background; the test's end stops it.
func start(t *testing.T, cfg tunnel.Config) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1), logs: &testenv.SyncBuffer{}}
	log := slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	go func() { r.done <- tunnel.Run(ctx, cfg, log) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
		if t.Failed() {
			t.Logf("tunnel log:\n%s", r.logs)
		}
	})
	return r
}

func localForward(t *testing.T, cfg *tunnel.Config, target int) int {
	lp := freePort(t)
	f, err := tunnel.ParseForward(fmt.Sprintf("%d:127.0.0.1:%d", lp, target))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Local = append(cfg.Local, f)
	return lp
}

func TestParseForward(t *testing.T) {
	for _, tc := range []struct {
		spec, want, err string
	}{
		{"13306:localhost:3306", "13306:localhost:3306", ""},
		{"127.0.0.1:13306:localhost:3306", "13306:localhost:3306", ""},
		{"localhost:13306:db:3306", "13306:db:3306", ""},
		{"[::1]:13306:[::1]:3306", "[::1]:13306:[::1]:3306", ""},
		{"2222:[fe80::1]:22", "2222:[fe80::1]:22", ""},
		{"13306:localhost", "", `"13306:localhost" is not LPORT:HOST:PORT`},
		{"0.0.0.0:13306:localhost:3306", "", "bind address 0.0.0.0 is not a loopback address"},
		{"192.168.1.1:13306:localhost:3306", "", "not a loopback address"},
		{"x:localhost:3306", "", "is not LPORT:HOST:PORT"},
		{"70000:localhost:3306", "", "is not LPORT:HOST:PORT"},
		{"1:localhost:0", "", "is not LPORT:HOST:PORT"},
		{"1::3306", "", "is not LPORT:HOST:PORT"},
		{"1:h:2:", "", "is not LPORT:HOST:PORT"},
		{"[::1:1:h:2", "", "is not LPORT:HOST:PORT"},
		{"", "", "is not LPORT:HOST:PORT"},
	} {
		f, err := tunnel.ParseForward(tc.spec)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want %q", tc.spec, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.spec, err)
		case tc.err == "" && f.String() != tc.want:
			t.Errorf("%q: %q, want %q", tc.spec, f.String(), tc.want)
		}
	}
}

// The -L port carries data, loses it when sshd dies, and carries it again
// within two poll intervals plus the backoff once sshd is back: three
// times over.
func TestLocalForwardKillRestart(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	echo := echoServer(t)
	cfg := baseConfig(s)
	lp := localForward(t, &cfg, echo)
	r := start(t, cfg)
	eventually(t, 3*time.Second, "first round trip", func() error { return roundTrip(lp) })
	for i := range 3 {
		s.Kill()
		eventually(t, 2*time.Second, "round trip fails after kill", func() error {
			if roundTrip(lp) == nil {
				return errors.New("still works")
			}
			return nil
		})
		s.Restart()
		took := eventually(t, 2*poll+backoffMax+time.Second, "round trip after restart", func() error { return roundTrip(lp) })
		t.Logf("cycle %d: data flows again %v after restart", i+1, took.Round(time.Millisecond))
	}
	if n := countIn(r.logs, `msg="tunnel up"`); n < 4 {
		t.Errorf("%d tunnel up lines, want 4", n)
	}
	if !strings.Contains(r.logs.String(), `msg="tunnel down" dest=`+s.Dest()+` reason="connection closed`) {
		t.Error("no tunnel down line with its reason")
	}
}

// A frozen host (connection open, nothing answers) is noticed by the
// keepalive timeout; the tunnel comes back after the thaw.
func TestFreezeThaw(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	echo := echoServer(t)
	cfg := baseConfig(s)
	lp := localForward(t, &cfg, echo)
	r := start(t, cfg)
	eventually(t, 3*time.Second, "first round trip", func() error { return roundTrip(lp) })
	s.Freeze()
	t.Cleanup(s.Thaw)
	waitLog(t, r.logs, `reason="keepalive timeout after 500ms"`, 1, poll+timeout+time.Second)
	s.Thaw()
	took := eventually(t, 2*poll+2*timeout+backoffMax+time.Second, "round trip after thaw", func() error { return roundTrip(lp) })
	t.Logf("data flows again %v after thaw", took.Round(time.Millisecond))
}

// -R: a connection to the server's 127.0.0.1:RPORT reaches the local echo
// server.
func TestRemoteForward(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	echo := echoServer(t)
	cfg := baseConfig(s)
	rp := freePort(t)
	f, _ := tunnel.ParseForward(fmt.Sprintf("%d:127.0.0.1:%d", rp, echo))
	cfg.Remote = []tunnel.Forward{f}
	r := start(t, cfg)
	eventually(t, 3*time.Second, "round trip through -R", func() error { return roundTrip(rp) })
	waitLog(t, r.logs, "remote forward listening", 1, time.Second)
	// And again after sshd died and came back.
	s.Kill()
	s.Restart()
	eventually(t, 2*poll+backoffMax+time.Second, "round trip through -R after restart", func() error { return roundTrip(rp) })
}

// -R while another process holds the remote port: a warning, retries
// every poll, the -L forward is up meanwhile, and the -R forward comes up
// once the holder lets go.
func TestRemoteForwardPortHeld(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	echo := echoServer(t)
	hold, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rp := hold.Addr().(*net.TCPAddr).Port
	cfg := baseConfig(s)
	lp := localForward(t, &cfg, echo)
	f, _ := tunnel.ParseForward(fmt.Sprintf("%d:127.0.0.1:%d", rp, echo))
	cfg.Remote = []tunnel.Forward{f}
	r := start(t, cfg)
	waitLog(t, r.logs, "remote port forwarding failed", 2, 3*time.Second)
	if !strings.Contains(r.logs.String(), "level=WARN") {
		t.Error("the failed remote forward is not a warning")
	}
	if err := roundTrip(lp); err != nil {
		t.Errorf("-L forward is not up while -R is retried: %v", err)
	}
	hold.Close()
	took := eventually(t, 2*poll+time.Second, "-R comes up after the holder closed", func() error { return roundTrip(rp) })
	t.Logf("-R up %v after the port was freed", took.Round(time.Millisecond))
}

func writeKey(t *testing.T) string {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, err := xssh.MarshalPrivateKey(priv, "stranger")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "id_stranger")
	if err := os.WriteFile(p, pem.EncodeToMemory(b), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func runUntilError(t *testing.T, cfg tunnel.Config, within time.Duration) (error, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	begin := time.Now()
	go func() { done <- tunnel.Run(ctx, cfg, nil) }()
	select {
	case err := <-done:
		return err, time.Since(begin)
	case <-time.After(within):
		cancel()
		<-done
		t.Fatalf("Run still running after %v: a configuration error loops", within)
		return nil, 0
	}
}

func TestFirstStartAuthFailure(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	cfg := baseConfig(s)
	cfg.SSH.Identity = []string{writeKey(t)}
	localForward(t, &cfg, 1)
	err, took := runUntilError(t, cfg, 3*time.Second)
	var ce *tunnel.ConfigError
	if err == nil || !strings.Contains(err.Error(), "authentication failed") || !errors.As(err, &ce) {
		t.Fatalf("err = %v, want an authentication ConfigError", err)
	}
	t.Logf("%v after %v", err, took.Round(time.Millisecond))
}

func TestFirstStartUnknownHostKey(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	cfg := baseConfig(s)
	cfg.SSH.KnownHosts = filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(cfg.SSH.KnownHosts, nil, 0o600)
	localForward(t, &cfg, 1)
	err, _ := runUntilError(t, cfg, 3*time.Second)
	if err == nil || !strings.Contains(err.Error(), "is unknown") {
		t.Fatalf("err = %v, want unknown host key", err)
	}
}

func TestFirstStartPortTaken(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	hold, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	cfg := baseConfig(s)
	f, _ := tunnel.ParseForward(fmt.Sprintf("%d:127.0.0.1:1", hold.Addr().(*net.TCPAddr).Port))
	cfg.Local = []tunnel.Forward{f}
	err, _ = runUntilError(t, cfg, 3*time.Second)
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("err = %v, want address in use", err)
	}
}

// The host is down at first start: autossh would exit ("ssh exited
// prematurely"); the tunnel keeps trying and comes up with the host.
func TestFirstConnectHostDown(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	s.Kill()
	echo := echoServer(t)
	cfg := baseConfig(s)
	lp := localForward(t, &cfg, echo)
	r := start(t, cfg)
	waitLog(t, r.logs, "tunnel connect failed", 3, 3*time.Second)
	if !strings.Contains(r.logs.String(), "retrying in ") {
		t.Error("no retrying line")
	}
	s.Restart()
	eventually(t, 2*poll+backoffMax+time.Second, "round trip once sshd is up", func() error { return roundTrip(lp) })
}

func TestCancel(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	echo := echoServer(t)
	cfg := baseConfig(s)
	lp := localForward(t, &cfg, echo)
	r := start(t, cfg)
	eventually(t, 3*time.Second, "round trip", func() error { return roundTrip(lp) })
	// A connection open through the tunnel does not hold up the stop.
	c, err := net.Dial("tcp", addr(lp))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	begin := time.Now()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("Run returned %v after cancel, want nil", err)
		}
		r.done <- nil // for the clean-up
	case <-time.After(time.Second):
		t.Fatal("Run did not return within 1s of cancel")
	}
	t.Logf("stopped in %v", time.Since(begin).Round(time.Millisecond))
	if c2, err := net.DialTimeout("tcp", addr(lp), time.Second); err == nil {
		c2.Close()
		t.Error("local port still open after Run returned")
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("open connection not closed: %v", err)
	}
}

func TestSIGUSR1(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	echo := echoServer(t)
	cfg := baseConfig(s)
	lp := localForward(t, &cfg, echo)
	r := start(t, cfg)
	waitLog(t, r.logs, `msg="tunnel up"`, 1, 3*time.Second)
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitLog(t, r.logs, `reason="SIGUSR1: reconnecting now"`, 1, time.Second)
	waitLog(t, r.logs, `msg="tunnel up"`, 2, time.Second)
	if err := roundTrip(lp); err != nil {
		t.Fatal(err)
	}
}

func countIn(l *testenv.SyncBuffer, s string) int { return strings.Count(l.String(), s) }
