package tunnel_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bkrun/bkrun/internal/sshtest"
)

// bkrunBinary builds cmd/bkrun from the module root into a temporary
// directory.
func bkrunBinary(t *testing.T) (bin, root string) {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" || strings.TrimSpace(string(out)) == os.DevNull {
		t.Fatalf("go env GOMOD: %v %q", err, out)
	}
	root = filepath.Dir(strings.TrimSpace(string(out)))
	bin = filepath.Join(t.TempDir(), "bkrun")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/bkrun")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin, root
}

// cliEnv keeps the user's ssh setup out: no agent, an empty HOME.
func cliEnv(t *testing.T) []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "SSH_AUTH_SOCK=") && !strings.HasPrefix(e, "HOME=") {
			env = append(env, e)
		}
	}
	return append(env, "HOME="+t.TempDir())
}

// scripts/tunnel.lua through the real binary: data flows through --local,
// and SIGTERM ends it with exit status 0 within a second.
func TestCLITunnelRecipe(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	bin, root := bkrunBinary(t)
	script := filepath.Join(root, "scripts", "tunnel.lua")

	// Usage errors: exit status 2.
	cmd := exec.Command(bin, script, "host")
	cmd.Env = cliEnv(t)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "give at least one --local or --remote") {
		t.Errorf("no forward: %v: %s", err, out)
	}

	echo := echoServer(t)
	lp := freePort(t)
	var stderr bytes.Buffer
	cmd = exec.Command(bin, script, "--port", fmt.Sprint(s.Port()), "--identity", s.Identity(), "--known-hosts", s.KnownHosts(),
		"--poll", "1", "--local", fmt.Sprintf("%d:127.0.0.1:%d", lp, echo), s.User()+"@127.0.0.1")
	cmd.Env = cliEnv(t)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("bkrun stderr:\n%s", stderr.String())
		}
	}()
	eventually(t, 5*time.Second, "round trip through the recipe", func() error {
		select {
		case err := <-exited:
			exited <- err
			return fmt.Errorf("bkrun exited: %v", err)
		default:
		}
		return roundTrip(lp)
	})
	begin := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("after SIGTERM: %v, want exit status 0", err)
		}
		t.Logf("exit 0 %v after SIGTERM", time.Since(begin).Round(time.Millisecond))
	case <-time.After(time.Second):
		t.Fatal("bkrun still running 1s after SIGTERM")
	}
	if !strings.Contains(stderr.String(), `msg="tunnel up"`) {
		t.Errorf("no tunnel up line in:\n%s", stderr.String())
	}
	if err := roundTrip(lp); err == nil {
		t.Error("local port still forwarding after exit")
	}
}
