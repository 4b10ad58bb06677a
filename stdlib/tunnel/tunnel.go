// Package tunnel keeps SSH port forwards up until it is told to stop: the
// native replacement for autossh under daemontools (seed 000). Local
// forwards (-L) listen on loopback here and connect from the remote side;
// remote forwards (-R) listen on the server's loopback and connect from
// here. A keepalive every Poll with its own Timeout notices a dead or hung
// link; reconnects back off exponentially (jittered, capped, reset after a
// stable period) and never give up on network errors, not even on the first
// connect. Only a configuration error at first start (bad key, unknown or
// changed host key, a local port already taken) ends Run with an error.
package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bkrun/bkrun/stdlib/ssh"
	xssh "golang.org/x/crypto/ssh"
)

// Defaults, as the Lua binding documents them.
const (
	DefaultPoll       = 30 * time.Second
	DefaultTimeout    = 10 * time.Second
	DefaultBackoffMin = time.Second
	DefaultBackoffMax = 60 * time.Second
	DefaultStable     = 120 * time.Second
)

// Forward is one forwarding: listen on Bind:Port, connect to Host:HostPort.
// For a local forward the listener is here and the connection is made by
// the server; for a remote forward it is the other way round.
type Forward struct {
	Bind     string // loopback address to listen on; default 127.0.0.1
	Port     int    // port to listen on
	Host     string // target host, as seen from the connecting side
	HostPort int
}

// String is the spec form, "[BIND:]PORT:HOST:HOSTPORT".
func (f Forward) String() string {
	s := strconv.Itoa(f.Port) + ":" + bracket(f.Host) + ":" + strconv.Itoa(f.HostPort)
	if f.Bind != "" && f.Bind != "127.0.0.1" {
		s = bracket(f.Bind) + ":" + s
	}
	return s
}

func bracket(h string) string {
	if strings.Contains(h, ":") {
		return "[" + h + "]"
	}
	return h
}

func (f Forward) listenAddr() string {
	b := f.Bind
	if b == "" {
		b = "127.0.0.1"
	}
	return net.JoinHostPort(b, strconv.Itoa(f.Port))
}

func (f Forward) target() string { return net.JoinHostPort(f.Host, strconv.Itoa(f.HostPort)) }

// ParseForward parses "LPORT:HOST:PORT" or "BIND:LPORT:HOST:PORT" (IPv6
// addresses in brackets). BIND must be a loopback address: bkrun never
// opens a forward to the network.
func ParseForward(spec string) (Forward, error) {
	bad := fmt.Errorf("%q is not LPORT:HOST:PORT", spec)
	parts, ok := splitSpec(spec)
	if !ok {
		return Forward{}, bad
	}
	var f Forward
	switch len(parts) {
	case 3:
	case 4:
		f.Bind, parts = parts[0], parts[1:]
		if !isLoopback(f.Bind) {
			return Forward{}, fmt.Errorf("%q: bind address %s is not a loopback address (tunnel forwards listen only on 127.0.0.1, ::1 or localhost)", spec, f.Bind)
		}
		if f.Bind == "localhost" {
			f.Bind = "127.0.0.1"
		}
	default:
		return Forward{}, bad
	}
	port := func(s string) (int, bool) {
		n, err := strconv.Atoi(s)
		return n, err == nil && n > 0 && n <= 65535
	}
	var ok1, ok2 bool
	f.Port, ok1 = port(parts[0])
	f.Host = parts[1]
	f.HostPort, ok2 = port(parts[2])
	if !ok1 || !ok2 || f.Host == "" {
		return Forward{}, bad
	}
	return f, nil
}

