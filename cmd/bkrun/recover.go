package main

import (
	_ "embed"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/bkrun/bkrun/runtime"
	"github.com/bkrun/bkrun/stdlib/catalog"
	"github.com/bkrun/bkrun/stdlib/stream"
	lua "github.com/yuin/gopher-lua"
)

// recoverSession defines the session's commands (ls, verify, restore,
// attach, files, extract, ...) over the catalog and recover modules.
//
//go:embed recover.lua
var recoverSession string

const recoverUsage = `Usage: bkrun recover DIR

Open the REPL with the catalogue of the backup directory DIR loaded
(DIR may be [user@]host:dir: listing and chains then work over SFTP;
verify, restore, attach and extract need the backups on this machine).
Commands: ls() problems() chain(n) verify(n) restore(n, target) attach(n)
files(n) extract(n, paths, dest) rescan() help(). Without a terminal the
commands are read from standard input, one statement per line.
`

// recoverMain runs `bkrun recover DIR`.
func recoverMain(args []string, o options, hopts runtime.Options, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprint(stdout, recoverUsage)
		return runtime.ExitOK
	}
	if len(args) != 1 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintf(stderr, "bkrun recover: one backup directory expected\n%s", recoverUsage)
		return runtime.ExitUsage
	}
	dir := args[0]
	if _, _, remote := stream.ParseRemote(dir); !remote {
		// Absolute, so that paths stay valid whatever the session's
		// commands change (and match what recover resolves).
		if abs, err := filepath.Abs(dir); err == nil {
			dir = abs
		}
	} else {
		dir = strings.TrimSuffix(dir, "/")
	}
	in, ok := stdin.(*os.File)
	if !ok {
		in = os.Stdin
	}
	hopts.Interactive = true
	return runHost(hopts, o, stderr, true, func(h *runtime.Host) error {
		vals, err := h.RunChunk(recoverSession, "recover", []string{dir})
		if err != nil {
			return err
		}
		n, problems := vals[0].String(), vals[1].String()
		banner := fmt.Sprintf("%s: %s backup(s), %s problem(s). ls() lists them, help() shows the commands.", dir, n, problems)
		return h.REPL(runtime.REPLConfig{
			HistoryFile: historyFile(), Stdin: in, Stdout: stdout, Stderr: stderr, Verbose: o.verbose,
			Banner:  banner,
			Strings: func() []string { return catalogPaths(h, dir) },
		})
	})
}

// catalogPaths are the completions inside a string literal: every backup's
// path relative to dir, and as it is.
func catalogPaths(h *runtime.Host, dir string) []string {
	ud, ok := h.L.GetGlobal("cat").(*lua.LUserData)
	if !ok {
		return nil
	}
	c, ok := ud.Value.(*catalog.Catalog)
	if !ok {
		return nil
	}
	var out []string
	for _, b := range c.Backups {
		out = append(out, strings.TrimPrefix(b.Path, dir+"/"), b.Path)
	}
	return out
}
