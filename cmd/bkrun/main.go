// Command bkrun runs backup recipes written in Lua.
//
//	bkrun [flags] RECIPE.lua [ARG...]   run a recipe
//	bkrun [flags] -e CODE [ARG...]      run a chunk of Lua
//	bkrun [flags] -                     run a script read from standard input
//	bkrun                               interactive REPL (on a terminal)
//	bkrun help [MODULE|MODULE.FUNC|RECIPE.lua]
//	bkrun lib install|list|update|remove|verify
//	bkrun recover DIR
//	bkrun version
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	goruntime "runtime"
	"runtime/debug"
	"strings"

	"github.com/bkrun/bkrun/runtime"
	"golang.org/x/term"
)

func main() {
	if os.Getenv("GOMAXPROCS") == "" {
		// The data path blocks in system calls (O_DIRECT reads, writes,
		// sync_file_range); a P held by a blocked thread idles its CPU until
		// the runtime's monitor takes it back. Twice as many Ps as CPUs
		// keeps the CPUs busy: an image backup of the benchmark's mixed
		// image went from 1.39 s to 1.21 s (median of 6, 2 vCPUs). The
		// encoders stay at one per CPU (stream.Copy).
		goruntime.GOMAXPROCS(2 * goruntime.NumCPU())
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		// A backup must not grow with the size of what it copies. The data
		// path holds ~36 MiB of buffers, allocated once; this soft limit
		// makes the garbage collector work harder before the heap doubles
		// past them. It must stay well above them: at 40 MiB the collector
		// ran 170 times in a 1 GiB backup and cost a third more CPU.
		debug.SetMemoryLimit(64 << 20)
	}
	os.Exit(Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

type options struct {
	dryRun    bool
	verbose   bool
	quiet     bool
	logFormat string
	code      string
	codeSet   bool
	markdown  bool
}

const usageText = `Usage:
  bkrun [flags] RECIPE.lua [ARG...]    run a recipe (bkrun help RECIPE.lua: its arguments)
  bkrun [flags] -e CODE [ARG...]       run Lua code; native modules are preloaded as globals
  bkrun [flags] -                      run a script read from standard input
  bkrun [flags]                        interactive REPL on a terminal (stdin script otherwise)
  bkrun help [MODULE | MODULE.FUNC | RECIPE.lua]
  bkrun check RECIPE.lua...            parse and validate recipes without running them
  bkrun lib install|list|update|remove|verify   recipe libraries with a lock file (bkrun lib help)
  bkrun recover DIR                    the REPL with DIR's backup catalogue loaded (docs/RECOVERY.md)
  bkrun version
  bkrun receive --root DIR [--overwrite]  upload receiver for an SSH forced command (docs/RECEIVE.md)

Flags (before the recipe; what follows the recipe is the recipe's):
  -n, --dry-run         print every action and command instead of doing it
  -v, --verbose         debug logging, and Lua tracebacks on errors
  -q, --quiet           warnings and errors only
      --log-format F    text (default) or json
  -e CODE               run CODE instead of a recipe

Exit status: 0 success, 1 recipe or clean-up failed, 2 usage error,
130 interrupted (SIGINT), 143 terminated (SIGTERM).
`

// Main is the whole CLI; it returns the exit status.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("bkrun", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.BoolVar(&o.dryRun, "dry-run", false, "")
	fs.BoolVar(&o.dryRun, "n", false, "")
	fs.BoolVar(&o.verbose, "verbose", false, "")
	fs.BoolVar(&o.verbose, "v", false, "")
	fs.BoolVar(&o.quiet, "quiet", false, "")
	fs.BoolVar(&o.quiet, "q", false, "")
	fs.StringVar(&o.logFormat, "log-format", "text", "")
	fs.Func("e", "", func(s string) error { o.code, o.codeSet = s, true; return nil })
	fs.BoolVar(&o.markdown, "markdown", false, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usageText)
			return runtime.ExitOK
		}
		fmt.Fprintf(stderr, "bkrun: %v\n%s", err, usageText)
		return runtime.ExitUsage
	}
	rest := fs.Args()
	if o.logFormat != "text" && o.logFormat != "json" {
		fmt.Fprintf(stderr, "bkrun: --log-format must be text or json, not %q\n", o.logFormat)
		return runtime.ExitUsage
	}
	logger := newLogger(stderr, o)

	if !o.codeSet && len(rest) > 0 {
		switch rest[0] {
		case "help":
			return help(rest[1:], o, stdout, stderr)
		case "receive":
			return receiveMain(rest[1:], stdin, stdout, stderr)
		case "check":
			return check(rest[1:], stdout, stderr)
		case "lib":
			return libMain(rest[1:], stdout, stderr)
		case "recover":
			return recoverMain(rest[1:], o, hostOptions(o, logger, stdout, stderr), stdin, stdout, stderr)
		case "version":
			fmt.Fprintf(stdout, "bkrun %s (%s, gopher-lua Lua 5.1, %s/%s)\n", runtime.Version, goruntime.Version(), goruntime.GOOS, goruntime.GOARCH)
			return runtime.ExitOK
		}
	}

	hopts := hostOptions(o, logger, stdout, stderr)
	switch {
	case o.codeSet:
		hopts.Interactive = true
		return runHost(hopts, o, stderr, false, func(h *runtime.Host) error {
			return printResults(h, stdout, o.code, "-e", rest)
		})
	case len(rest) > 0 && rest[0] == "-":
		src, err := io.ReadAll(stdin)
		if err != nil {
			fmt.Fprintf(stderr, "bkrun: reading standard input: %v\n", err)
			return runtime.ExitUsage
		}
		return runHost(hopts, o, stderr, false, func(h *runtime.Host) error {
			return printResults(h, stdout, string(src), "stdin", rest[1:])
		})
	case len(rest) > 0:
		r, err := runtime.LoadRecipe(rest[0])
		if err != nil {
			fmt.Fprintf(stderr, "bkrun: %v\n", err)
			return runtime.ExitUsage
		}
		if r.HasRun && r.HasArgs {
			if _, err := r.ParseArgs(rest[1:]); errors.Is(err, runtime.ErrHelp) {
				r.WriteHelp(stdout)
				return runtime.ExitOK
			}
		}
		hopts.ScriptDir = runtime.ScriptDirOf(rest[0])
		return runHost(hopts, o, stderr, false, func(h *runtime.Host) error {
			return h.RunRecipe(r, rest[1:])
		})
	default:
		f, isFile := stdin.(*os.File)
		if isFile && term.IsTerminal(int(f.Fd())) {
			hopts.Interactive = true
			return runHost(hopts, o, stderr, true, func(h *runtime.Host) error {
				return h.REPL(runtime.REPLConfig{HistoryFile: historyFile(), Stdin: f, Stdout: stdout, Stderr: stderr, Verbose: o.verbose})
			})
		}
		src, err := io.ReadAll(stdin)
		if err != nil {
			fmt.Fprintf(stderr, "bkrun: reading standard input: %v\n", err)
			return runtime.ExitUsage
		}
		return runHost(hopts, o, stderr, false, func(h *runtime.Host) error {
			return printResults(h, stdout, string(src), "stdin", nil)
		})
	}
}