// splitSpec splits on colons outside brackets and strips the brackets.
func splitSpec(s string) ([]string, bool) {
	var parts []string
	for s != "" {
		if s[0] == '[' {
			i := strings.IndexByte(s, ']')
			if i < 0 {
				return nil, false
			}
			parts = append(parts, s[1:i])
			s = s[i+1:]
			if s == "" {
				break
			}
			if s[0] != ':' {
				return nil, false
			}
			s = s[1:]
			if s == "" {
				return nil, false
			}
			continue
		}
		i := strings.IndexByte(s, ':')
		if i < 0 {
			parts = append(parts, s)
			break
		}
		parts = append(parts, s[:i])
		s = s[i+1:]
		if s == "" {
			return nil, false
		}
	}
	return parts, len(parts) > 0
}

func isLoopback(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// Config configures Run. Zero durations take the defaults.
type Config struct {
	Dest       string      // [user@]host[:port]
	SSH        ssh.Options // user, port, identity, known hosts...; keepalive and connect timeout are set by Run
	Local      []Forward   // -L
	Remote     []Forward   // -R
	Poll       time.Duration
	Timeout    time.Duration
	BackoffMin time.Duration
	BackoffMax time.Duration
	Stable     time.Duration
}

func (c *Config) defaults() error {
	if c.Dest == "" {
		return errors.New("tunnel: no destination")
	}
	if len(c.Local)+len(c.Remote) == 0 {
		return fmt.Errorf("tunnel: %s: no forward (give at least one local or remote forward)", c.Dest)
	}
	for _, f := range append(append([]Forward(nil), c.Local...), c.Remote...) {
		if f.Bind != "" && !isLoopback(f.Bind) {
			return fmt.Errorf("tunnel: %s: bind address %s is not a loopback address", f, f.Bind)
		}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.Poll, DefaultPoll)
	def(&c.Timeout, DefaultTimeout)
	def(&c.BackoffMin, DefaultBackoffMin)
	def(&c.BackoffMax, DefaultBackoffMax)
	def(&c.Stable, DefaultStable)
	if c.BackoffMax < c.BackoffMin {
		c.BackoffMax = c.BackoffMin
	}
	return nil
}

// Specs renders the forwards as ssh options: "-L 13306:localhost:3306 -R ...".
func (c *Config) Specs() string {
	var parts []string
	for _, f := range c.Local {
		parts = append(parts, "-L "+f.String())
	}
	for _, f := range c.Remote {
		parts = append(parts, "-R "+f.String())
	}
	return strings.Join(parts, " ")
}

// ConfigError is an error at first start that retrying cannot fix:
// authentication refused, host key unknown or changed, a key file that
// cannot be read, a local port that cannot be bound.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// permanent reports whether a Dial error is a configuration problem rather
// than the network.
func permanent(err error) bool { return errors.Is(err, ssh.ErrRefused) }

// link is the current SSH client, nil while down; waiters block on up.
type link struct {
	mu     sync.Mutex
	client *xssh.Client
	up     chan struct{} // closed when client becomes non-nil
}

func newLink() *link { return &link{up: make(chan struct{})} }

func (l *link) set(c *xssh.Client) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c != nil && l.client == nil {
		close(l.up)
	} else if c == nil && l.client != nil {
		l.up = make(chan struct{})
	}
	l.client = c
}

