package runtime

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const xenRecipe = `
description = [[Back up a Xen domU: pause, snapshot, dump.]]
args = {
  { name = "domain", help = "domU name, e.g. master" },
  { name = "vg", default = "VGatom", help = "volume group", positional = true },
  { name = "count", type = "integer", default = 3 },
  { name = "ratio", default = 0.5 },
  { name = "codec", choices = { "lz4", "zstd", "none" }, default = "lz4" },
  { name = "verify", type = "boolean", default = true },
  { name = "local", type = "list", help = "forward spec" },
}
local x = require "exec"
function run(a) end
`

func mustParse(t *testing.T, src string) *Recipe {
	t.Helper()
	r, err := ParseRecipe("x.lua", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRecipeMetadata(t *testing.T) {
	r := mustParse(t, xenRecipe)
	if !r.HasRun || !r.HasArgs || r.Description != "Back up a Xen domU: pause, snapshot, dump." {
		t.Fatalf("recipe = %+v", r)
	}
	if len(r.Args) != 7 || r.Args[0].Name != "domain" || !r.Args[0].Required || r.Args[1].Required {
		t.Fatalf("args = %+v", r.Args)
	}
	if r.Args[3].Type != "number" || r.Args[5].Type != "boolean" {
		t.Errorf("type inference: %+v", r.Args)
	}
	if len(r.Requires) != 1 || r.Requires[0].Name != "exec" || r.Requires[0].Line != 12 {
		t.Errorf("requires = %+v", r.Requires)
	}
}

func TestParseArgs(t *testing.T) {
	r := mustParse(t, xenRecipe)
	cases := []struct {
		argv []string
		want map[string]any
	}{
		{[]string{"master"}, map[string]any{"domain": "master", "vg": "VGatom", "count": int64(3), "verify": true, "codec": "lz4"}},
		{[]string{"master", "VGother", "--count", "7"}, map[string]any{"vg": "VGother", "count": int64(7)}},
		{[]string{"master", "VGother", "7"}, nil}, // count is an option, not a position
		{[]string{"--vg=X", "master", "--count", "9", "--no-verify"}, map[string]any{"domain": "master", "vg": "X", "count": int64(9), "verify": false}},
		{[]string{"--local", "a:1", "--local=b:2", "m"}, map[string]any{"local": []string{"a:1", "b:2"}}},
		{[]string{"--", "-odd-name"}, map[string]any{"domain": "-odd-name"}},
		{[]string{"--max-pause=1", "x"}, nil}, // unknown
	}
	for _, c := range cases {
		got, err := r.ParseArgs(c.argv)
		if c.want == nil {
			if err == nil {
				t.Errorf("%q accepted", c.argv)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", c.argv, err)
			continue
		}
		for k, v := range c.want {
			if !equalAny(got[k], v) {
				t.Errorf("%q: %s = %#v, want %#v", c.argv, k, got[k], v)
			}
		}
	}
}

func equalAny(a, b any) bool {
	as, ok1 := a.([]string)
	bs, ok2 := b.([]string)
	if ok1 || ok2 {
		return strings.Join(as, "\x00") == strings.Join(bs, "\x00")
	}
	return a == b
}

func TestParseArgsErrors(t *testing.T) {
	r := mustParse(t, xenRecipe)
	for argv, want := range map[string]string{
		"":                      "missing argument DOMAIN (domU name, e.g. master)",
		"m --count=abc":         `argument count: "abc" is not an integer`,
		"m --codec=gzip":        `argument codec: "gzip" is not one of lz4, zstd, none`,
		"m --bogus":             "unknown option --bogus",
		"m -x":                  "unknown option -x",
		"m v extra":             `unexpected argument "extra"`,
		"m --vg":                "option --vg needs a value",
		"m --verify=maybe":      `"maybe" is not a boolean`,
		"--domain a --domain b": "argument domain given twice",
	} {
		_, err := r.ParseArgs(strings.Fields(argv))
		var ue *UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want %q", argv, err, want)
		}
	}
	if _, err := r.ParseArgs([]string{"--help"}); !errors.Is(err, ErrHelp) {
		t.Errorf("--help: %v", err)
	}
}

func TestBadMetadata(t *testing.T) {
	for src, want := range map[string]string{
		`args = { { help = "x" } }`:                                  "args[1] needs a name",
		`args = { { name = "a", type = "nmber" } }`:                  `unknown type "nmber"`,
		`args = { { name = "a" }, { name = "a" } }`:                  `duplicate argument "a"`,
		`args = { { name = "n", type = "integer", default = "x" } }`: "default \"x\" is not an integer",
		`args = { { name = "a", hlep = "typo" } }`:                   `unknown field "hlep"`,
		`args = "domain"`:                                            "args must be a table",
		`description = 42`:                                           "description must be a string",
		`args = { { name = os.getenv("X") } }`:                       "must be plain values",
		`local d = "x"  description = d`:                             "must be plain values",
		"x = = 1":                                                    "x.lua:1: syntax error near '='",
		"function f()\n":                                             "x.lua: syntax error at end of file",
	} {
		_, err := ParseRecipe("x.lua", []byte(src))
		var ue *UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s\n  err = %v\n  want %q", src, err, want)
		}
	}
}

func TestRecipeHelp(t *testing.T) {
	var b bytes.Buffer
	mustParse(t, xenRecipe).WriteHelp(&b)
	out := b.String()
	for _, want := range []string{
		"Back up a Xen domU: pause, snapshot, dump.",
		"Usage: bkrun [--dry-run] [-v|-q] x.lua [options] DOMAIN [VG]",
		"--count COUNT         [integer; default: 3]",
		"DOMAIN                domU name, e.g. master [required]",
		`VG                    volume group [default: "VGatom"]`,
		"one of: lz4, zstd, none",
		"--local VALUE (repeatable)",
		"--[no-]verify",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("help lacks %q:\n%s", want, out)
		}
	}
}

