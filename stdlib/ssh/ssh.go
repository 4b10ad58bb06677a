// Package ssh is bkrun's SSH client: connections configured from
// ~/.ssh/config, authenticated by ssh-agent or identity files, with host
// keys checked against known_hosts (a changed key is always refused),
// deadlines on connect and handshake, and keepalives that notice a dead
// peer. On a connection, Exec streams a remote command's stdin and stdout
// without buffering them, and Create/Open read and write remote files over
// SFTP, so a plain OpenSSH server with nothing installed is a backup target.
package ssh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kevinburke/ssh_config"
	"github.com/pkg/sftp"
	xssh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// Defaults.
const (
	DefaultConnectTimeout = 15 * time.Second
	DefaultKeepAlive      = 15 * time.Second
	KeepAliveMisses       = 3
)

// Ciphers in order of preference: AES-GCM is the fastest with AES-NI.
var Ciphers = []string{
	"aes128-gcm@openssh.com",
	"chacha20-poly1305@openssh.com",
	"aes256-gcm@openssh.com",
	"aes128-ctr", "aes192-ctr", "aes256-ctr",
}

// Options configure Dial. Zero values take the defaults; explicit values
// override ~/.ssh/config.
type Options struct {
	User       string
	Port       int
	Identity   []string // private key files; default ~/.ssh/id_ed25519, id_ecdsa, id_rsa that exist
	KnownHosts string   // default ~/.ssh/known_hosts
	AcceptNew  bool     // trust (and record) the key of a host not yet in KnownHosts
	// ConfigFile is the ssh_config to read (default ~/.ssh/config; "none"
	// reads none). A missing file is not an error.
	ConfigFile     string
	ConnectTimeout time.Duration // TCP connect plus handshake; default 15s
	KeepAlive      time.Duration // keepalive interval, default 15s; negative disables
	// AgentSocket is the ssh-agent socket; default $SSH_AUTH_SOCK ("none": no agent).
	AgentSocket string
}

// Conn is an authenticated SSH connection.
type Conn struct {
	Host string // host name connected to (after ssh_config HostName)
	Port int
	User string

	client *xssh.Client
	nc     net.Conn

	closeOnce sync.Once
	closed    chan struct{}
	mu        sync.Mutex
	lost      error // set when keepalive gave up
	sftp      *sftp.Client
	sftpErr   error
	catProbed bool // canCat ran
	catOK     bool // the login runs shell commands: file data can go through cat

	dest string  // as given to Dial, for Redial
	opts Options // as given to Dial
}

// Redial opens a new connection to the same destination with the same
// options (to clean up after the first one was lost).
func (c *Conn) Redial(ctx context.Context) (*Conn, error) { return Dial(ctx, c.dest, c.opts) }

// String is "user@host:port", the name errors use.
func (c *Conn) String() string { return c.User + "@" + hostPort(c.Host, c.Port) }

func hostPort(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }

// Client is the underlying x/crypto/ssh client (for port forwarding).
func (c *Conn) Client() *xssh.Client { return c.client }

// Close closes the connection. It is safe to call more than once.
func (c *Conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		close(c.closed)
		c.mu.Lock()
		if c.sftp != nil {
			c.sftp.Close()
		}
		c.mu.Unlock()
		err = c.client.Close()
		if err != nil && (errors.Is(err, net.ErrClosed) || c.Lost() != nil) {
			err = nil
		}
	})
	return err
}

// Lost is the reason the connection was declared dead by the keepalive,
// or nil.
func (c *Conn) Lost() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lost
}

// Wait blocks until the connection is closed (by Close, the peer or the
// keepalive) and returns why.
func (c *Conn) Wait() error {
	err := c.client.Wait()
	if l := c.Lost(); l != nil {
		return l
	}
	return err
}

// fail names the connection in an error and replaces the bare EOF or
// "use of closed network connection" of a connection the keepalive
// dropped with the reason.
func (c *Conn) fail(op string, err error) error {
	if l := c.Lost(); l != nil {
		return fmt.Errorf("%s: %w", op, l)
	}
	if op == "" {
		return fmt.Errorf("ssh: %s: %w", c, err)
	}
	return fmt.Errorf("ssh: %s: %s: %w", c, op, err)
}

