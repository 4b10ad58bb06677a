package runtime

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chzyer/readline"
	"github.com/creack/pty"
	lua "github.com/yuin/gopher-lua"
)

// ctrlC in a script stands for Ctrl-C pressed at the prompt.
const ctrlC = "\x03"

// scriptedReader is a lineReader that hands out prepared lines, then
// io.EOF for ever (a second Ctrl-D, as a user would press).
type scriptedReader struct {
	mu      sync.Mutex
	lines   []string
	prompts []string
	// handed, when set, hears of each line as it is returned.
	handed func(string)
}

func (r *scriptedReader) Readline() (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.lines) == 0 {
		return "", io.EOF
	}
	l := r.lines[0]
	r.lines = r.lines[1:]
	if r.handed != nil {
		r.handed(l)
	}
	if l == ctrlC {
		return "", readline.ErrInterrupt
	}
	return l, nil
}

func (r *scriptedReader) SetPrompt(p string) {
	r.mu.Lock()
	r.prompts = append(r.prompts, p)
	r.mu.Unlock()
}

func (r *scriptedReader) Close() error { return nil }

// lockedBuffer is written by the goroutine running the loop and read by
// the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

type replRun struct {
	h              *Host
	in             *scriptedReader
	stdout, stderr lockedBuffer
}

func newREPLRun(t *testing.T, mods ...*Module) *replRun {
	t.Helper()
	r := &replRun{in: &scriptedReader{}}
	r.h = New(Options{Interactive: true, Modules: mods, Stdout: &r.stdout, Stderr: &r.stderr})
	t.Cleanup(r.h.Close)
	return r
}

// run feeds lines to the loop and waits for it to end, failing rather
// than hanging when it does not.
func (r *replRun) run(t *testing.T, lines ...string) {
	t.Helper()
	r.in.lines = lines
	done := make(chan error, 1)
	loop := &replLoop{h: r.h, in: r.in, stdout: &r.stdout, stderr: &r.stderr}
	go func() { done <- loop.run() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("repl: %v", err)
		}
	case <-time.After(10 * time.Second):
		// Stop the loop before the test's clean-up closes the state
		// under it.
		r.h.Cancel(errors.New("test timed out"))
		select {
		case <-done:
		case <-time.After(2 * time.Second):
		}
		t.Fatalf("repl did not finish; stdout so far:\n%s\nstderr:\n%s", r.stdout.String(), r.stderr.String())
	}
}

func TestREPLPrintsExpressions(t *testing.T) {
	r := newREPLRun(t)
	r.run(t,
		"1+1",
		"x = 10", // a statement prints nothing
		"x*2",
		`"hi" .. "!"`, // a string result is shown as it is
		"nil",         // an explicit value, even nil, is shown
		`1, "a", nil`, // several values, tab-separated
		"print('from print')",
		"",   // empty lines are skipped
		"  ", // so are blank ones
		"-- only a comment",
	)
	want := "2\n20\nhi!\nnil\n1\ta\tnil\nfrom print\n"
	if got := r.stdout.String(); got != want {
		t.Errorf("stdout:\n%q\nwant\n%q", got, want)
	}
	if s := r.stderr.String(); s != "" {
		t.Errorf("stderr: %q", s)
	}
}

func TestREPLMultiLine(t *testing.T) {
	r := newREPLRun(t)
	r.run(t,
		"function double(a)",
		"  local b = a * 2",
		"  return b",
		"end",
		"double(21)",
		// an expression may span lines too
		"{1,",
		" 2}",
		// and a long string
		"s = [[one",
		"two]]",
		"s",
	)
	want := "42\n{ 1, 2 }\none\ntwo\n"
	if got := r.stdout.String(); got != want {
		t.Errorf("stdout:\n%q\nwant\n%q", got, want)
	}
	wantPrompts := []string{promptMain, promptCont, promptCont, promptCont, promptMain, promptMain, promptCont, promptMain, promptCont, promptMain, promptMain}
	if strings.Join(r.in.prompts, "|") != strings.Join(wantPrompts, "|") {
		t.Errorf("prompts:\n%q\nwant\n%q", r.in.prompts, wantPrompts)
	}
	if s := r.stderr.String(); s != "" {
		t.Errorf("stderr: %q", s)
	}
}