func TestRunRecipePassesTypedArgs(t *testing.T) {
	var out bytes.Buffer
	h := New(Options{Stdout: &out})
	defer h.Close()
	r := mustParse(t, `
args = { { name = "n", type = "integer" }, { name = "v", type = "boolean" }, { name = "l", type = "list" } }
function run(a) print(type(a.n), a.n + 1, a.v, #a.l, a.l[1], bkrun.script, arg[1]) end`)
	if err := h.RunRecipe(r, []string{"41", "--v", "--l", "q"}); err != nil {
		t.Fatal(Describe(err, true))
	}
	if got := out.String(); got != "number\t42\ttrue\t1\tq\tx.lua\t41\n" {
		t.Errorf("output %q", got)
	}
}

func TestPlainScriptGetsArg(t *testing.T) {
	var out bytes.Buffer
	h := New(Options{Stdout: &out})
	defer h.Close()
	r := mustParse(t, `local a, b = ... print(arg[0], arg[1], a, b, #arg)`)
	if err := h.RunRecipe(r, []string{"one", "two"}); err != nil {
		t.Fatal(err)
	}
	if out.String() != "x.lua\tone\tone\ttwo\t2\n" {
		t.Errorf("output %q", out.String())
	}
}

func TestUnknownModuleIsUsageErrorAndNothingRuns(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")
	var out bytes.Buffer
	h := New(Options{Stdout: &out, ScriptDir: dir})
	defer h.Close()
	r := mustParse(t, "print('ran')\nlocal x = require 'nosuch'\n")
	err := h.RunRecipe(r, nil)
	var ue *UsageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), `x.lua:2: module "nosuch" not found`) {
		t.Fatalf("err = %v", err)
	}
	if out.Len() != 0 {
		t.Errorf("script ran: %q", out.String())
	}
	_ = marker
	// A library next to the script, or in its lib/, resolves.
	os.MkdirAll(filepath.Join(dir, "lib"), 0o755)
	os.WriteFile(filepath.Join(dir, "lib", "site.lua"), []byte("return { name = 'site' }"), 0o644)
	r = mustParse(t, "local s = require 'site' print(s.name)")
	if err := h.RunRecipe(r, nil); err != nil || out.String() != "site\n" {
		t.Errorf("require from lib/: %v %q", err, out.String())
	}
}

func TestCurrentDirectoryIsNotSearched(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "stray.lua"), []byte("return 1"), 0o644)
	wd, _ := os.Getwd()
	defer os.Chdir(wd)
	os.Chdir(dir)
	h := New(Options{})
	defer h.Close()
	if _, ok := h.FindLibrary("stray"); ok {
		t.Fatal("require found a library in the current directory")
	}
	if _, err := h.RunChunk(`require "stray"`, "-e", nil); err == nil {
		t.Fatal("require of a cwd file succeeded")
	}
}

func TestDeferRunsInReverseAndErrorsAreCollected(t *testing.T) {
	var out bytes.Buffer
	h := New(Options{Stdout: &out})
	defer h.Close()
	_, err := h.RunChunk(`
		defer(function() print("one") end)
		defer(function() error("undo failed") end)
		defer(function() print("three") end)
		error("main failed")`, "t.lua", nil)
	if err == nil || Describe(err, false) != "t.lua:5: main failed" {
		t.Fatalf("err = %v", err)
	}
	cerr := h.RunCleanup()
	if out.String() != "three\none\n" {
		t.Errorf("order %q", out.String())
	}
	if cerr == nil || !strings.Contains(cerr.Error(), `clean-up "defer at t.lua:3": t.lua:3: undo failed`) {
		t.Errorf("cleanup err = %v", cerr)
	}
	if ExitCodeOf(err, cerr, h.Cause()) != ExitError {
		t.Error("exit code")
	}
}

func TestUnsafeStdlibsAreDisabled(t *testing.T) {
	h := New(Options{})
	defer h.Close()
	for _, code := range []string{`os.execute("true")`, `io.popen("ls")`, `os.remove("/tmp/x")`} {
		_, err := h.RunChunk(code, "t", nil)
		if err == nil || !strings.Contains(err.Error(), "is disabled in bkrun; use") {
			t.Errorf("%s: %v", code, err)
		}
	}
	_, err := h.RunChunk(`assert(string.format and table.concat and math.floor and os.time and os.date and coroutine.wrap and debug.traceback)
		assert(debug.getupvalue == nil)`, "t", nil)
	if err != nil {
		t.Error(err)
	}
}

func TestRecipeUsageErrorFromLua(t *testing.T) {
	h := New(Options{})
	defer h.Close()
	r := mustParse(t, `args = { { name = "x", required = false } }
function run(a) if not a.x then bkrun.usage("missing argument X") end end`)
	err := h.RunRecipe(r, nil)
	var ue *UsageError
	if !errors.As(err, &ue) || err.Error() != "x.lua: missing argument X (see: bkrun help x.lua)" {
		t.Fatalf("err = %#v", err)
	}
	if ExitCodeOf(err, nil, nil) != ExitUsage {
		t.Error("exit code")
	}
}