// target is the result of merging dest, options and ssh_config.
type target struct {
	alias, host, user string
	port              int
	identities        []string
	explicitIdentity  bool
}

// ParseDest splits "[user@]host[:port]" (host may be "[v6addr]").
func ParseDest(dest string) (user, host string, port int, err error) {
	if dest == "" {
		return "", "", 0, errors.New("empty destination")
	}
	if i := strings.LastIndex(dest, "@"); i >= 0 {
		user, dest = dest[:i], dest[i+1:]
		if user == "" {
			return "", "", 0, fmt.Errorf("empty user in %q", dest)
		}
	}
	host = dest
	if strings.HasPrefix(dest, "[") {
		h, p, err := net.SplitHostPort(dest)
		if err != nil {
			if !strings.HasSuffix(dest, "]") {
				return "", "", 0, fmt.Errorf("bad destination %q: %v", dest, err)
			}
			return user, strings.Trim(dest, "[]"), 0, nil
		}
		host, dest = h, ":"+p
	} else if i := strings.LastIndex(dest, ":"); i >= 0 {
		if strings.Count(dest, ":") > 1 {
			return user, dest, 0, nil // a bare IPv6 address
		}
		host, dest = dest[:i], dest[i:]
	} else {
		dest = ""
	}
	if dest != "" {
		port, err = strconv.Atoi(dest[1:])
		if err != nil || port <= 0 || port > 65535 {
			return "", "", 0, fmt.Errorf("bad port in destination %q", dest[1:])
		}
	}
	if host == "" {
		return "", "", 0, errors.New("empty host in destination")
	}
	return user, host, port, nil
}

func homeDir() string {
	if h, err := os.UserHomeDir(); err == nil {
		return h
	}
	if u, err := user.Current(); err == nil {
		return u.HomeDir
	}
	return "/"
}

func expandTilde(p string) string {
	if p == "~" {
		return homeDir()
	}
	if strings.HasPrefix(p, "~/") {
		return filepath.Join(homeDir(), p[2:])
	}
	return p
}

func resolve(dest string, o Options) (*target, error) {
	u, alias, port, err := ParseDest(dest)
	if err != nil {
		return nil, err
	}
	t := &target{alias: alias, host: alias, user: u, port: port}
	cfgFile := o.ConfigFile
	if cfgFile == "" {
		cfgFile = filepath.Join(homeDir(), ".ssh", "config")
	}
	var cfg *ssh_config.Config
	if cfgFile != "none" {
		f, err := os.Open(expandTilde(cfgFile))
		switch {
		case err == nil:
			cfg, err = ssh_config.Decode(f)
			f.Close()
			if err != nil {
				return nil, fmt.Errorf("reading %s: %w", cfgFile, err)
			}
		case os.IsNotExist(err) && o.ConfigFile == "":
		default:
			return nil, fmt.Errorf("reading ssh config: %w", err)
		}
	}
	get := func(key string) string {
		if cfg == nil {
			return ""
		}
		v, _ := cfg.Get(alias, key)
		return v
	}
	if h := get("HostName"); h != "" {
		t.host = strings.ReplaceAll(h, "%h", alias)
	}
	if t.user == "" {
		t.user = get("User")
	}
	if o.User != "" {
		t.user = o.User
	}
	if t.user == "" {
		cu, err := user.Current()
		if err != nil {
			return nil, fmt.Errorf("no user given and the current user is unknown: %w", err)
		}
		t.user = cu.Username
	}
	if t.port == 0 {
		if p := get("Port"); p != "" {
			t.port, err = strconv.Atoi(p)
			if err != nil || t.port <= 0 || t.port > 65535 {
				return nil, fmt.Errorf("%s: Host %s: bad Port %q", cfgFile, alias, p)
			}
		}
	}
	if o.Port != 0 {
		t.port = o.Port
	}
	if t.port == 0 {
		t.port = 22
	}
	expand := func(p string) string {
		p = strings.NewReplacer("%d", homeDir(), "%h", t.host, "%r", t.user, "%u", t.user, "%p", strconv.Itoa(t.port), "%%", "%").Replace(p)
		return expandTilde(p)
	}
	switch {
	case len(o.Identity) > 0:
		for _, p := range o.Identity {
			t.identities = append(t.identities, expand(p))
		}
		t.explicitIdentity = true
	default:
		if cfg != nil {
			ids, _ := cfg.GetAll(alias, "IdentityFile")
			for _, p := range ids {
				t.identities = append(t.identities, expand(p))
			}
			t.explicitIdentity = len(ids) > 0
		}
		if len(t.identities) == 0 {
			for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
				p := filepath.Join(homeDir(), ".ssh", n)
				if _, err := os.Stat(p); err == nil {
					t.identities = append(t.identities, p)
				}
			}
		}
	}
	return t, nil
}

