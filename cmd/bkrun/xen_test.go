package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bkrun/bkrun/internal/sshtest"
	"github.com/bkrun/bkrun/internal/testenv"
)

// xenRig is seed 003's world without Xen or device-mapper: xl and the LVM
// tools are recorded shims; the domU's "logical volume" is a real
// partitioned disk image with two ext4 filesystems, which the lvcreate
// shim copies as the snapshot. Everything after that is real: partition
// parsing, loop devices, dump, compression, files.
type xenRig struct {
	env              []string
	calls, dest, dir string
	state            string
}

func newXenRig(t *testing.T) *xenRig {
	t.Helper()
	testenv.NeedRoot(t)
	for _, c := range []string{"sfdisk", "mkfs.ext4", "losetup", "dump", "restore", "lz4"} {
		testenv.NeedCommand(t, c)
	}
	root := repoRoot(t)
	dir, err := os.MkdirTemp("/var/tmp", "bkrun-xen-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	r := &xenRig{dir: dir, calls: filepath.Join(dir, "calls"), dest: filepath.Join(dir, "backup"), state: filepath.Join(dir, "state")}
	os.MkdirAll(filepath.Join(r.state, "VGatom"), 0o755)
	os.WriteFile(filepath.Join(r.state, "master"), []byte("running\n"), 0o644)
	img := filepath.Join(r.state, "VGatom", "master")
	run := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	f, _ := os.Create(img)
	f.Truncate(64 << 20)
	f.Close()
	sf := exec.Command("sfdisk", "-q", img)
	sf.Stdin = strings.NewReader("label: dos\nstart=2048, size=40960, type=83\nstart=43008, type=83\n")
	if out, err := sf.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v %s", err, out)
	}
	for i, off := range [][2]string{{"1048576", "20971520"}, {"22020096", "45088768"}} {
		dev := run("losetup", "--find", "--show", "--offset", off[0], "--sizelimit", off[1], img)
		run("mkfs.ext4", "-q", "-L", fmt.Sprintf("part%d", i+1), dev)
		mnt := filepath.Join(dir, "mnt")
		os.MkdirAll(mnt, 0o755)
		run("mount", dev, mnt)
		os.WriteFile(filepath.Join(mnt, fmt.Sprintf("file%d.txt", i+1)), []byte(strings.Repeat("seed 003\n", 1000)), 0o644)
		run("umount", mnt)
		run("losetup", "-d", dev)
	}
	shims := filepath.Join(root, "stdlib", "vm", "testdata", "shims") + ":" + filepath.Join(root, "stdlib", "lvm", "testdata", "shims")
	r.env = append(os.Environ(), "PATH="+shims+":"+os.Getenv("PATH"), "SHIM_LOG="+r.calls, "SHIM_STATE="+r.state)
	return r
}

func (r *xenRig) args(extra ...string) []string {
	a := []string{"scripts/xen-backup.lua", "master", "--dest", r.dest, "--history", filepath.Join(r.dir, "hist.json")}
	if !strings.Contains(strings.Join(extra, " "), "--hypervisor") {
		a = append(a, "--hypervisor", "xl")
	}
	return append(a, extra...)
}

func (r *xenRig) run(t *testing.T, extra ...string) result {
	t.Helper()
	return bkrunEnv(t, r.env, "", r.args(extra...)...)
}

func (r *xenRig) log() string { b, _ := os.ReadFile(r.calls); return string(b) }

// After any run: the VM runs, the snapshot is gone, no loop device is left.
func (r *xenRig) assertCleanedUp(t *testing.T) {
	t.Helper()
	if st, _ := os.ReadFile(filepath.Join(r.state, "master")); strings.TrimSpace(string(st)) != "running" {
		t.Errorf("the domU is %q", st)
	}
	if _, err := os.Stat(filepath.Join(r.state, "VGatom", "master_snap")); err == nil {
		t.Error("the snapshot was not removed")
	}
	if out, _ := exec.Command("losetup", "-j", filepath.Join(r.state, "VGatom", "master_snap")).Output(); len(out) > 0 {
		t.Errorf("loop devices left: %s", out)
	}
	if m, _ := filepath.Glob(filepath.Join(r.dest, "master", ".*partial*")); len(m) > 0 {
		t.Errorf("partial files left: %v", m)
	}
}