// hostOptions are the host's options for the flags given.
func hostOptions(o options, logger *slog.Logger, stdout, stderr io.Writer) runtime.Options {
	hopts := runtime.Options{
		Modules: modules(),
		DryRun:  o.dryRun,
		Logger:  logger,
		Stdout:  stdout,
		Stderr:  stderr,
	}
	if f, ok := stderr.(*os.File); ok && !o.quiet && term.IsTerminal(int(f.Fd())) {
		hopts.Progress = true
	}
	return hopts
}

// runHost builds the host, runs body, then always runs the clean-up stack
// and turns the outcome into an exit status.
func runHost(hopts runtime.Options, o options, stderr io.Writer, interactive bool, body func(*runtime.Host) error) int {
	h := runtime.New(hopts)
	defer h.Close()
	stop := h.HandleSignals(interactive)
	defer stop()
	err := body(h)
	if h.StoppedCleanly() {
		// A primitive whose normal end is a signal (tunnel.run) stopped.
		h.Logger().Info("stopped", "reason", h.Cause())
		err = nil
	}
	if err != nil {
		fmt.Fprintf(stderr, "bkrun: %s\n", runtime.Describe(err, o.verbose))
	}
	cleanupErr := h.RunCleanup()
	cause := h.Cause()
	if h.StoppedCleanly() {
		cause = nil
	}
	if cause != nil {
		fmt.Fprintf(stderr, "bkrun: %v; clean-up done\n", cause)
	}
	if cleanupErr != nil {
		fmt.Fprintf(stderr, "bkrun: clean-up failed: %v\n", strings.ReplaceAll(cleanupErr.Error(), "\n", "; "))
	}
	return runtime.ExitCodeOf(err, cleanupErr, cause)
}