// Dial connects and authenticates to dest, "[user@]host[:port]" where host
// may be a Host alias of the ssh config.
// ErrRefused marks Dial failures that no retry can fix: authentication,
// host keys, key files, the agent, the destination or ssh_config. A daemon
// (the tunnel) stops on them at first start instead of looping silently:
// errors.Is(err, ssh.ErrRefused).
var ErrRefused = errors.New("refused")

type refusedError struct{ error }

func (e refusedError) Is(target error) bool { return target == ErrRefused }
func (e refusedError) Unwrap() error        { return e.error }

func refused(err error) error { return refusedError{err} }

func Dial(ctx context.Context, dest string, o Options) (*Conn, error) {
	t, err := resolve(dest, o)
	if err != nil {
		return nil, refused(fmt.Errorf("ssh: %s: %w", dest, err))
	}
	name := t.user + "@" + hostPort(t.host, t.port)
	fail := func(err error) error { return fmt.Errorf("ssh: %s: %w", name, err) }
	timeout := o.ConnectTimeout
	if timeout <= 0 {
		timeout = DefaultConnectTimeout
	}

	auth, err := newAuth(t, o.AgentSocket)
	if err != nil {
		return nil, refused(fail(err))
	}
	defer auth.close()
	known := o.KnownHosts
	if known == "" {
		known = filepath.Join(homeDir(), ".ssh", "known_hosts")
	}
	hk, err := newHostKeys(expandTilde(known), o.AcceptNew)
	if err != nil {
		return nil, refused(fail(err))
	}
	addr := hostPort(t.host, t.port)
	cfg := &xssh.ClientConfig{
		User:              t.user,
		Auth:              []xssh.AuthMethod{xssh.PublicKeysCallback(auth.signers)},
		HostKeyCallback:   hk.callback,
		HostKeyAlgorithms: hk.algorithms(addr),
		Timeout:           timeout,
		ClientVersion:     "SSH-2.0-bkrun",
	}
	cfg.Ciphers = Ciphers

	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		if ctx.Err() == nil && errors.Is(dctx.Err(), context.DeadlineExceeded) {
			return nil, fail(fmt.Errorf("connect timed out after %v", timeout))
		}
		return nil, fail(err)
	}
	// The handshake runs under the same deadline, and a cancelled ctx
	// aborts it by closing the socket.
	nc.SetDeadline(time.Now().Add(timeout))
	stop := context.AfterFunc(dctx, func() { nc.Close() })
	sc, chans, reqs, err := xssh.NewClientConn(nc, addr, cfg)
	stopped := stop()
	if err != nil {
		nc.Close()
		switch {
		case hk.err != nil:
			return nil, refused(hk.err)
		case strings.Contains(err.Error(), "unable to authenticate"):
			return nil, refused(fail(fmt.Errorf("authentication failed (%s)", auth.tried())))
		case ctx.Err() != nil:
			return nil, fail(fmt.Errorf("handshake: %w", ctx.Err()))
		case !stopped || isTimeout(err):
			return nil, fail(fmt.Errorf("handshake timed out after %v", timeout))
		}
		return nil, fail(fmt.Errorf("handshake: %w", err))
	}
	nc.SetDeadline(time.Time{})
	c := &Conn{Host: t.host, Port: t.port, User: t.user, client: xssh.NewClient(sc, chans, reqs), nc: nc, closed: make(chan struct{}), dest: dest, opts: o}
	ka := o.KeepAlive
	if ka == 0 {
		ka = DefaultKeepAlive
	}
	if ka > 0 {
		go c.keepalive(ka, KeepAliveMisses)
	}
	return c, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// keepalive sends keepalive@openssh.com every interval; when no reply has