func TestREPLErrorsDoNotEndTheSession(t *testing.T) {
	r := newREPLRun(t)
	r.run(t,
		"x = = 1",           // syntax error
		`s = "unterminated`, // an unfinished short string is an error, not more input
		"error('boom')",     // runtime error
		"nosuch.field = 1",  // runtime error from the VM
		"os.execute('ls')",  // a disabled function's error
		"y = 5",             // the session goes on
		"y + 1",
	)
	if got := r.stdout.String(); got != "6\n" {
		t.Errorf("stdout: %q", got)
	}
	errs := strings.Split(strings.TrimSuffix(r.stderr.String(), "\n"), "\n")
	wants := []string{
		`^error: stdin:1: syntax error near '=': `,
		`^error: stdin: syntax error at end of file: unterminated string`,
		`^error: stdin:1: boom$`,
		`^error: stdin:1: attempt to index a non-table object\(nil\)`,
		`^error: stdin:1: os\.execute is disabled in bkrun; use exec\.run`,
	}
	if len(errs) != len(wants) {
		t.Fatalf("stderr:\n%s", r.stderr.String())
	}
	for i, w := range wants {
		if !regexp.MustCompile(w).MatchString(errs[i]) {
			t.Errorf("error %d: %q does not match %s", i, errs[i], w)
		}
	}
}

func TestREPLTables(t *testing.T) {
	r := newREPLRun(t)
	r.run(t,
		`local t = {1,2,a="b"} return t`,
		// a local lives for its own line, as in any Lua REPL
		`t`,
		`t = {1, 2, a = "b", n = {x = 1}}`,
		`t`,
		`t.n, #t`,
	)
	want := "{ 1, 2, a = \"b\" }\nnil\n{ 1, 2, a = \"b\", n = { x = 1 } }\n{ x = 1 }\t2\n"
	if got := r.stdout.String(); got != want {
		t.Errorf("stdout:\n%q\nwant\n%q", got, want)
	}
}

func TestREPLCtrlCAndCtrlD(t *testing.T) {
	r := newREPLRun(t)
	r.run(t,
		"function g()",
		ctrlC, // abandons the unfinished definition
		"g",
		"function h()",
		// the script ends here: the first EOF reports the unfinished
		// chunk, the second ends the loop
	)
	if got := r.stdout.String(); got != "nil\n" {
		t.Errorf("stdout: %q", got)
	}
	if got := r.stderr.String(); !strings.HasPrefix(got, "error: stdin: syntax error at end of file") || strings.Count(got, "\n") != 1 {
		t.Errorf("stderr: %q", got)
	}
}

// Ctrl-C while a statement runs stops that statement only.
func TestREPLInterruptStopsTheStatement(t *testing.T) {
	r := newREPLRun(t)
	started := make(chan struct{})
	r.in.handed = func(l string) {
		if strings.HasPrefix(l, "while true do") {
			close(started)
		}
	}
	go func() {
		<-started
		time.Sleep(100 * time.Millisecond)
		// Interrupt reports false until the statement is under way.
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if r.h.Interrupt(errors.New("test interrupt")) {
				return
			}
		}
	}()
	r.run(t, "n = 1", "while true do n = n + 1 end", "n > 1", "'still here'")
	r.in.handed = nil
	if got := r.stderr.String(); got != "interrupted\n" {
		t.Errorf("stderr: %q", got)
	}
	if got := r.stdout.String(); got != "true\nstill here\n" {
		t.Errorf("stdout: %q", got)
	}
	if r.h.Cause() != nil {
		t.Errorf("the run was cancelled: %v", r.h.Cause())
	}
}

