package runtime

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/chzyer/readline"
	lua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/parse"
	"golang.org/x/term"
)

// REPLConfig configures the interactive loop.
type REPLConfig struct {
	// HistoryFile keeps entered lines across sessions; "" keeps none.
	HistoryFile string
	// Stdin is read for input; line editing is used when it is a terminal.
	// Nil means os.Stdin.
	Stdin *os.File
	// Stdout receives prompts and results, Stderr errors. Nil means the
	// host's writers.
	Stdout io.Writer
	Stderr io.Writer
	// Verbose adds the Lua traceback to errors.
	Verbose bool
	// Banner is printed before the first prompt (after the version line
	// on a terminal): what a specialised session such as bkrun recover
	// has loaded and how to use it.
	Banner string
	// Strings, when set, completes inside a string literal: it returns
	// the candidates (such as the paths of a catalogue's backups) and the
	// completer keeps those that start with what is typed.
	Strings func() []string
}

const (
	promptMain = "bkrun> "
	promptCont = "    >> "
	// chunkName is what errors call the entered code: "stdin:1: ...", as
	// the reference Lua REPL does.
	chunkName = "stdin"
)

// lineReader is what the loop needs from line input. readline provides it
// on a terminal; tests script it.
//
// Readline returns readline.ErrInterrupt when Ctrl-C is pressed at the
// prompt and io.EOF when input ends (Ctrl-D on an empty line, or Close).
type lineReader interface {
	Readline() (string, error)
	SetPrompt(string)
	Close() error
}

// REPL reads Lua from cfg.Stdin and runs it statement by statement until
// end of input. Expressions print their values; errors are printed and the
// loop goes on; Ctrl-C stops the running statement, not the session. It
// returns nil at end of input or when the run is cancelled (SIGTERM); the
// caller runs the clean-up stack as after a recipe.
func (h *Host) REPL(cfg REPLConfig) error {
	if cfg.Stdin == nil {
		cfg.Stdin = os.Stdin
	}
	if cfg.Stdout == nil {
		cfg.Stdout = h.opts.Stdout
	}
	if cfg.Stderr == nil {
		cfg.Stderr = h.opts.Stderr
	}
	loop := &replLoop{h: h, stdout: cfg.Stdout, stderr: cfg.Stderr, verbose: cfg.Verbose}
	if term.IsTerminal(int(cfg.Stdin.Fd())) {
		r, err := newReadlineReader(cfg, &completer{h: h, strings: cfg.Strings})
		if err != nil {
			return fmt.Errorf("repl: %w", err)
		}
		loop.in, loop.tty = r, true
		fmt.Fprintf(cfg.Stdout, "bkrun %s (Lua 5.1). Ctrl-D leaves, Ctrl-C stops a statement, Tab completes.\n", Version)
	} else {
		loop.in = newPlainReader(cfg.Stdin, cfg.Stdout)
	}
	if cfg.Banner != "" {
		fmt.Fprint(cfg.Stdout, strings.TrimRight(cfg.Banner, "\n")+"\n")
	}
	defer loop.in.Close()
	// A SIGTERM cancels the run; if it comes while we wait at the prompt,
	// closing the reader ends the wait so that clean-up can run now rather
	// than after the next line is typed.
	stop := context.AfterFunc(h.Context(), func() { loop.in.Close() })
	defer stop()
	return loop.run()
}

// replLoop is the loop itself, independent of the terminal.
type replLoop struct {
	h              *Host
	in             lineReader
	stdout, stderr io.Writer
	verbose        bool
	// tty is set on a terminal, which echoes a Ctrl-C typed while a
	// statement runs as ^C without a newline.
	tty bool
}

func (r *replLoop) run() error {
	h, in, stderr := r.h, r.in, r.stderr
	// pending holds the lines of a chunk that does not parse yet because
	// it is unfinished (an open function, table or long string).
	var pending []string
	for {
		if h.Cause() != nil {
			return nil
		}
		if len(pending) == 0 {
			in.SetPrompt(promptMain)
		} else {
			in.SetPrompt(promptCont)
		}
		line, err := in.Readline()
		switch {
		case errors.Is(err, readline.ErrInterrupt):
			// Ctrl-C at the prompt abandons what was typed, including
			// the earlier lines of an unfinished chunk.
			pending = nil
			continue
		case errors.Is(err, io.EOF):
			if len(pending) == 0 || h.Cause() != nil {
				return nil
			}
			// End of input inside a chunk: say what is unfinished, as
			// lua.c does, and drop it; a second Ctrl-D leaves.
			_, _, cerr := h.compileInput(strings.Join(pending, "\n"))
			fmt.Fprintf(stderr, "error: %s\n", Describe(cerr, false))
			pending = nil
			continue
		case err != nil:
			return fmt.Errorf("repl: reading input: %w", err)
		}
		if h.Cause() != nil {
			// Cancelled while the line was being typed: run nothing more.
			return nil
		}
		if len(pending) == 0 && strings.TrimSpace(line) == "" {
			continue
		}
		pending = append(pending, line)
		fn, incomplete, cerr := h.compileInput(strings.Join(pending, "\n"))
		if incomplete {
			continue
		}
		pending = nil
		if cerr != nil {
			fmt.Fprintf(stderr, "error: %s\n", Describe(cerr, false))
			continue
		}
		r.evalPrint(fn)
	}
}