// come for misses intervals the connection is closed, so that every
// blocked read or write on it fails instead of hanging.
func (c *Conn) keepalive(interval time.Duration, misses int) {
	t := time.NewTicker(interval)
	defer t.Stop()
	replies := make(chan error, 1)
	pending, missed := false, 0
	for {
		select {
		case <-c.closed:
			return
		case err := <-replies:
			if err != nil {
				return // the connection is gone already
			}
			pending, missed = false, 0
		case <-t.C:
			if pending {
				missed++
				if missed >= misses {
					c.mu.Lock()
					c.lost = fmt.Errorf("ssh: %s: connection lost (no keepalive reply for %v)", c, interval*time.Duration(misses))
					c.mu.Unlock()
					c.nc.Close()
					return
				}
				continue
			}
			pending = true
			go func() {
				_, _, err := c.client.SendRequest("keepalive@openssh.com", true, nil)
				replies <- err
			}()
		}
	}
}

// auth collects signers: the agent's first, then identity files.
type auth struct {
	agentConn net.Conn
	agent     agent.ExtendedAgent
	agentPath string
	files     []xssh.Signer
	used      []string // what was offered, for the error message
	encrypted []string
}

func newAuth(t *target, sock string) (*auth, error) {
	a := &auth{}
	if sock == "" {
		sock = os.Getenv("SSH_AUTH_SOCK")
	}
	if sock != "" && sock != "none" {
		nc, err := net.DialTimeout("unix", sock, 5*time.Second)
		if err != nil {
			if len(t.identities) == 0 {
				return nil, fmt.Errorf("ssh-agent at %s is not running (%v) and no identity file was found", sock, err)
			}
		} else {
			a.agentConn, a.agent, a.agentPath = nc, agent.NewClient(nc), sock
		}
	}
	for _, p := range t.identities {
		b, err := os.ReadFile(p)
		if err != nil {
			if t.explicitIdentity {
				return nil, fmt.Errorf("identity %s: %w", p, err)
			}
			continue
		}
		s, err := xssh.ParsePrivateKey(b)
		var pm *xssh.PassphraseMissingError
		switch {
		case errors.As(err, &pm):
			a.encrypted = append(a.encrypted, p)
			continue
		case err != nil:
			return nil, fmt.Errorf("identity %s: %w", p, err)
		}
		a.files = append(a.files, s)
		a.used = append(a.used, p)
	}
	if a.agent == nil && len(a.files) == 0 {
		switch {
		case len(a.encrypted) > 0:
			return nil, fmt.Errorf("identity %s is encrypted and no ssh-agent is running (SSH_AUTH_SOCK unset): start one and ssh-add the key", strings.Join(a.encrypted, ", "))
		default:
			return nil, errors.New("no ssh-agent (SSH_AUTH_SOCK unset) and no identity file (~/.ssh/id_ed25519, id_ecdsa, id_rsa); give identity=")
		}
	}
	return a, nil
}

func (a *auth) signers() ([]xssh.Signer, error) {
	var out []xssh.Signer
	if a.agent != nil {
		s, err := a.agent.Signers()
		if err == nil {
			out = append(out, s...)
		}
	}
	return append(out, a.files...), nil
}

func (a *auth) tried() string {
	var parts []string
	if a.agent != nil {
		parts = append(parts, "agent")
	}
	parts = append(parts, a.used...)
	s := "tried " + strings.Join(parts, ", ")
	if len(a.encrypted) > 0 {
		s += "; skipped encrypted " + strings.Join(a.encrypted, ", ")
		if a.agent == nil {
			s += " (no ssh-agent to decrypt it)"
		}
	}
	return s
}

func (a *auth) close() {
	if a.agentConn != nil {
		a.agentConn.Close()
	}
}