// wait returns the client, waiting up to timeout for the link to come up.
func (l *link) wait(ctx context.Context, timeout time.Duration) *xssh.Client {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		l.mu.Lock()
		c, up := l.client, l.up
		l.mu.Unlock()
		if c != nil {
			return c
		}
		select {
		case <-up:
		case <-t.C:
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}

// tunnel is one Run.
type tunnel struct {
	cfg  Config
	log  *slog.Logger
	link *link

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func (t *tunnel) track(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.conns == nil {
		return false // shutting down
	}
	t.conns[c] = struct{}{}
	return true
}

func (t *tunnel) untrack(c net.Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
}

func (t *tunnel) closeAll() {
	t.mu.Lock()
	conns := t.conns
	t.conns = nil
	t.mu.Unlock()
	for c := range conns {
		c.Close()
	}
}

// Run keeps the tunnel up until ctx is cancelled, then closes its listeners
// and connections and returns nil. It returns an error only for a
// configuration error found at first start. SIGUSR1 makes it reconnect now.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := cfg.defaults(); err != nil {
		return &ConfigError{err}
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	log = log.With("dest", cfg.Dest)
	t := &tunnel{cfg: cfg, log: log, link: newLink(), conns: map[net.Conn]struct{}{}}

	// Local listeners are bound once and stay bound across reconnects, so
	// the local port never disappears while Run runs.
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
		t.closeAll()
		t.wg.Wait()
	}()
	for _, f := range cfg.Local {
		l, err := net.Listen("tcp", f.listenAddr())
		if err != nil {
			return &ConfigError{fmt.Errorf("tunnel: -L %s: %w", f, err)}
		}
		listeners = append(listeners, l)
	}
	for i, l := range listeners {
		t.wg.Add(1)
		go func() { defer t.wg.Done(); t.serveLocal(ctx, l, cfg.Local[i]) }()
	}

	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)

	opts := cfg.SSH
	opts.ConnectTimeout = cfg.Timeout
	opts.KeepAlive = -1 // the tunnel's own keepalive below, with its own timeout

	everUp := false
	delay := cfg.BackoffMin
	for attempt := 1; ; attempt++ {
		conn, err := ssh.Dial(ctx, cfg.Dest, opts)
		if ctx.Err() != nil {
			if conn != nil {
				conn.Close()
			}
			return nil
		}
		if err != nil {
			switch {
			case !everUp && permanent(err):
				return &ConfigError{fmt.Errorf("tunnel: %w", err)}
			case permanent(err):
				log.Error("tunnel connect failed", "err", err, "attempt", attempt)
			default:
				log.Warn("tunnel connect failed", "err", err, "attempt", attempt)
			}
		} else {
			everUp = true
			attempt = 0
			upAt := time.Now()
			reason, now := t.serve(ctx, conn, usr1)
			if ctx.Err() != nil {
				log.Info("tunnel stopped", "up", time.Since(upAt).Round(time.Millisecond))
				return nil
			}
			log.Warn("tunnel down", "reason", reason, "up", time.Since(upAt).Round(time.Millisecond))
			if time.Since(upAt) >= cfg.Stable {
				delay = cfg.BackoffMin
			}
			if now {
				delay = cfg.BackoffMin
				continue
			}
		}
		wait := jitter(delay)
		log.Info("retrying in "+wait.Round(time.Millisecond).String(), "backoff", delay)
		delay = min(delay*2, cfg.BackoffMax)
		select {
		case <-ctx.Done():
			return nil
		case <-usr1:
			log.Info("SIGUSR1: reconnecting now")
			delay = cfg.BackoffMin
		case <-time.After(wait):
		}
	}
}

// jitter spreads d over [0.75d, 1.25d) so that many tunnels cut by the
// same outage do not reconnect in lockstep.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.75 + rand.Float64()/2))
}

// serve runs one connection until it fails, ctx is cancelled or SIGUSR1
// arrives, then closes it. It returns why the connection ended and
// whether to reconnect at once.
func (t *tunnel) serve(ctx context.Context, conn *ssh.Conn, usr1 <-chan os.Signal) (reason string, now bool) {
	client := conn.Client()
	cctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		t.link.set(nil)
		cancel()
		conn.Close()
		wg.Wait()
	}()
	t.link.set(client)
	t.log.Info("tunnel up", "forwards", t.cfg.Specs(), "server", conn.String())
	for _, f := range t.cfg.Remote {
		wg.Add(1)
		go func() { defer wg.Done(); t.serveRemote(cctx, client, f) }()
	}

	closed := make(chan error, 1)
	go func() { closed <- conn.Wait() }()
	tick := time.NewTicker(t.cfg.Poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return "stopped", false
		case err := <-closed:
			if err == nil {
				err = io.EOF
			}
			return "connection closed: " + err.Error(), false
		case <-usr1:
			return "SIGUSR1: reconnecting now", true
		case <-tick.C:
			if err := keepalive(ctx, client, t.cfg.Timeout); err != nil {
				return err.Error(), false
			}
		}
	}
}

