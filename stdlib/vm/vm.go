// Package vm pauses and unpauses virtual machines through the hypervisor's
// own tool (xl, xm, virsh). A paused VM must never stay paused: Pause
// starts a watchdog that unpauses the domain when the allowed window is
// exceeded, in Go, whatever the recipe is doing at the time.
package vm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	osexec "os/exec"
	"strings"
	"sync"
	"time"

	"github.com/bkrun/bkrun/stdlib/exec"
)

// Driver speaks to one hypervisor tool.
type Driver struct {
	Name    string // xl, xm or virsh
	pause   string
	unpause string
}

var drivers = map[string]Driver{
	"xl":    {Name: "xl", pause: "pause", unpause: "unpause"},
	"xm":    {Name: "xm", pause: "pause", unpause: "unpause"},
	"virsh": {Name: "virsh", pause: "suspend", unpause: "resume"},
}

// Detect picks the driver: the named one, else the first of xl, virsh, xm
// found in $PATH (xl before xm: on Xen 4.x xm is a deprecated wrapper).
func Detect(name string) (Driver, error) {
	if name != "" {
		d, ok := drivers[name]
		if !ok {
			return Driver{}, fmt.Errorf("unknown hypervisor tool %q (xl, xm, virsh)", name)
		}
		return d, nil
	}
	for _, n := range []string{"xl", "virsh", "xm"} {
		if _, err := osexec.LookPath(n); err == nil {
			return drivers[n], nil
		}
	}
	return Driver{}, errors.New("no hypervisor tool found (xl, virsh or xm in $PATH); name one with driver=")
}

// CommandTimeout bounds each hypervisor command: a hung xl must not hold a
// VM paused.
var CommandTimeout = 30 * time.Second

func (d Driver) run(ctx context.Context, args ...string) (string, error) {
	res, err := exec.Run(ctx, exec.Cmd{Argv: append([]string{d.Name}, args...), Capture: true, Timeout: CommandTimeout})
	return res.Stdout, err
}

// Pause pauses dom.
func (d Driver) Pause(ctx context.Context, dom string) error {
	_, err := d.run(ctx, d.pause, dom)
	return err
}

// Unpause resumes dom.
func (d Driver) Unpause(ctx context.Context, dom string) error {
	_, err := d.run(ctx, d.unpause, dom)
	return err
}

// State is "paused", "running" or another state word of the tool.
func (d Driver) State(ctx context.Context, dom string) (string, error) {
	if d.Name == "virsh" {
		out, err := d.run(ctx, "domstate", dom)
		return strings.TrimSpace(out), err
	}
	out, err := d.run(ctx, "list", dom)
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(out, "\n")[1:] {
		f := strings.Fields(l)
		if len(f) >= 5 && f[0] == dom {
			return xlState(f[4]), nil
		}
	}
	return "", fmt.Errorf("%s list: domain %q not found", d.Name, dom)
}

// xlState reads the State column of xl/xm list ("-b----", "--p---").
func xlState(s string) string {
	for i, c := range []string{"running", "blocked", "paused", "shutdown", "crashed", "dying"} {
		if i < len(s) && s[i] != '-' {
			if c == "blocked" {
				return "running" // idle but running
			}
			return c
		}
	}
	return "running"
}

// List returns the domain names (without Domain-0).
func (d Driver) List(ctx context.Context) ([]string, error) {
	if d.Name == "virsh" {
		out, err := d.run(ctx, "list", "--all", "--name")
		if err != nil {
			return nil, err
		}
		return strings.Fields(out), nil
	}
	out, err := d.run(ctx, "list")
	if err != nil {
		return nil, err
	}
	var names []string
	for _, l := range strings.Split(out, "\n")[1:] {
		if f := strings.Fields(l); len(f) > 0 && f[0] != "Domain-0" {
			names = append(names, f[0])
		}
	}
	return names, nil
}

// Paused is a domain paused by Pause. Unpause ends the pause; it is safe
// to call more than once and from several goroutines (the recipe, the
// clean-up stack, the watchdog): the domain is unpaused once.
type Paused struct {
	Dom    string
	Driver Driver
	Since  time.Time
	Max    time.Duration

	once     sync.Once
	err      error
	watchdog *time.Timer
	log      *slog.Logger
	// ByWatchdog is set when the window was exceeded.
	byWatchdog bool
	mu         sync.Mutex
}

// Pause pauses dom and arms a watchdog that unpauses it after max (0: no
// watchdog, which recipes should not want).
func Pause(ctx context.Context, d Driver, dom string, max time.Duration, log *slog.Logger) (*Paused, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := d.Pause(ctx, dom); err != nil {
		return nil, err
	}
	p := &Paused{Dom: dom, Driver: d, Since: time.Now(), Max: max, log: log}
	log.Info("vm paused", "domain", dom, "max", max)
	if max > 0 {
		p.watchdog = time.AfterFunc(max, func() {
			p.mu.Lock()
			p.byWatchdog = true
			p.mu.Unlock()
			log.Error("vm paused longer than allowed: unpausing it now", "domain", dom, "max", max)
			p.Unpause()
		})
	}
	return p, nil
}

// Unpause resumes the domain (once) with its own context: it must work
// after the run was cancelled.
func (p *Paused) Unpause() error {
	p.once.Do(func() {
		if p.watchdog != nil {
			p.watchdog.Stop()
		}
		ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
		defer cancel()
		p.err = p.Driver.Unpause(ctx, p.Dom)
		window := time.Since(p.Since).Round(time.Millisecond)
		if p.err != nil {
			p.log.Error("vm unpause failed", "domain", p.Dom, "paused_for", window, "err", p.err)
			return
		}
		p.log.Info("vm unpaused", "domain", p.Dom, "paused_for", window)
	})
	return p.err
}

// ByWatchdog reports whether the watchdog had to unpause the domain.
func (p *Paused) ByWatchdog() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.byWatchdog
}