// compileInput compiles entered code the way Lua 5.3's REPL does: first as
// "return <code>", so that an expression shows its value, then as a
// statement. It reports incomplete when the code could become valid with
// more lines, which is when either form fails at end of input: that also
// lets an expression such as a table constructor span lines.
func (h *Host) compileInput(src string) (fn *lua.LFunction, incomplete bool, err error) {
	fn, rerr := h.L.Load(strings.NewReader("return "+src), chunkName)
	if rerr == nil {
		return fn, false, nil
	}
	fn, err = h.L.Load(strings.NewReader(src), chunkName)
	if err == nil {
		return fn, false, nil
	}
	return nil, unfinished(err, src) || unfinished(rerr, src), toScriptError(err)
}

// unfinished reports a parse error that more input could fix: one at end
// of input (an open block, an expression cut short, an unterminated long
// string or comment). A short string runs to the end of the line, so an
// unterminated one is an error, unless its line ends in a backslash,
// which continues it on the next.
func unfinished(err error, src string) bool {
	var ae *lua.ApiError
	if !errors.As(err, &ae) {
		return false
	}
	var pe *parse.Error
	if !errors.As(ae.Cause, &pe) || pe.Pos.Line != parse.EOF {
		return false
	}
	return pe.Message != "unterminated string" || strings.HasSuffix(src, "\\")
}

// evalPrint runs one compiled statement under Interruptible and prints its
// values or its error.
func (r *replLoop) evalPrint(fn *lua.LFunction) {
	h := r.h
	var out string
	var n int
	interrupted := false
	err := h.Interruptible(func() error {
		vals, err := h.CallLua(fn, lua.MultRet)
		if err != nil {
			// Asked here, while the statement's context is still its
			// own: Interruptible cancels it on the way out.
			interrupted = h.Context().Err() != nil
			return err
		}
		// Formatting may run __tostring metamethods: they are Lua code
		// too, and Ctrl-C must be able to stop them.
		n = len(vals)
		out = h.FormatValues(vals)
		return nil
	})
	switch {
	case err == nil:
		if n > 0 {
			fmt.Fprintln(r.stdout, out)
		}
	case h.Cause() != nil:
		// The whole run was cancelled (SIGTERM): the loop ends and the
		// caller reports the cause once.
	case interrupted && r.tty:
		fmt.Fprintln(r.stderr, "\ninterrupted")
	case interrupted:
		fmt.Fprintln(r.stderr, "interrupted")
	default:
		fmt.Fprintf(r.stderr, "error: %s\n", Describe(err, r.verbose))
	}
}

// readlineReader is the terminal lineReader: line editing, history and
// completion from github.com/chzyer/readline.
type readlineReader struct {
	rl    *readline.Instance
	stdin *readline.CancelableStdin
	once  sync.Once
}

func newReadlineReader(cfg REPLConfig, ac readline.AutoCompleter) (*readlineReader, error) {
	hist := cfg.HistoryFile
	if hist != "" {
		if err := prepareHistory(hist); err != nil {
			// History is a convenience; a read-only home must not keep
			// an operator out of the recovery shell.
			fmt.Fprintf(cfg.Stderr, "bkrun: history not kept: %v\n", err)
			hist = ""
		}
	}
	fd := int(cfg.Stdin.Fd())
	// Cancelable, so that Close ends a read in progress; and our own, so
	// that closing it never closes the caller's file.
	stdin := readline.NewCancelableStdin(cfg.Stdin)
	var raw *readline.State
	rl, err := readline.NewEx(&readline.Config{
		Prompt:            promptMain,
		HistoryFile:       hist,
		HistoryLimit:      1000,
		HistorySearchFold: true,
		AutoComplete:      ac,
		Stdin:             stdin,
		Stdout:            cfg.Stdout,
		Stderr:            cfg.Stderr,
		// readline's defaults look at fd 0 and 1; use the file we were
		// given.
		FuncIsTerminal: func() bool { return term.IsTerminal(fd) },
		FuncMakeRaw: func() (err error) {
			raw, err = readline.MakeRaw(fd)
			return err
		},
		FuncExitRaw: func() error {
			if raw == nil {
				return nil
			}
			return readline.Restore(fd, raw)
		},
		FuncGetWidth: func() int {
			if w, _, err := term.GetSize(fd); err == nil && w > 0 {
				return w
			}
			return 80
		},
	})
	if err != nil {
		stdin.Close()
		return nil, err
	}
	if hist != "" {
		// readline rewrites an over-long history through a temporary
		// file created 0666; the history can hold passwords typed into
		// commands, so keep it private whatever happened on open.
		os.Chmod(hist, 0o600)
	}
	return &readlineReader{rl: rl, stdin: stdin}, nil
}

