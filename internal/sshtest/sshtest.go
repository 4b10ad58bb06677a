// Package sshtest starts a real OpenSSH sshd on 127.0.0.1 for tests: a
// random free port, temporary host keys, its own sshd_config, a client key
// pair in authorized_keys and a known_hosts file that trusts the server.
// Nothing outside the test's temporary directory is touched except
// /run/sshd, the privilege-separation directory sshd insists on.
package sshtest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bkrun/bkrun/internal/testenv"
)

// Options configure a Server.
type Options struct {
	// ForcedCommand, when set, is put as command="..." (with restrict)
	// in front of the client keys in authorized_keys.
	ForcedCommand string
	// Config lines appended to the generated sshd_config.
	ExtraConfig []string
}

// Server is a running sshd.
type Server struct {
	t       testing.TB
	sshd    string
	dir     string
	config  string
	port    int
	user    string
	known   string
	ed25519 string
	rsa     string
	hostPub string

	mu    sync.Mutex
	cmd   *exec.Cmd
	done  chan struct{}
	log   *testenv.SyncBuffer
	prior string // log of earlier instances (before Kill/Restart)
}

// StartTimeout bounds how long Start waits for sshd to accept connections.
var StartTimeout = 5 * time.Second

// Start starts sshd and stops it when the test ends. It skips (or fails
// under BKRUN_INTEGRATION=1) when sshd or ssh-keygen is missing.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	sshd := testenv.NeedCommand(t, "sshd")
	testenv.NeedCommand(t, "ssh-keygen")
	if !filepath.IsAbs(sshd) {
		// sshd re-executes itself and wants an absolute path.
		abs, err := filepath.Abs(sshd)
		if err != nil {
			t.Fatal(err)
		}
		sshd = abs
	}
	u, err := user.Current()
	if err != nil {
		t.Fatalf("sshtest: current user: %v", err)
	}
	if os.Geteuid() == 0 {
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatalf("sshtest: privilege separation directory: %v", err)
		}
	}
	s := &Server{t: t, sshd: sshd, dir: t.TempDir(), user: u.Username}
	keygen := func(typ, file string, extra ...string) string {
		args := append([]string{"-q", "-t", typ, "-N", "", "-C", "sshtest-" + typ, "-f", file}, extra...)
		if out, err := exec.Command("ssh-keygen", args...).CombinedOutput(); err != nil {
			t.Fatalf("sshtest: ssh-keygen %s: %v: %s", typ, err, out)
		}
		pub, err := os.ReadFile(file + ".pub")
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(pub))
	}
	hostKey := filepath.Join(s.dir, "ssh_host_ed25519_key")
	s.hostPub = keygen("ed25519", hostKey)
	s.ed25519 = filepath.Join(s.dir, "id_ed25519")
	s.rsa = filepath.Join(s.dir, "id_rsa")
	var auth strings.Builder
	prefix := ""
	if opts.ForcedCommand != "" {
		prefix = `command="` + strings.ReplaceAll(opts.ForcedCommand, `"`, `\"`) + `",restrict `
	}
	fmt.Fprintf(&auth, "%s%s\n", prefix, keygen("ed25519", s.ed25519))
	fmt.Fprintf(&auth, "%s%s\n", prefix, keygen("rsa", s.rsa, "-b", "3072"))
	authFile := filepath.Join(s.dir, "authorized_keys")
	if err := os.WriteFile(authFile, []byte(auth.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	s.port = freePort(t)
	s.known = filepath.Join(s.dir, "known_hosts")
	if err := os.WriteFile(s.known, []byte(s.KnownHostsLine()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	permitRoot := "no"
	if os.Geteuid() == 0 {
		permitRoot = "prohibit-password"
	}
	cfg := []string{
		"Port " + strconv.Itoa(s.port),
		"ListenAddress 127.0.0.1",
		"PidFile " + filepath.Join(s.dir, "sshd.pid"),
		"HostKey " + hostKey,
		"AuthorizedKeysFile " + authFile,
		"StrictModes no",
		"UsePAM no",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PubkeyAuthentication yes",
		"PermitRootLogin " + permitRoot,
		"Subsystem sftp internal-sftp",
		"LogLevel VERBOSE",
		"MaxStartups 100:30:200",
		"MaxSessions 100",
		"UseDNS no",
		"PrintMotd no",
		// bash sources ~/.bashrc when started by sshd as a top-level
		// shell (SHLVL < 2 after its own increment): a test must not
		// depend on, or wait for, the machine's interactive setup.
		"SetEnv SHLVL=1",
	}
	cfg = append(cfg, opts.ExtraConfig...)
	s.config = filepath.Join(s.dir, "sshd_config")
	if err := os.WriteFile(s.config, []byte(strings.Join(cfg, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(sshd, "-t", "-f", s.config).CombinedOutput(); err != nil {
		t.Fatalf("sshtest: sshd -t rejects the config: %v: %s", err, out)
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("sshd log:\n%s", s.Log())
		}
	})
	if err := s.start(); err != nil {
		t.Fatalf("sshtest: %v\nsshd log:\n%s", err, s.Log())
	}
	return s
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("sshtest: finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.log != nil {
		s.prior += s.log.String()
	}
	s.log = &testenv.SyncBuffer{}
	cmd := exec.Command(s.sshd, "-D", "-e", "-f", s.config)
	cmd.Stdout = s.log
	cmd.Stderr = s.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting sshd: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done
	deadline := time.Now().Add(StartTimeout)
	for {
		c, err := net.DialTimeout("tcp", s.Addr(), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("sshd exited at start: %v", cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sshd does not accept connections on %s after %v", s.Addr(), StartTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Addr is "127.0.0.1:PORT".
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Port is the port sshd listens on.
func (s *Server) Port() int { return s.port }

// User is the user tests log in as (the current user).
func (s *Server) User() string { return s.user }

// Dest is "USER@127.0.0.1:PORT".
func (s *Server) Dest() string { return s.user + "@" + s.Addr() }

// Dir is the server's temporary directory (keys, config, logs).
func (s *Server) Dir() string { return s.dir }

// KnownHosts is a known_hosts file that trusts the server's host key.
func (s *Server) KnownHosts() string { return s.known }

// KnownHostsLine is the server's known_hosts line, "[127.0.0.1]:PORT ssh-ed25519 ...".
func (s *Server) KnownHostsLine() string {
	f := strings.Fields(s.hostPub)
	return fmt.Sprintf("[127.0.0.1]:%d %s %s", s.port, f[0], f[1])
}

// HostKey is the server's public host key in authorized_keys form.
func (s *Server) HostKey() string { return s.hostPub }

// Identity is the client's ed25519 private key (unencrypted).
func (s *Server) Identity() string { return s.ed25519 }

// IdentityRSA is the client's RSA private key (unencrypted).
func (s *Server) IdentityRSA() string { return s.rsa }

// Log is sshd's output so far, across restarts.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.log == nil {
		return s.prior
	}
	return s.prior + s.log.String()
}

// Kill sends SIGKILL to sshd and to every session process it forked, as if
// the host had died: open connections drop at once.
func (s *Server) Kill() { s.signal(syscall.SIGKILL) }

// Stop terminates sshd and its sessions. It is safe to call more than once.
func (s *Server) Stop() { s.signal(syscall.SIGKILL) }

// Freeze stops (SIGSTOP) sshd and its sessions: connections stay open but
// nothing answers, the way a hung host or a dead link looks to a client.
func (s *Server) Freeze() { s.sendTree(syscall.SIGSTOP) }

// Thaw resumes a frozen server.
func (s *Server) Thaw() { s.sendTree(syscall.SIGCONT) }

// Restart starts sshd again on the same port (after Kill or Stop).
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		s.t.Fatalf("sshtest: restart: %v\nsshd log:\n%s", err, s.Log())
	}
}

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	s.sendTree(sig)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		s.t.Errorf("sshtest: sshd pid %d did not exit after %v", cmd.Process.Pid, sig)
	}
}

// sendTree signals sshd and all its descendants. Session processes call
// setsid, so the process group does not reach them: walk /proc instead.
// Children are signalled first so that none is re-parented unseen.
func (s *Server) sendTree(sig syscall.Signal) {
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	pids := descendants(cmd.Process.Pid)
	for i := len(pids) - 1; i >= 0; i-- {
		_ = syscall.Kill(pids[i], sig)
	}
}

// descendants returns pid followed by all its descendants (parents first).
func descendants(pid int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may contain spaces and parens.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 {
			continue
		}
		pp, _ := strconv.Atoi(f[1])
		children[pp] = append(children[pp], p)
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}
