package vm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bkrun/bkrun/internal/testenv"
	"github.com/bkrun/bkrun/runtime/luatest"
	"github.com/bkrun/bkrun/stdlib/exec"
)

// shims puts the recorded fakes of xl, xm and virsh first on PATH and
// returns a function that reads the calls made so far.
func shims(t *testing.T) (calls func() string, state string) {
	t.Helper()
	calls, state = testenv.Shims(t, "testdata/shims")
	os.WriteFile(filepath.Join(state, "master"), []byte("running\n"), 0o644)
	return calls, state
}

func TestDriversIssueTheRightCommands(t *testing.T) {
	for _, c := range []struct{ drv, pause, unpause string }{
		{"xl", "xl pause master", "xl unpause master"},
		{"xm", "xm pause master", "xm unpause master"},
		{"virsh", "virsh suspend master", "virsh resume master"},
	} {
		calls, _ := shims(t)
		d, err := Detect(c.drv)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		if err := d.Pause(ctx, "master"); err != nil {
			t.Fatal(err)
		}
		if s, err := d.State(ctx, "master"); err != nil || s != "paused" {
			t.Errorf("%s state after pause: %q %v", c.drv, s, err)
		}
		if err := d.Unpause(ctx, "master"); err != nil {
			t.Fatal(err)
		}
		if s, _ := d.State(ctx, "master"); s != "running" {
			t.Errorf("%s state after unpause: %q", c.drv, s)
		}
		if names, err := d.List(ctx); err != nil || strings.Join(names, ",") != "master" {
			t.Errorf("%s list: %v %v", c.drv, names, err)
		}
		got := calls()
		if !strings.Contains(got, c.pause+"\n") || !strings.Contains(got, c.unpause+"\n") {
			t.Errorf("%s calls:\n%s", c.drv, got)
		}
	}
	if _, err := Detect("kvm"); err == nil || !strings.Contains(err.Error(), `unknown hypervisor tool "kvm"`) {
		t.Errorf("Detect(kvm): %v", err)
	}
}

func TestDetectPrefersXL(t *testing.T) {
	shims(t)
	if d, err := Detect(""); err != nil || d.Name != "xl" {
		t.Fatalf("Detect = %v, %v", d.Name, err)
	}
}