// A cancelled run (SIGTERM) ends the loop; the caller reports the cause.
func TestREPLEndsWhenTheRunIsCancelled(t *testing.T) {
	r := newREPLRun(t)
	r.in.handed = func(l string) {
		if l == "x = 1" {
			r.h.Cancel(errors.New("terminated"))
		}
	}
	r.run(t, "x = 1", "print('not run')")
	if got := r.stdout.String(); got != "" {
		t.Errorf("stdout: %q", got)
	}
}

// fakeModule stands in for a stdlib module (runtime must not import
// stdlib); opens counts how often its table was built.
func fakeModule(opens *int) *Module {
	return &Module{
		Name:    "fakemod",
		Summary: "a module for tests",
		Open: func(h *Host, L *lua.LState) *lua.LTable {
			*opens++
			noop := func(L *lua.LState) int { return 0 }
			t := Table(L, map[string]lua.LGFunction{"output": noop, "outline": noop, "run": noop})
			L.SetField(t, "VERSION", lua.LString("1"))
			L.SetField(t, "_private", lua.LTrue)
			return t
		},
	}
}

func TestCompletionOfGlobals(t *testing.T) {
	opens := 0
	r := newREPLRun(t, fakeModule(&opens))
	r.run(t,
		`printer = 1`,
		`watched = setmetatable({}, {__index = function() touched = true end})`,
	)
	h := r.h
	for _, c := range []struct {
		chain, prefix string
		want          []string
	}{
		{"pri", "pri", []string{"print", "printer"}},
		{"fak", "fak", []string{"fakemod"}}, // a native module, not loaded yet
		{"whi", "whi", []string{"while"}},   // keywords complete too
		{"zzz", "zzz", nil},
	} {
		prefix, got := h.completions(c.chain)
		if prefix != c.prefix || strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Errorf("completions(%q) = %q, %q; want %q, %q", c.chain, prefix, got, c.prefix, c.want)
		}
	}
	has := func(list []string, name string) bool {
		for _, n := range list {
			if n == name {
				return true
			}
		}
		return false
	}
	// Names starting with _ only when asked for.
	if _, us := h.completions("_"); !has(us, "_G") || !has(us, "_VERSION") || has(us, "print") {
		t.Errorf("completions(\"_\") = %q", us)
	}
	// With nothing typed: every global, but not the _ ones or keywords.
	if _, all := h.completions(""); !has(all, "print") || !has(all, "fakemod") || has(all, "_G") || has(all, "while") {
		t.Errorf("completions(\"\") = %q", all)
	}
	if opens != 0 {
		t.Errorf("completing a global name loaded the module %d times", opens)
	}
}

func TestCompletionOfFields(t *testing.T) {
	opens := 0
	r := newREPLRun(t, fakeModule(&opens))
	r.run(t,
		`class = {greet = function() end, kind = "k"}`,
		`obj = setmetatable({name = "n"}, {__index = class})`,
		`watched = setmetatable({}, {__index = function() touched = true end})`,
	)
	h := r.h
	for _, c := range []struct {
		chain, prefix string
		want          []string
	}{
		{"fakemod.ou", "ou", []string{"outline", "output"}},
		{"fakemod.", "", []string{"VERSION", "outline", "output", "run"}},
		{"fakemod._", "_", []string{"_private"}},
		{"fakemod:", "", []string{"outline", "output", "run"}}, // methods: functions only
		{"string.up", "up", []string{"upper"}},
		{"obj.", "", []string{"greet", "kind", "name"}}, // through __index tables
		{"obj:", "", []string{"greet"}},
		{"watched.x", "x", nil}, // an __index function is not called
		{"nosuch.x", "x", nil},
		{"fakemod.run.x", "x", nil},
		{"a..b", "b", nil},
		{"1.5", "5", nil},
	} {
		prefix, got := h.completions(c.chain)
		if prefix != c.prefix || strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Errorf("completions(%q) = %q, %q; want %q, %q", c.chain, prefix, got, c.prefix, c.want)
		}
	}
	if opens != 1 {
		t.Errorf("module opened %d times, want once", opens)
	}
	if h.L.GetGlobal("touched") != lua.LNil {
		t.Errorf("completion ran an __index function")
	}
	// The module completion loaded is the one the REPL then uses.
	r.in.prompts = nil
	r.run(t, "fakemod.VERSION")
	if !strings.HasSuffix(r.stdout.String(), "1\n") || opens != 1 {
		t.Errorf("after completion: stdout %q, opens %d", r.stdout.String(), opens)
	}
}