// keepalive sends one keepalive@openssh.com request and waits up to
// timeout for the reply (OpenSSH answers it with a failure, which still
// proves the peer alive).
func keepalive(ctx context.Context, c *xssh.Client, timeout time.Duration) error {
	done := make(chan error, 1)
	go func() {
		_, _, err := c.SendRequest("keepalive@openssh.com", true, nil)
		done <- err
	}()
	tm := time.NewTimer(timeout)
	defer tm.Stop()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("keepalive failed: %w", err)
		}
		return nil
	case <-tm.C:
		return fmt.Errorf("keepalive timeout after %v", timeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// serveLocal accepts on a local listener for the whole Run. A client that
// arrives while the link is down waits up to Timeout for it, then is
// closed.
func (t *tunnel) serveLocal(ctx context.Context, l net.Listener, f Forward) {
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				t.log.Error("tunnel: local accept failed", "forward", "-L "+f.String(), "err", err)
			}
			return
		}
		if !t.track(c) {
			c.Close()
			return
		}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			defer t.untrack(c)
			client := t.link.wait(ctx, t.cfg.Timeout)
			if client == nil {
				if ctx.Err() == nil {
					t.log.Warn("tunnel: link down, closing local connection", "forward", "-L "+f.String(), "client", c.RemoteAddr().String(), "waited", t.cfg.Timeout)
				}
				c.Close()
				return
			}
			dctx, cancel := context.WithTimeout(ctx, t.cfg.Timeout)
			r, err := client.DialContext(dctx, "tcp", f.target())
			cancel()
			if err != nil {
				t.log.Warn("tunnel: remote connect failed", "forward", "-L "+f.String(), "err", err)
				c.Close()
				return
			}
			t.pipe(c, r)
		}()
	}
}

// serveRemote keeps one remote forward listening while the connection is
// up. A refused bind (a stale session still holds the port) is retried
// every Poll with a warning.
func (t *tunnel) serveRemote(ctx context.Context, client *xssh.Client, f Forward) {
	spec := "-R " + f.String()
	for {
		l, err := client.Listen("tcp", f.listenAddr())
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			t.log.Warn("tunnel: remote port forwarding failed; retrying", "forward", spec, "err", err, "retry_in", t.cfg.Poll)
			select {
			case <-ctx.Done():
				return
			case <-time.After(t.cfg.Poll):
				continue
			}
		}
		t.log.Info("tunnel: remote forward listening", "forward", spec)
		stop := context.AfterFunc(ctx, func() { l.Close() })
		for {
			c, err := l.Accept()
			if err != nil {
				break
			}
			if !t.track(c) {
				c.Close()
				break
			}
			t.wg.Add(1)
			go func() {
				defer t.wg.Done()
				defer t.untrack(c)
				var d net.Dialer
				dctx, cancel := context.WithTimeout(ctx, t.cfg.Timeout)
				r, err := d.DialContext(dctx, "tcp", f.target())
				cancel()
				if err != nil {
					t.log.Warn("tunnel: local connect failed", "forward", spec, "err", err)
					c.Close()
					return
				}
				t.pipe(c, r)
			}()
		}
		stop()
		l.Close()
		if ctx.Err() != nil {
			return
		}
		// The listener ended while the connection is up: listen again.
		t.log.Warn("tunnel: remote forward closed; listening again", "forward", spec)
		select {
		case <-ctx.Done():
			return
		case <-time.After(t.cfg.Poll):
		}
	}
}

type closeWriter interface{ CloseWrite() error }

// pipe copies both ways, passing a half-close on, and closes both ends
// when both directions are done (or when the tunnel shuts down).
func (t *tunnel) pipe(a, b net.Conn) {
	if !t.track(b) {
		a.Close()
		b.Close()
		return
	}
	defer t.untrack(b)
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, err := io.Copy(dst, src)
		if cw, ok := dst.(closeWriter); ok && err == nil {
			cw.CloseWrite()
		} else {
			dst.Close()
			src.Close()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
	a.Close()
	b.Close()
}
