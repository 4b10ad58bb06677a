package sshtest_test

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/bkrun/bkrun/internal/sshtest"
	"github.com/bkrun/bkrun/internal/testenv"
)

func ssh(t *testing.T, s *sshtest.Server, identity string, args ...string) (string, error) {
	t.Helper()
	argv := []string{"-F", "none", "-p", strconv.Itoa(s.Port()), "-i", identity,
		"-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "UserKnownHostsFile=" + s.KnownHosts(),
		"-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=5", s.User() + "@127.0.0.1"}
	out, err := exec.Command("ssh", append(argv, args...)...).CombinedOutput()
	return string(out), err
}

func TestServerWithOpenSSHClient(t *testing.T) {
	testenv.NeedCommand(t, "ssh")
	s := sshtest.Start(t, sshtest.Options{})
	for _, id := range []string{s.Identity(), s.IdentityRSA()} {
		out, err := ssh(t, s, id, "echo", "hello")
		if err != nil || strings.TrimSpace(out) != "hello" {
			t.Fatalf("ssh with %s: %v: %s", id, err, out)
		}
	}
	s.Kill()
	if _, err := ssh(t, s, s.Identity(), "true"); err == nil {
		t.Fatal("ssh succeeded against a killed sshd")
	}
	s.Restart()
	if out, err := ssh(t, s, s.Identity(), "echo", "again"); err != nil || strings.TrimSpace(out) != "again" {
		t.Fatalf("ssh after restart: %v: %s", err, out)
	}
	if !strings.Contains(s.Log(), "Accepted publickey") {
		t.Errorf("sshd log lacks the accepted login:\n%s", s.Log())
	}
}

func TestForcedCommand(t *testing.T) {
	testenv.NeedCommand(t, "ssh")
	s := sshtest.Start(t, sshtest.Options{ForcedCommand: "echo forced"})
	out, err := ssh(t, s, s.Identity(), "echo", "mine")
	if err != nil || strings.TrimSpace(out) != "forced" {
		t.Fatalf("forced command: %v: %q", err, out)
	}
}