// Do is what readline calls: suffixes to insert, and how much of the line
// they replace.
func TestCompleterDo(t *testing.T) {
	opens := 0
	r := newREPLRun(t, fakeModule(&opens))
	c := &completer{h: r.h, strings: func() []string {
		return []string{"master/1.1101.dump.lz4", "master/1.1105.dump.lz4"}
	}}
	for _, tc := range []struct {
		line string
		pos  int // -1: end of line
		want []string
		n    int
	}{
		{"x = fakemod.ou", -1, []string{"tline", "tput"}, 2},
		{"fakemod.ou + 1", len("fakemod.ou"), []string{"tline", "tput"}, 2},
		{"print(tostr", -1, []string{"ing"}, 5},
		{`print("fakemod.ou`, -1, nil, 10}, // inside a string: no session string matches
		{`print("a", fakemod.ru`, -1, []string{"n"}, 2},
		{`verify("master/1.11`, -1, []string{"01.dump.lz4", "05.dump.lz4"}, 11}, // session strings
		{`verify('ma`, -1, []string{"ster/1.1101.dump.lz4", "ster/1.1105.dump.lz4"}, 2},
		{`verify("master/1.1101.dump.lz4`, -1, nil, 22},
	} {
		line := []rune(tc.line)
		pos := tc.pos
		if pos < 0 {
			pos = len(line)
		}
		got, n := c.Do(line, pos)
		var gs []string
		for _, g := range got {
			gs = append(gs, string(g))
		}
		if strings.Join(gs, ",") != strings.Join(tc.want, ",") || n != tc.n {
			t.Errorf("Do(%q, %d) = %q, %d; want %q, %d", tc.line, pos, gs, n, tc.want, tc.n)
		}
	}
}