// prepareHistory makes the history directory (0700) and file (0600)
// before readline opens it, since readline would create the file 0666.
func prepareHistory(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}

func (r *readlineReader) Readline() (string, error) { return r.rl.Readline() }
func (r *readlineReader) SetPrompt(p string)        { r.rl.SetPrompt(p) }

// Close may be called twice (SIGTERM and the deferred close) and from
// another goroutine while Readline waits; readline's Close is not
// idempotent in every part, hence the Once.
func (r *readlineReader) Close() error {
	var err error
	r.once.Do(func() {
		// Unblock the terminal's reader first, or Close waits for it.
		r.stdin.Close()
		err = r.rl.Close()
	})
	return err
}

// plainReader is the lineReader for input that is not a terminal: it
// prints the prompt and reads a line, without editing or history.
type plainReader struct {
	r      *bufio.Reader
	w      io.Writer
	prompt string
	// A read runs in its own goroutine so that Close can end the wait
	// without closing the caller's file. Only one read is outstanding:
	// reading ahead would take input meant for commands the statements
	// run.
	res     chan plainLine
	reading bool
	done    chan struct{}
	once    sync.Once
}

type plainLine struct {
	s   string
	err error
}

func newPlainReader(r io.Reader, w io.Writer) *plainReader {
	return &plainReader{r: bufio.NewReader(r), w: w, res: make(chan plainLine, 1), done: make(chan struct{})}
}

func (p *plainReader) SetPrompt(s string) { p.prompt = s }

func (p *plainReader) Readline() (string, error) {
	io.WriteString(p.w, p.prompt)
	if !p.reading {
		p.reading = true
		go func() {
			s, err := p.r.ReadString('\n')
			if err == io.EOF && s != "" {
				err = nil // the last line has no newline; EOF comes next time
			}
			p.res <- plainLine{strings.TrimRight(s, "\r\n"), err}
		}()
	}
	select {
	case l := <-p.res:
		p.reading = false
		return l.s, l.err
	case <-p.done:
		return "", io.EOF
	}
}

func (p *plainReader) Close() error {
	p.once.Do(func() { close(p.done) })
	return nil
}

// completer completes the identifier chain before the cursor: "ex" to
// globals and native modules starting with ex, "exec.ou" to fields of the
// exec table, "obj:m" to its methods.
//
// readline calls it from its own goroutine. That goroutine touches h.L
// only while the loop is blocked in Readline, so the state is never used
// by two goroutines at once, and the channel hand-offs inside readline
// order the accesses.
type completer struct {
	h       *Host
	strings func() []string // REPLConfig.Strings
}

// Do implements readline.AutoCompleter: candidates are returned as the
// text to insert after what is typed, and the length is what they share
// with the line.
func (c *completer) Do(line []rune, pos int) ([][]rune, int) {
	word, ok := chainBefore(line[:pos])
	if !ok {
		return c.inString(line[:pos])
	}
	prefix, names := c.h.completions(word)
	out := make([][]rune, 0, len(names))
	for _, n := range names {
		out = append(out, []rune(n[len(prefix):]))
	}
	return out, len([]rune(prefix))
}

// inString completes the string literal open at the end of line with the
// session's candidates.
func (c *completer) inString(line []rune) ([][]rune, int) {
	if c.strings == nil {
		return nil, 0
	}
	start := len(line)
	for start > 0 && line[start-1] != '"' && line[start-1] != '\'' {
		start--
	}
	typed := string(line[start:])
	var out [][]rune
	for _, cand := range c.strings() {
		if strings.HasPrefix(cand, typed) && cand != typed {
			out = append(out, []rune(cand[len(typed):]))
		}
	}
	return out, len([]rune(typed))
}

// chainBefore returns the a.b.c or a.b:c text that ends at the end of
// line; ok is false when the cursor is inside a string literal.
func chainBefore(line []rune) (chain string, ok bool) {
	start := len(line)
	for start > 0 {
		r := line[start-1]
		if r != '.' && r != ':' && r != '_' && !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9') {
			break
		}
		start--
	}
	if inString(line[:start]) {
		return "", false
	}
	return string(line[start:]), true
}