// printResults runs a chunk and prints what it returns, so that
// `bkrun -e 'return fs.stat("/")'` shows something.
func printResults(h *runtime.Host, stdout io.Writer, src, name string, argv []string) error {
	vals, err := h.RunChunk(src, name, argv)
	if err != nil {
		return err
	}
	if len(vals) > 0 {
		fmt.Fprintln(stdout, h.FormatValues(vals))
	}
	return nil
}

func newLogger(w io.Writer, o options) *slog.Logger {
	level := slog.LevelInfo
	if o.verbose {
		level = slog.LevelDebug
	} else if o.quiet {
		level = slog.LevelWarn
	}
	ho := &slog.HandlerOptions{Level: level}
	if o.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, ho))
	}
	return slog.New(slog.NewTextHandler(w, ho))
}

func historyFile() string {
	if d, err := os.UserHomeDir(); err == nil {
		return filepath.Join(d, ".local", "state", "bkrun", "history")
	}
	return ""
}

func help(args []string, o options, stdout, stderr io.Writer) int {
	mods := modules()
	if len(args) > 0 && args[0] == "--markdown" {
		o.markdown, args = true, args[1:]
	}
	if o.markdown {
		runtime.WriteMarkdown(stdout, mods)
		return runtime.ExitOK
	}
	if len(args) == 0 {
		fmt.Fprintln(stdout, "bkrun — backup recipes in Lua, native primitives in Go.")
		fmt.Fprintln(stdout)
		fmt.Fprint(stdout, usageText)
		fmt.Fprintln(stdout)
		runtime.WriteModuleList(stdout, mods)
		return runtime.ExitOK
	}
	topic := args[0]
	if strings.HasSuffix(topic, ".lua") || strings.ContainsRune(topic, '/') {
		r, err := runtime.LoadRecipe(topic)
		if err != nil {
			fmt.Fprintf(stderr, "bkrun: %v\n", err)
			return runtime.ExitUsage
		}
		r.WriteHelp(stdout)
		return runtime.ExitOK
	}
	modName, fn, _ := strings.Cut(topic, ".")
	for _, m := range mods {
		if m.Name != modName {
			continue
		}
		if fn == "" {
			runtime.WriteModuleHelp(stdout, m)
			return runtime.ExitOK
		}
		if f, ok := m.Lookup(fn); ok {
			runtime.WriteFuncHelp(stdout, f)
			return runtime.ExitOK
		}
		fmt.Fprintf(stderr, "bkrun: module %s has no function %q (bkrun help %s)\n", modName, fn, modName)
		return runtime.ExitUsage
	}
	fmt.Fprintf(stderr, "bkrun: no module, function or recipe named %q (bkrun help lists modules)\n", topic)
	return runtime.ExitUsage
}