// The real thing: the bkrun binary on a pseudo-terminal, typed at.
func TestREPLOnTerminal(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the bkrun binary")
	}
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(gomod)) == "" {
		t.Fatalf("finding the module root: %v", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "bkrun")
	build := exec.Command("go", "build", "-o", bin, "./cmd/bkrun")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	home := filepath.Join(tmp, "home")
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "HOME="+home, "TERM=xterm")
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 40, Cols: 120})
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	defer ptmx.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer cmd.Process.Kill()

	var out lockedBuffer
	go io.Copy(&out, ptmx)
	seen := 0 // output before this offset has been matched already
	// waitFor looks for what in the output not yet matched.
	waitFor := func(what string, d time.Duration) bool {
		for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			s := out.String()
			if i := strings.Index(s[seen:], what); i >= 0 {
				seen += i + len(what)
				return true
			}
		}
		return false
	}
	expect := func(what string) {
		t.Helper()
		if !waitFor(what, 10*time.Second) {
			t.Fatalf("waiting for %q; output after the last match:\n%q", what, out.String()[seen:])
		}
	}
	typeLine := func(s string) {
		t.Helper()
		expect(promptMain)
		if _, err := ptmx.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}

	// Results are written in cooked mode, so their newline reaches us as
	// \r\n; the echo of what was typed comes before them.
	typeLine("1+1\r")
	expect("\n2\r\n")
	typeLine("function f()\r")
	expect(promptCont)
	if _, err := ptmx.Write([]byte("return 41+1\r")); err != nil {
		t.Fatal(err)
	}
	expect(promptCont)
	if _, err := ptmx.Write([]byte("end\r")); err != nil {
		t.Fatal(err)
	}
	typeLine("f()\r")
	expect("\n42\r\n")

	// Ctrl-C during a statement is a SIGINT from the terminal: it stops
	// the loop, and the REPL carries on. The first ^C may reach the
	// terminal before readline has left raw mode (then it is read as a
	// key at the next prompt), so it is repeated until it lands.
	typeLine("while true do end\r")
	expect("while true do end")
	// The message comes on its own line, not after the echoed ^C.
	landed := false
	for i := 0; i < 10 && !landed; i++ {
		time.Sleep(200 * time.Millisecond)
		ptmx.Write([]byte(ctrlC))
		landed = waitFor("^C\r\ninterrupted\r\n", 500*time.Millisecond)
	}
	if !landed {
		t.Fatalf("no interrupted after Ctrl-C; output after the last match:\n%q", out.String()[seen:])
	}
	typeLine("'after'\r")
	expect("\nafter\r\n")

	// Tab completes a global, then a field of it.
	typeLine("stri\t.up\t('x')\r")
	expect("string.upper('x')")
	expect("\nX\r\n")

	typeLine("\x04") // Ctrl-D on an empty line leaves
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("bkrun exited with %v; output:\n%q", err, out.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("bkrun did not exit after Ctrl-D; output:\n%q", out.String())
	}

	histPath := filepath.Join(home, ".local", "state", "bkrun", "history")
	hist, err := os.ReadFile(histPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"1+1", "function f()", "return 41+1", "end", "f()", "'after'", "string.upper('x')"} {
		if !strings.Contains("\n"+string(hist), "\n"+l+"\n") {
			t.Errorf("history lacks %q:\n%s", l, hist)
		}
	}
	if st, err := os.Stat(histPath); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("history file mode: %v, %v", st.Mode(), err)
	}
	if st, err := os.Stat(filepath.Dir(histPath)); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("history directory mode: %v, %v", st.Mode(), err)
	}
}

// Input that is not a terminal gets the same loop without line editing:
// prompts are printed, lines read as they come.
func TestREPLWithoutTerminal(t *testing.T) {
	h := New(Options{Interactive: true})
	defer h.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	go func() {
		io.WriteString(pw, "1+1\nfunction f()\nreturn 3\nend\nf()\nerror('x')\n'last line, no newline'")
		pw.Close()
	}()
	var stdout, stderr lockedBuffer
	done := make(chan error, 1)
	go func() {
		done <- h.REPL(REPLConfig{Stdin: pr, Stdout: &stdout, Stderr: &stderr, HistoryFile: filepath.Join(t.TempDir(), "unused")})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("REPL did not return at end of input")
	}
	want := "bkrun> 2\nbkrun>     >>     >> bkrun> 3\nbkrun> bkrun> last line, no newline\nbkrun> "
	if got := stdout.String(); got != want {
		t.Errorf("stdout:\n%q\nwant\n%q", got, want)
	}
	if got := stderr.String(); got != "error: stdin:1: x\n" {
		t.Errorf("stderr: %q", got)
	}
}

// A run cancelled while the REPL waits at the prompt (SIGTERM) ends the
// wait at once, so that the clean-up stack runs without more input.
func TestREPLCancelledAtThePrompt(t *testing.T) {
	h := New(Options{Interactive: true})
	defer h.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	done := make(chan error, 1)
	go func() { done <- h.REPL(REPLConfig{Stdin: pr, Stdout: io.Discard, Stderr: io.Discard}) }()
	time.Sleep(100 * time.Millisecond)
	h.Cancel(errors.New("terminated"))
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("REPL kept waiting for input after the run was cancelled")
	}
}
