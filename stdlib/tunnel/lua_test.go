package tunnel_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/bkrun/bkrun/internal/sshtest"
	"github.com/bkrun/bkrun/internal/testenv"
	"github.com/bkrun/bkrun/runtime"
	"github.com/bkrun/bkrun/stdlib/tunnel"
)

func luaHost(t *testing.T, dry bool) (*runtime.Host, *bytes.Buffer, *testenv.SyncBuffer) {
	var out bytes.Buffer
	logs := &testenv.SyncBuffer{}
	h := runtime.New(runtime.Options{
		Modules: []*runtime.Module{tunnel.Module}, DryRun: dry, Stdout: &out, Stderr: &out,
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
		Exit:   func(int) {},
	})
	t.Cleanup(h.Close)
	return h, &out, logs
}

func TestLuaBadArguments(t *testing.T) {
	h, _, _ := luaHost(t, false)
	for _, tc := range []struct{ call, want string }{
		{`tunnel.run("host")`, `bad argument #1 to 'tunnel.run' (table {dest=..., forward={...}} expected, got string)`},
		{`tunnel.run{forward={"1:h:2"}}`, `bad argument #1 to 'tunnel.run' (option 'dest' is required`},
		{`tunnel.run{dest="h"}`, `bad argument #1 to 'tunnel.run' (no forward`},
		{`tunnel.run{dest="h", forward={"13306:localhost"}}`, `bad argument #1 to 'tunnel.run' (option 'forward': "13306:localhost" is not LPORT:HOST:PORT)`},
		{`tunnel.run{dest="h", reverse={"0.0.0.0:2222:localhost:22"}}`, `(option 'reverse': "0.0.0.0:2222:localhost:22": bind address 0.0.0.0 is not a loopback address`},
		{`tunnel.run{dest="h", forward={1}}`, `option 'forward': item 1 is number, not a string`},
		{`tunnel.run{dest="h", forward="1:h:2", poll=0}`, `option 'poll': must be more than 0`},
		{`tunnel.run{dest="h", forward="1:h:2", pol=5}`, `unknown option 'pol'`},
		{`tunnel.run{dest="h", forward="1:h:2", port=70000}`, `option 'port': 70000 is not a port`},
		{`tunnel.run{dest="h", forward="1:h:2", timeout="soon"}`, `option 'timeout': invalid duration "soon"`},
	} {
		_, err := h.RunChunk(`local tunnel = require "tunnel"; `+tc.call, "bad", nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.call, err, tc.want)
		}
	}
}

func TestLuaDryRun(t *testing.T) {
	h, out, _ := luaHost(t, true)
	if _, err := h.RunChunk(`local tunnel = require "tunnel"
		tunnel.run{dest="repl@db", forward={"13306:localhost:3306", "[::1]:5433:db2:5432"}, reverse="2222:localhost:22"}
		print("returned")`, "dry", nil); err != nil {
		t.Fatal(runtime.Describe(err, true))
	}
	want := "[dry-run] tunnel repl@db -L 13306:localhost:3306 -L [::1]:5433:db2:5432 -R 2222:localhost:22\nreturned\n"
	if out.String() != want {
		t.Errorf("output %q, want %q", out, want)
	}
}

// tunnel.run blocks until the run is cancelled, then marks the stop as
// clean (the CLI exits 0); a configuration error at first start is a Lua
// error at once.
func TestLuaRun(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	echo := echoServer(t)
	lp := freePort(t)
	h, _, logs := luaHost(t, false)
	done := make(chan error, 1)
	call := func() string {
		return fmt.Sprintf(`local tunnel = require "tunnel"
			tunnel.run{dest=%q, forward={"%d:127.0.0.1:%d"}, identity=%q, known_hosts=%q, config="none", poll=0.3, timeout=0.5}`,
			s.Dest(), lp, echo, s.Identity(), s.KnownHosts())
	}
	go func() {
		_, err := h.RunChunk(call(), "run", nil)
		done <- err
	}()
	eventually(t, 3*time.Second, "round trip", func() error { return roundTrip(lp) })
	h.Cancel(fmt.Errorf("test stop"))
	select {
	case err := <-done:
		// The Lua run itself stops with the cancel cause; the host knows
		// the stop was the tunnel's normal end.
		if err == nil || !strings.Contains(err.Error(), "test stop") || !h.StoppedCleanly() {
			t.Fatalf("after cancel: %v (clean stop %v)", err, h.StoppedCleanly())
		}
	case <-time.After(time.Second):
		t.Fatal("tunnel.run did not return within 1s of cancel")
	}
	if !strings.Contains(logs.String(), `msg="tunnel up"`) {
		t.Errorf("no tunnel up line:\n%s", logs)
	}

	h2, _, _ := luaHost(t, false)
	_, err := h2.RunChunk(strings.Replace(call(), s.KnownHosts(), "/dev/null", 1), "unknown", nil)
	if err == nil || !strings.Contains(err.Error(), "tunnel.run: ssh: host key for") {
		t.Fatalf("unknown host key: %v", err)
	}
}