func TestXenBackupRecipe(t *testing.T) {
	r := newXenRig(t)
	res := r.run(t)
	if res.code != 0 {
		t.Fatalf("%+v\ncalls:\n%s", res, r.log())
	}
	calls := r.log()
	order := []string{"xl pause master", "vgs ", "lvcreate --snapshot --size 3G --name master_snap VGatom/master", "xl unpause master", "lvremove --force VGatom/master_snap"}
	at := 0
	for _, c := range order {
		i := strings.Index(calls[at:], c)
		if i < 0 {
			t.Fatalf("calls lack %q after position %d:\n%s", c, at, calls)
		}
		at += i
	}
	r.assertCleanedUp(t)
	stamp := time.Now().Format("0102")
	for i := 1; i <= 2; i++ {
		f := filepath.Join(r.dest, "master", fmt.Sprintf("%d.%s.dump.lz4", i, stamp))
		out, err := exec.Command("sh", "-c", "lz4 -dc "+f+" | restore -t -f -").CombinedOutput()
		if err != nil || !strings.Contains(string(out), fmt.Sprintf("file%d.txt", i)) {
			t.Errorf("restore -t of %s: %v\n%s", f, err, out)
		}
		if _, err := os.Stat(f + ".json"); err != nil {
			t.Errorf("no catalogue entry for %s", f)
		}
	}
	if !strings.Contains(res.stdout, "master/1: level ") || !strings.Contains(res.stdout, "master/2: level ") {
		t.Errorf("summary: %s", res.stdout)
	}
	// The same day again: refused without --overwrite, nothing left behind.
	res = r.run(t)
	if res.code != 1 || !strings.Contains(res.stderr, "already exists") {
		t.Errorf("second run: %+v", res)
	}
	r.assertCleanedUp(t)
}

