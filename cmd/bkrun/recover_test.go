package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// noLoopOrMountUnder fails if a loop device is backed by a file under dir
// or anything is mounted under it. (Other packages' tests run at the same
// time: only this test's directories are looked at.)
func noLoopOrMountUnder(t *testing.T, dirs ...string) {
	t.Helper()
	loops, _ := exec.Command("losetup", "-a").CombinedOutput()
	mounts, _ := os.ReadFile("/proc/mounts")
	for _, d := range dirs {
		if strings.Contains(string(loops), d) {
			t.Errorf("loop device left on a file under %s:\n%s", d, loops)
		}
		if strings.Contains(string(mounts), " "+d) {
			t.Errorf("mount left under %s:\n%s", d, mounts)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(dirs[0], "tmp")); len(ents) > 0 {
		t.Errorf("scratch files left: %v", ents)
	}
}

// bkrun recover DIR: the catalogue in an aligned table, verification
// recorded in it, a damaged backup flagged while the others are listed,
// an image mounted read-only and a file read and extracted, and nothing
// mounted or attached afterwards.
func TestRecoverSession(t *testing.T) {
	needLoop(t)
	scratch := scratchDir(t)
	img := filepath.Join(scratch, "disk.img")
	random := makeExt4Image(t, scratch, img)
	bk := mkdir(t, scratch, "backup")
	mustSucceed(t, bkrun(t, "", "-q", filepath.Join(repoRoot(t), "scripts/disk-image.lua"), img, filepath.Join(bk, "disk.img.lz4")), "disk-image")
	mkdir(t, bk, "old")
	mustSucceed(t, bkrun(t, "", "-q", filepath.Join(repoRoot(t), "scripts/disk-image.lua"), "--codec", "zstd", img, filepath.Join(bk, "old", "disk.img.zst")), "disk-image zstd")
	// Damage the zstd copy in its middle (same size: the catalogue cannot tell).
	damaged := filepath.Join(bk, "old", "disk.img.zst")
	f, err := os.OpenFile(damaged, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	f.WriteAt([]byte("XXXXXXXXXXXXXXXX"), st.Size()/2)
	f.Close()
	os.WriteFile(filepath.Join(bk, "broken.json"), []byte("{not json"), 0o644)
	out := filepath.Join(scratch, "out")
	// Scratch images and mount points of the sessions go here.
	env := append(os.Environ(), "TMPDIR="+mkdir(t, scratch, "tmp"))

	session := strings.Join([]string{
		`ls()`,
		`verify("disk.img.lz4")`,
		`verify("old/disk.img.zst")`,
		`ls()`,
		`problems()`,
		`mp = attach("disk.img.lz4")`,
		`print("READ", fs.read(mp .. "/sub/dir/notes.txt"))`,
		`extract("disk.img.lz4", {"random.bin", "sub/dir/notes.txt"}, "` + out + `")`,
		`verify(9)`,
		`chain(backups[2])`,
	}, "\n") + "\n"
	r := bkrunEnv(t, env, session, "recover", bk)
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	t.Logf("session:\n%s", r.stdout)
	for _, want := range []string{
		bk + ": 2 backup(s), 1 problem(s). ls() lists them, help() shows the commands.",
		"disk.img.lz4: ok (64.0 MiB)",
		"old/disk.img.zst: FAILED: ",
		"READ\tnested\n",
		filepath.Join(out, "random.bin"),
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q", want)
		}
	}
	// The table: header and rows aligned, verification state shown after verify.
	header := regexp.MustCompile(`(?m)#  source +time +kind +level +size +verified +path$`)
	if len(header.FindAllString(r.stdout, -1)) != 2 {
		t.Errorf("expected two ls() tables:\n%s", r.stdout)
	}
	row := regexp.MustCompile(`(?m)^\d  ` + regexp.QuoteMeta(img) + ` +\d{4}-\d\d-\d\dT[0-9:]+Z  image  -  +64\.0 MiB  ok +disk\.img\.lz4$`)
	if !row.MatchString(r.stdout) {
		t.Errorf("no verified row for backup 1:\n%s", r.stdout)
	}
	if !regexp.MustCompile(`(?m)^\d  .*FAILED +old/disk\.img\.zst$`).MatchString(r.stdout) {
		t.Errorf("damaged backup not flagged in the table:\n%s", r.stdout)
	}
	if !strings.Contains(r.stdout, "broken.json  damaged catalogue entry") {
		t.Errorf("problems() output:\n%s", r.stdout)
	}
	if !strings.Contains(r.stderr, "verify: no backup #9 (ls() lists 1 to 2)") {
		t.Errorf("stderr: %s", r.stderr)
	}
	got, err := os.ReadFile(filepath.Join(out, "random.bin"))
	if err != nil || string(got) != string(random) {
		t.Errorf("extracted random.bin differs (%v)", err)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "sub/dir/notes.txt")); string(b) != "nested\n" {
		t.Errorf("extracted notes.txt: %q", b)
	}
	noLoopOrMountUnder(t, scratch)

	// The restore drill: the newest backup of the source is the damaged
	// one, so the drill fails and says which; without it, it passes and
	// looks inside the image.
	drill := filepath.Join(repoRoot(t), "scripts/restore-drill.lua")
	r = bkrunEnv(t, env, "", "-q", drill, bk, "--look")
	if r.code != 1 || !strings.Contains(r.stdout, "FAIL ") || !strings.Contains(r.stdout, "disk.img.zst: ") ||
		!strings.Contains(r.stderr, "1 of 1 source(s) cannot be restored from their newest backup") {
		t.Errorf("drill with a damaged newest backup: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	os.Remove(damaged)
	os.Remove(damaged + ".json")
	r = bkrunEnv(t, env, "", "-q", drill, bk, "--look")
	if r.code != 0 || !regexp.MustCompile(`ok +\S+disk\.img +\S+  \S+/disk\.img\.lz4: verified, \d+ names inside`).MatchString(r.stdout) {
		t.Errorf("drill: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := bkrun(t, "", "-q", drill, bk, "--source", "nothing-like-it"); r.code != 1 || !strings.Contains(r.stderr, "no backups of nothing-like-it in") {
		t.Errorf("drill with no matching source: %d %s", r.code, r.stderr)
	}
	noLoopOrMountUnder(t, scratch)

	// Usage and a missing directory.
	if r := bkrun(t, "", "recover"); r.code != 2 || !strings.Contains(r.stderr, "one backup directory expected") {
		t.Errorf("no DIR: %d %s", r.code, r.stderr)
	}
	if r := bkrun(t, "", "recover", "--help"); r.code != 0 || !strings.Contains(r.stdout, "Usage: bkrun recover DIR") {
		t.Errorf("--help: %d %s", r.code, r.stdout)
	}
	r = bkrun(t, "", "recover", filepath.Join(scratch, "nope"))
	if r.code != 1 || !strings.Contains(r.stderr, "catalog.scan: "+filepath.Join(scratch, "nope")+": no such file or directory") {
		t.Errorf("missing dir: %d %s", r.code, r.stderr)
	}
}