// The watchdog unpauses a domain whose pause outlives the window, while
// whatever holds it is still busy; a later Unpause does not run twice.
func TestWatchdogUnpauses(t *testing.T) {
	calls, state := shims(t)
	d, _ := Detect("xl")
	p, err := Pause(context.Background(), d, "master", 200*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for !strings.Contains(calls(), "xl unpause master") {
		if time.Now().After(deadline) {
			t.Fatal("watchdog did not unpause within 2s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if since := time.Since(p.Since); since > time.Second {
		t.Errorf("unpaused after %v", since)
	}
	if !p.ByWatchdog() {
		t.Error("ByWatchdog false")
	}
	p.Unpause()
	if n := strings.Count(calls(), "unpause"); n != 1 {
		t.Errorf("unpaused %d times", n)
	}
	if b, _ := os.ReadFile(filepath.Join(state, "master")); strings.TrimSpace(string(b)) != "running" {
		t.Errorf("state %q", b)
	}
}

func TestFailuresAreReported(t *testing.T) {
	shims(t)
	d, _ := Detect("xl")
	t.Setenv("SHIM_FAIL", "pause")
	_, err := Pause(context.Background(), d, "master", time.Second, nil)
	if err == nil || !strings.Contains(err.Error(), "xl exited 1: libxl: error") {
		t.Errorf("pause failure: %v", err)
	}
	t.Setenv("SHIM_FAIL", "unpause")
	os.Unsetenv("SHIM_FAIL")
	p, err := Pause(context.Background(), d, "master", time.Minute, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SHIM_FAIL", "unpause")
	if err := p.Unpause(); err == nil || !strings.Contains(err.Error(), "xl exited 1") {
		t.Errorf("unpause failure: %v", err)
	}
}

// A hung unpause does not hang the run forever.
func TestHungCommandIsBounded(t *testing.T) {
	shims(t)
	old := CommandTimeout
	CommandTimeout = 300 * time.Millisecond
	defer func() { CommandTimeout = old }()
	d, _ := Detect("xl")
	t.Setenv("SHIM_HANG", "pause")
	start := time.Now()
	_, err := Pause(context.Background(), d, "master", time.Second, nil)
	if err == nil || !strings.Contains(err.Error(), "timed out") || time.Since(start) > 5*time.Second {
		t.Errorf("hung pause: %v after %v", err, time.Since(start))
	}
}

func TestLua(t *testing.T) {
	calls, _ := shims(t)
	h := luatest.NewHost(t, luatest.HostOptions{Prelude: `local vm = require "vm"; `}, Module, exec.Module)
	h.Run(t, `
		local p = vm.pause("master", {max = "5s", driver = "virsh"})
		assert(vm.state("master", {driver = "virsh"}) == "paused")
		p:unpause()
		p:unpause()
		local a, b = vm.paused("master", {max = 5}, function() return 1, 2 end)
		assert(a == 1 and b == 2)
		assert(vm.state("master") == "running")
		local ok, err = pcall(vm.paused, "master", {max = 5}, function() error("snapshot failed") end)
		assert(not ok and tostring(err):find("snapshot failed"), tostring(err))
		assert(vm.state("master") == "running")
		assert(#vm.list() == 1)`)
	want := "virsh suspend master\nvirsh domstate master\nvirsh resume master\nxl pause master\nxl unpause master\nxl list master\nxl pause master\nxl unpause master\nxl list master\nxl list\n"
	if got := calls(); got != want {
		t.Errorf("calls:\n%s\nwant:\n%s", got, want)
	}
	// The function is stuck in a slow command when the window ends.
	msg := h.RunErr(t, `vm.paused("master", {max = 0.2}, function() require("exec").run{"sleep", "0.6"} end)`)
	if !strings.Contains(msg, "vm.paused: master was paused longer than 200ms: the watchdog unpaused it") {
		t.Errorf("watchdog in vm.paused: %s", msg)
	}
	for src, want := range map[string]string{
		`vm.pause(42)`:                    "bad argument #1 to 'vm.pause' (string expected, got number)",
		`vm.pause("m", {max = 0})`:        "option 'max' must be positive",
		`vm.pause("m", {driver = "kvm"})`: `unknown hypervisor tool "kvm"`,
		`vm.paused("m", {}, "not a fn")`:  "bad argument #3 to 'vm.paused' (function expected, got string)",
		`vm.pause("m", {maxx = 1})`:       "unknown option 'maxx'",
	} {
		if got := h.RunErr(t, src); !strings.Contains(got, want) {
			t.Errorf("%s: %s, want %s", src, got, want)
		}
	}
}

// Clean-up unpauses a domain the recipe left paused, and dry runs only print.
func TestLuaCleanupAndDryRun(t *testing.T) {
	calls, _ := shims(t)
	h := luatest.NewHost(t, luatest.HostOptions{Prelude: `local vm = require "vm"; `}, Module)
	h.Run(t, `vm.pause("master", {max = 30})`)
	if err := h.RunCleanup(); err != nil {
		t.Fatal(err)
	}
	if got := calls(); got != "xl pause master\nxl unpause master\n" {
		t.Errorf("calls %q", got)
	}
	dry := luatest.NewHost(t, luatest.HostOptions{DryRun: true, Prelude: `local vm = require "vm"; `}, Module)
	dry.Run(t, `vm.paused("master", {max = 10}, function() end)`)
	if got := dry.Out.String(); got != "[dry-run] xl pause master   (watchdog: unpaused after 10s at most)\n[dry-run] xl unpause master\n" {
		t.Errorf("dry run printed %q", got)
	}
	if got := calls(); strings.Count(got, "pause") != 2 {
		t.Errorf("dry run ran commands: %q", got)
	}
}