// Fault injection: a failing lvcreate, a failing dump, SIGTERM mid-run and
// a hung lvcreate while paused. In every case the domU ends unpaused, the
// snapshot removed, no loop device and no partial file left, exit non-zero.
func TestXenBackupFaults(t *testing.T) {
	r := newXenRig(t)
	env := r.env
	r.env = append(env, "SHIM_FAIL=lvcreate")
	res := r.run(t)
	if res.code != 1 || !strings.Contains(res.stderr, "lvm.snapshot: lvcreate exited 5") || !strings.Contains(r.log(), "xl unpause master") {
		t.Errorf("failing lvcreate: %+v\n%s", res, r.log())
	}
	r.assertCleanedUp(t)

	// virsh instead of xl.
	r.env = env
	os.Remove(r.calls)
	res = r.run(t, "--codec", "none", "--hypervisor", "virsh")
	if res.code != 0 || !strings.Contains(r.log(), "virsh suspend master") || !strings.Contains(r.log(), "virsh resume master") {
		t.Errorf("virsh run: %+v\n%s", res, r.log())
	}
	r.assertCleanedUp(t)

	// dump fails on the first partition: the copy fails naming dump's
	// reason, nothing is left at the destination.
	fake := t.TempDir()
	os.WriteFile(filepath.Join(fake, "dump"), []byte("#!/bin/sh\necho 'DUMP: bad sblock magic number' >&2\nexit 3\n"), 0o755)
	os.RemoveAll(r.dest)
	r.env = append(env, "PATH="+fake+":"+pathOf(env))
	res = r.run(t)
	if res.code != 1 || !strings.Contains(res.stderr, "dump exited 3: DUMP: bad sblock magic number") {
		t.Errorf("failing dump: %+v", res)
	}
	if m, _ := filepath.Glob(filepath.Join(r.dest, "master", "*")); len(m) != 0 {
		t.Errorf("a failed dump left %v", m)
	}
	r.assertCleanedUp(t)
	r.env = env

	// A hung lvcreate while paused: the watchdog unpauses within the window.
	os.Remove(r.calls)
	cmd := exec.Command(bkrunBin, r.args("--max-pause", "0.5")...)
	cmd.Dir = repoRoot(t)
	cmd.Env = append(env, "SHIM_HANG=lvcreate")
	cmd.Start()
	start := time.Now()
	for !strings.Contains(r.log(), "xl unpause master") {
		if time.Since(start) > 5*time.Second {
			cmd.Process.Kill()
			t.Fatalf("the watchdog did not unpause: %s", r.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("unpaused after %v", d)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if code := waitExit(t, cmd, 10*time.Second); code != 143 {
		t.Errorf("hung lvcreate + SIGTERM: exit %d", code)
	}
	r.assertCleanedUp(t)
}

func pathOf(env []string) string {
	p := ""
	for _, e := range env {
		if strings.HasPrefix(e, "PATH=") {
			p = strings.TrimPrefix(e, "PATH=")
		}
	}
	return p
}

// DEST on another host: the dumps go over a real sshd (SFTP), atomically,
// with their catalogue entries.
func TestXenBackupToRemoteHost(t *testing.T) {
	r := newXenRig(t)
	s := sshtest.Start(t, sshtest.Options{})
	rdest := filepath.Join(r.dir, "remote")
	r.dest = s.User() + "@127.0.0.1:" + rdest
	res := r.run(t, "--port", fmt.Sprint(s.Port()), "--identity", s.Identity(), "--known-hosts", s.KnownHosts())
	if res.code != 0 {
		t.Fatalf("%+v", res)
	}
	stamp := time.Now().Format("0102")
	for i := 1; i <= 2; i++ {
		f := filepath.Join(rdest, "master", fmt.Sprintf("%d.%s.dump.lz4", i, stamp))
		out, err := exec.Command("sh", "-c", "lz4 -dc "+f+" | restore -t -f -").CombinedOutput()
		if err != nil || !strings.Contains(string(out), fmt.Sprintf("file%d.txt", i)) {
			t.Errorf("restore -t of %s: %v\n%s", f, err, out)
		}
		if _, err := os.Stat(f + ".json"); err != nil {
			t.Errorf("no catalogue entry for %s", f)
		}
	}
	r.assertCleanedUp(t)
}

// slowDump puts a dump(8) first on PATH that waits before running the real
// one, so that a test can interrupt the run in the middle of a dump.
func slowDump(t *testing.T) string {
	t.Helper()
	real := testenv.NeedCommand(t, "dump")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "dump"), []byte("#!/bin/sh\nsleep 1.5\nexec "+real+" \"$@\"\n"), 0o755)
	return dir
}

func waitGlob(t *testing.T, pattern string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m, _ := filepath.Glob(pattern); len(m) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared", pattern)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// SIGTERM in the middle of a dump, and sshd killed in the middle of a
// remote transfer: exit non-zero, the domU runs, the snapshot and loop
// devices are gone, nothing under a final name at the destination.
func TestXenBackupInterrupted(t *testing.T) {
	r := newXenRig(t)
	slow := slowDump(t)
	env := append(r.env, "PATH="+slow+":"+pathOf(r.env))

	cmd := exec.Command(bkrunBin, r.args()...)
	cmd.Dir, cmd.Env = repoRoot(t), env
	var se bytes.Buffer
	cmd.Stderr = &se
	cmd.Start()
	waitGlob(t, filepath.Join(r.dest, "master", ".1.*.partial-*"))
	cmd.Process.Signal(syscall.SIGTERM)
	if code := waitExit(t, cmd, 10*time.Second); code != 143 {
		t.Errorf("SIGTERM mid-dump: exit %d; %s", code, se.String())
	}
	if m, _ := filepath.Glob(filepath.Join(r.dest, "master", "*")); len(m) != 0 {
		t.Errorf("left at the destination: %v", m)
	}
	r.assertCleanedUp(t)

	s := sshtest.Start(t, sshtest.Options{})
	rdest := filepath.Join(r.dir, "remote")
	r.dest = s.User() + "@127.0.0.1:" + rdest
	cmd = exec.Command(bkrunBin, r.args("--port", fmt.Sprint(s.Port()), "--identity", s.Identity(), "--known-hosts", s.KnownHosts())...)
	cmd.Dir, cmd.Env = repoRoot(t), env
	se.Reset()
	cmd.Stderr = &se
	cmd.Start()
	waitGlob(t, filepath.Join(rdest, "master", ".1.*.partial-*"))
	s.Kill()
	s.Restart() // back soon: the clean-up removes the partial file over a new connection
	if code := waitExit(t, cmd, 30*time.Second); code != 1 {
		t.Errorf("sshd killed mid-transfer: exit %d; %s", code, se.String())
	}
	if m, _ := filepath.Glob(filepath.Join(rdest, "master", "*")); len(m) != 0 {
		t.Errorf("left at the destination after a failed transfer: %v", m)
	}
	r.assertCleanedUp(t)
}

// Seed 003's chain, restored: a full dump, a change in the guest, an
// incremental the next run; the incremental's -T is the level 0's own date
// (read from its header), so bkrun recover's restore applies both with
// restore -r and the guest's files come back as they were at the second run.
func TestXenBackupChainRestores(t *testing.T) {
	r := newXenRig(t)
	if res := r.run(t, "--level", "0"); res.code != 0 {
		t.Fatalf("level 0: %+v\ncalls:\n%s", res, r.log())
	}
	stamp := time.Now().Format("0102")
	dir := filepath.Join(r.dest, "master")
	for i := 1; i <= 2; i++ { // yesterday's names, so that today's run does not collide
		for _, ext := range []string{"", ".json"} {
			if err := os.Rename(filepath.Join(dir, fmt.Sprintf("%d.%s.dump.lz4%s", i, stamp, ext)), filepath.Join(dir, fmt.Sprintf("%d.prev.dump.lz4%s", i, ext))); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The guest changes partition 1 (files must be newer than the base, to the second).
	time.Sleep(1100 * time.Millisecond)
	img := filepath.Join(r.state, "VGatom", "master")
	dev := strings.TrimSpace(runCmd(t, "losetup", "--find", "--show", "--offset", "1048576", "--sizelimit", "20971520", img))
	mnt := mkdir(t, r.dir, "guest")
	runCmd(t, "mount", dev, mnt)
	os.WriteFile(filepath.Join(mnt, "new.txt"), []byte("written after the full dump\n"), 0o644)
	runCmd(t, "umount", mnt)
	runCmd(t, "losetup", "-d", dev)

	res := r.run(t, "--level", "3")
	if res.code != 0 || !strings.Contains(res.stdout, "master/1: level 3, ") {
		t.Fatalf("level 3: %+v", res)
	}
	r.assertCleanedUp(t)
	target := filepath.Join(r.dir, "restored")
	session := fmt.Sprintf("chain(\"1.%s.dump.lz4\")\nrestore(\"1.%s.dump.lz4\", %q)\n", stamp, stamp, target)
	out := bkrun(t, session, "recover", dir)
	if out.code != 0 || !strings.Contains(out.stdout, "applied 2/2: 1."+stamp+".dump.lz4") || strings.Contains(out.stderr, "error") {
		t.Fatalf("recover: %+v", out)
	}
	t.Logf("%s", out.stdout)
	for name, want := range map[string]string{"file1.txt": strings.Repeat("seed 003\n", 1000), "new.txt": "written after the full dump\n"} {
		if b, err := os.ReadFile(filepath.Join(target, name)); err != nil || string(b) != want {
			t.Errorf("restored %s: %v (%d bytes)", name, err, len(b))
		}
	}
	if _, err := os.Stat(filepath.Join(target, "restoresymtable")); err == nil {
		t.Error("restoresymtable left in the target")
	}
	// The same from the shell with scripts/restore.lua: the whole chain,
	// the names, one file.
	latest := filepath.Join(dir, "1."+stamp+".dump.lz4")
	target2 := filepath.Join(r.dir, "restored2")
	out = bkrun(t, "", "-q", "scripts/restore.lua", latest, target2)
	if out.code != 0 || !strings.Contains(out.stdout, "applied 2/2: "+latest) {
		t.Fatalf("restore.lua: %+v", out)
	}
	if b, _ := os.ReadFile(filepath.Join(target2, "new.txt")); string(b) != "written after the full dump\n" {
		t.Errorf("restore.lua: new.txt %q", b)
	}
	if out = bkrun(t, "", "-q", "scripts/restore.lua", "--list", latest); out.code != 0 || !strings.Contains(out.stdout, "new.txt\n") || !strings.Contains(out.stdout, "file1.txt\n") {
		t.Errorf("restore.lua --list: %+v", out)
	}
	one := filepath.Join(r.dir, "one")
	if out = bkrun(t, "", "-q", "scripts/restore.lua", "--path", "new.txt", latest, one); out.code != 0 {
		t.Errorf("restore.lua --path: %+v", out)
	}
	if b, _ := os.ReadFile(filepath.Join(one, "new.txt")); string(b) != "written after the full dump\n" {
		t.Errorf("restore.lua --path: new.txt %q", b)
	}
	if ents, _ := os.ReadDir(one); len(ents) != 1 {
		t.Errorf("restore.lua --path extracted %d names", len(ents))
	}
	out = bkrun(t, "", "-q", "scripts/restore.lua", "--path", "not-there.txt", latest, filepath.Join(r.dir, "none"))
	if out.code != 1 || !strings.Contains(out.stderr, "not-there.txt") {
		t.Errorf("restore.lua of a name not in the backup: %+v", out)
	}
	if _, err := os.Stat(filepath.Join(r.dir, "none", "not-there.txt")); err == nil {
		t.Error("a missing name was written")
	}
	// A chain whose level 0 is gone is refused before anything is written.
	os.Rename(filepath.Join(dir, "1.prev.dump.lz4"), filepath.Join(r.dir, "hidden"))
	out = bkrun(t, "", "-q", "scripts/restore.lua", latest, filepath.Join(r.dir, "broken"))
	if out.code != 1 || !strings.Contains(out.stderr, "master/1") {
		t.Errorf("restore.lua of a broken chain: %+v", out)
	}
	if _, err := os.Stat(filepath.Join(r.dir, "broken")); err == nil {
		t.Error("a broken chain created its target")
	}
	t.Logf("broken chain: %s", out.stderr)
	os.Rename(filepath.Join(r.dir, "hidden"), filepath.Join(dir, "1.prev.dump.lz4"))
	if res := r.run(t, "--level", "12"); res.code != 2 || !strings.Contains(res.stderr, "--level must be 0 to 9") || strings.Contains(r.log(), "pause master\nxl pause") {
		t.Errorf("--level 12: %+v", res)
	}
}
