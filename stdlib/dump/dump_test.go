package dump_test

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bkrun/bkrun/internal/testenv"
	"github.com/bkrun/bkrun/runtime"
	"github.com/bkrun/bkrun/runtime/luatest"
	"github.com/bkrun/bkrun/stdlib/dump"
	bkexec "github.com/bkrun/bkrun/stdlib/exec"
)

func TestCommand(t *testing.T) {
	base := time.Date(2026, 11, 3, 4, 5, 6, 0, time.Local)
	for _, tc := range []struct {
		level int
		base  time.Time
		want  string
	}{
		{0, time.Time{}, "dump -0 -q -f - /dev/loop3"},
		{0, base, "dump -0 -q -f - /dev/loop3"}, // a full dump has no base
		{4, base, "dump -4 -q -f - -T Tue Nov  3 04:05:06 2026 /dev/loop3"},
	} {
		if got := strings.Join(dump.Command("/dev/loop3", tc.level, tc.base), " "); got != tc.want {
			t.Errorf("Command(%d, %v) = %q, want %q", tc.level, tc.base, got, tc.want)
		}
	}
}

func header(level int, date, base int32) []byte {
	rec := make([]byte, dump.HeaderSize)
	le := binary.LittleEndian
	le.PutUint32(rec[4:], uint32(date))
	le.PutUint32(rec[8:], uint32(base))
	le.PutUint32(rec[24:], 60012)
	le.PutUint32(rec[692:], uint32(level))
	return rec
}

func TestParseHeader(t *testing.T) {
	h, err := dump.ParseHeader("x", header(3, 1800000000, 1799990000))
	if err != nil || h.Level != 3 || h.Date.Unix() != 1800000000 || h.Base.Unix() != 1799990000 {
		t.Errorf("%+v %v", h, err)
	}
	if h, _ := dump.ParseHeader("x", header(0, 1800000000, 0)); !h.Base.IsZero() {
		t.Errorf("full dump has base %v", h.Base)
	}
	if _, err := dump.ParseHeader("x.dump", make([]byte, 100)); err == nil || err.Error() != "x.dump: not a dump archive: 100 bytes, shorter than a header record" {
		t.Errorf("short: %v", err)
	}
	if _, err := dump.ParseHeader("x.dump", make([]byte, 2048)); err == nil || !strings.Contains(err.Error(), "x.dump: not a dump archive (magic 0") {
		t.Errorf("bad magic: %v", err)
	}
	// The source keeps the first record however the reads are cut.
	src := dump.NewSource(io.MultiReader(bytes.NewReader(header(2, 1800000000, 1700000000)[:10]),
		bytes.NewReader(header(2, 1800000000, 1700000000)[10:]), strings.NewReader("rest of the archive")), "dump -2")
	if _, err := src.Header(); err == nil {
		t.Error("header before anything was read")
	}
	if n, _ := io.Copy(io.Discard, src); n != dump.HeaderSize+19 {
		t.Errorf("passed %d bytes", n)
	}
	if h, err := src.Header(); err != nil || h.Level != 2 || h.Date.Unix() != 1800000000 {
		t.Errorf("%+v %v", h, err)
	}
}

// The point of the package: an incremental taken with the date read from
// the level 0's own header restores on top of it with restore -r.
func TestChainFromHeaderDatesRestores(t *testing.T) {
	testenv.NeedRoot(t)
	for _, c := range []string{"dump", "restore", "mkfs.ext4", "losetup", "mount"} {
		testenv.NeedCommand(t, c)
	}
	dir, err := os.MkdirTemp("/var/tmp", "bkrun-dump-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	img := filepath.Join(dir, "fs.img")
	os.WriteFile(img, nil, 0o644)
	os.Truncate(img, 16<<20)
	run("mkfs.ext4", "-q", img)
	dev := run("losetup", "--find", "--show", img)
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	write := func(name, data string) {
		run("mount", dev, mnt)
		defer run("umount", mnt)
		if err := os.WriteFile(filepath.Join(mnt, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	take := func(level int, base time.Time, out string) dump.Header {
		t.Helper()
		argv := dump.Command(dev, level, base)
		r, err := bkexec.Stream(t.Context(), bkexec.Cmd{Argv: argv})
		if err != nil {
			t.Fatal(err)
		}
		src := dump.NewSource(r, bkexec.Quote(argv))
		f, _ := os.Create(out)
		if _, err := io.Copy(f, src); err != nil {
			t.Fatalf("%s: %v", src.Path(), err)
		}
		f.Close()
		h, err := src.Header()
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	write("a.txt", "first\n")
	before := time.Now().Add(-time.Second)
	h0 := take(0, time.Time{}, filepath.Join(dir, "d0"))
	if h0.Level != 0 || h0.Date.Before(before.Truncate(time.Second)) || h0.Date.After(time.Now()) || !h0.Base.IsZero() {
		t.Fatalf("level 0 header %+v", h0)
	}
	time.Sleep(1100 * time.Millisecond) // a changed file must be newer than the base, to the second
	write("b.txt", "second\n")
	h1 := take(3, h0.Date, filepath.Join(dir, "d1"))
	if h1.Level != 3 || !h1.Base.Equal(h0.Date) {
		t.Fatalf("incremental header %+v, level 0 dated %v", h1, h0.Date)
	}
	target := filepath.Join(dir, "restored")
	os.Mkdir(target, 0o755)
	for _, d := range []string{"d0", "d1"} {
		cmd := exec.Command("restore", "-r", "-f", filepath.Join(dir, d))
		cmd.Dir = target
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("restore -r %s: %v\n%s", d, err, out)
		}
	}
	for name, want := range map[string]string{"a.txt": "first\n", "b.txt": "second\n"} {
		if b, err := os.ReadFile(filepath.Join(target, name)); err != nil || string(b) != want {
			t.Errorf("%s: %q %v", name, b, err)
		}
	}
}

func TestLua(t *testing.T) {
	var out bytes.Buffer
	h := runtime.New(runtime.Options{Modules: []*runtime.Module{dump.Module}, DryRun: true, Stdout: &out})
	defer h.Close()
	vals, err := h.RunChunk(`local dump = require "dump"
		local s = dump.stream("/dev/loop7", {level = 2, base = 1800000000})
		assert(s.date == nil and s.level == nil)
		return s.command, tostring(s)`, "t", nil)
	if err != nil {
		t.Fatal(runtime.Describe(err, true))
	}
	if !strings.HasPrefix(vals[0].String(), "dump -2 -q -f - -T ") || !strings.HasSuffix(vals[0].String(), " /dev/loop7") {
		t.Errorf("command %s", vals[0])
	}
	if !strings.HasPrefix(out.String(), "[dry-run] exec: dump -2 -q -f - -T ") {
		t.Errorf("dry-run output %q", out.String())
	}
	lh := luatest.NewHost(t, luatest.HostOptions{Prelude: `local dump = require "dump"; `}, dump.Module)
	for src, want := range map[string]string{
		`dump.stream(5)`:                      "bad argument #1 to 'dump.stream'",
		`dump.stream("/dev/x", {level = 10})`: "a dump level is 0 to 9",
		`dump.stream("/dev/x", {level = 3})`:  "an incremental (level > 0) needs the date",
		`dump.stream("/dev/x", {levle = 0})`:  "levle",
		`dump.stream("/nonexistent/dev")`:     "dump.stream: stat /nonexistent/dev: no such file or directory",
	} {
		if got := lh.RunErr(t, src); !strings.Contains(got, want) {
			t.Errorf("%s: %q, want %q", src, got, want)
		}
	}
}