// inString reports whether a short string literal is open at the end of
// line. Long strings are rare at a prompt and are not tracked.
func inString(line []rune) bool {
	var quote rune
	for i := 0; i < len(line); i++ {
		switch r := line[i]; {
		case quote == 0 && (r == '"' || r == '\''):
			quote = r
		case quote != 0 && r == '\\':
			i++
		case quote != 0 && r == quote:
			quote = 0
		}
	}
	return quote != 0
}

// completions returns the last name of chain (the prefix being completed)
// and the sorted names that can complete it. Only tables are looked into,
// without running metamethods, except that a native module not yet loaded
// is required, as using its name would do.
func (h *Host) completions(chain string) (prefix string, names []string) {
	cut := strings.LastIndexAny(chain, ".:")
	prefix = chain[cut+1:]
	// The prefix must be the start of a name; it may be a keyword so far
	// ("end" on the way to "endpoint"), hence the added letter.
	if prefix != "" && !isIdent(prefix+"_") {
		return prefix, nil
	}
	seen := map[string]bool{}
	add := func(name string) {
		// Names starting with _ (_G, _VERSION, private fields) are noise
		// unless asked for.
		if strings.HasPrefix(name, prefix) && isIdent(name) && (!strings.HasPrefix(name, "_") || strings.HasPrefix(prefix, "_")) {
			seen[name] = true
		}
	}
	if cut < 0 {
		h.L.G.Global.ForEach(func(k, _ lua.LValue) {
			if s, ok := k.(lua.LString); ok {
				add(string(s))
			}
		})
		if h.opts.Interactive {
			for name := range h.modules {
				add(name)
			}
		}
		for kw := range luaKeywords {
			if strings.HasPrefix(kw, prefix) && prefix != "" {
				seen[kw] = true
			}
		}
	} else {
		path := strings.Split(chain[:cut], ".")
		methods := chain[cut] == ':'
		for _, p := range path {
			if !isIdent(p) {
				return prefix, nil
			}
		}
		v := h.completionRoot(path[0])
		for _, p := range path[1:] {
			v = rawField(v, p)
		}
		eachField(v, func(k string, fv lua.LValue) {
			if !methods || fv.Type() == lua.LTFunction {
				add(k)
			}
		})
	}
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return prefix, names
}

// completionRoot resolves the first name of a chain: a global, or a native
// module the REPL would autoload. Other __index behaviour of the globals
// is not run.
func (h *Host) completionRoot(name string) lua.LValue {
	g := h.L.G.Global
	if v := g.RawGetString(name); v != lua.LNil {
		return v
	}
	if _, ok := h.modules[name]; !ok || !h.opts.Interactive {
		return lua.LNil
	}
	req := g.RawGetString("require")
	if req.Type() != lua.LTFunction {
		return lua.LNil
	}
	if err := h.L.CallByParam(lua.P{Fn: req, NRet: 1, Protect: true}, lua.LString(name)); err != nil {
		return lua.LNil
	}
	v := h.L.Get(-1)
	h.L.Pop(1)
	return v
}

// maxIndexChain bounds how many __index tables completion follows, so a
// metatable loop cannot hang the prompt.
const maxIndexChain = 8

// rawField is v.name without running code: the value's own table, then
// the tables its metatables' __index point to.
func rawField(v lua.LValue, name string) lua.LValue {
	for i := 0; i < maxIndexChain && v != nil; i++ {
		if t, ok := v.(*lua.LTable); ok {
			if r := t.RawGetString(name); r != lua.LNil {
				return r
			}
		}
		v = indexTable(v)
	}
	return lua.LNil
}

// eachField calls fn for every string key reachable from v as rawField
// would find it (the nearest definition wins).
func eachField(v lua.LValue, fn func(string, lua.LValue)) {
	seen := map[string]bool{}
	for i := 0; i < maxIndexChain && v != nil; i++ {
		if t, ok := v.(*lua.LTable); ok {
			t.ForEach(func(k, fv lua.LValue) {
				if s, ok := k.(lua.LString); ok && !seen[string(s)] {
					seen[string(s)] = true
					fn(string(s), fv)
				}
			})
		}
		v = indexTable(v)
	}
}

// indexTable is the __index table of v's metatable, or nil when there is
// none or it is a function (which completion must not call).
func indexTable(v lua.LValue) lua.LValue {
	mtt := metatableOf(v)
	if mtt == nil {
		return nil
	}
	if idx, ok := mtt.RawGetString("__index").(*lua.LTable); ok {
		return idx
	}
	return nil
}
