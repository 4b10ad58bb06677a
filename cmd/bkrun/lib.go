package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/bkrun/bkrun/internal/libs"
	"github.com/bkrun/bkrun/runtime"
)

const libUsage = `Usage:
  bkrun lib install SRC[@REF] [--name NAME] [--force]   install a library (git URL or path, directory, .tar[.gz])
  bkrun lib list                                        built-in and installed libraries
  bkrun lib update [NAME]                               fetch again from the locked source and ref
  bkrun lib remove NAME                                 remove a library and its lock entry
  bkrun lib verify [NAME]                               check files against the lock (exit 1 naming changes)

Where (install, update, remove; list and verify default to both):
  (default)     ~/.config/bkrun/lib
  --system      /etc/bkrun/lib
  --dir DIR     another library directory
See docs/LIBRARIES.md.
`

// SystemLibDir is where `bkrun lib --system` installs.
const SystemLibDir = "/etc/bkrun/lib"

type libArgs struct {
	pos       []string
	system    bool
	dir, name string
	force     bool
}

func userLibDir() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, ".config", "bkrun", "lib")
}

// target is the one directory install, update and remove work on.
func (a libArgs) target() string {
	switch {
	case a.dir != "":
		return a.dir
	case a.system:
		return SystemLibDir
	}
	return userLibDir()
}

// all is where list and verify look without --system or --dir.
func (a libArgs) all() []string {
	if a.dir != "" || a.system {
		return []string{a.target()}
	}
	var dirs []string
	if u := userLibDir(); u != "" {
		dirs = append(dirs, u)
	}
	return append(dirs, SystemLibDir)
}

func parseLibArgs(args []string) (libArgs, error) {
	var a libArgs
	for i := 0; i < len(args); i++ {
		arg := args[i]
		val := func(flag string) (string, error) {
			if v, ok := strings.CutPrefix(arg, flag+"="); ok {
				return v, nil
			}
			if i+1 >= len(args) {
				return "", fmt.Errorf("%s needs a value", flag)
			}
			i++
			return args[i], nil
		}
		var err error
		switch {
		case arg == "--system":
			a.system = true
		case arg == "--force":
			a.force = true
		case arg == "--name" || strings.HasPrefix(arg, "--name="):
			a.name, err = val("--name")
		case arg == "--dir" || strings.HasPrefix(arg, "--dir="):
			a.dir, err = val("--dir")
		case arg == "--":
			a.pos = append(a.pos, args[i+1:]...)
			i = len(args)
		case strings.HasPrefix(arg, "-") && arg != "-":
			err = fmt.Errorf("unknown flag %s", arg)
		default:
			a.pos = append(a.pos, arg)
		}
		if err != nil {
			return a, err
		}
	}
	if a.system && a.dir != "" {
		return a, fmt.Errorf("--system and --dir exclude each other")
	}
	return a, nil
}

// libMain is `bkrun lib ...`.
func libMain(args []string, stdout, stderr io.Writer) int {
	usage := func(format string, v ...any) int {
		fmt.Fprintf(stderr, "bkrun: lib: "+format+"\n%s", append(v, libUsage)...)
		return runtime.ExitUsage
	}
	if len(args) == 0 {
		return usage("which command?")
	}
	if args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, libUsage)
		return runtime.ExitOK
	}
	cmd := args[0]
	a, err := parseLibArgs(args[1:])
	if err != nil {
		return usage("%s: %v", cmd, err)
	}
	nargs := map[string][2]int{"install": {1, 1}, "list": {0, 0}, "update": {0, 1}, "remove": {1, 1}, "verify": {0, 1}}
	n, ok := nargs[cmd]
	if !ok {
		return usage("unknown command %q", cmd)
	}
	if len(a.pos) < n[0] || len(a.pos) > n[1] {
		return usage("%s takes %d to %d argument(s), got %d", cmd, n[0], n[1], len(a.pos))
	}
	if (a.name != "" || a.force) && cmd != "install" {
		return usage("%s: --name and --force are for install", cmd)
	}
	if (cmd == "install" || cmd == "update" || cmd == "remove") && a.target() == "" {
		return usage("%s: no home directory; give --system or --dir", cmd)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fail := func(err error) int {
		fmt.Fprintf(stderr, "bkrun: lib %s: %v\n", cmd, err)
		return runtime.ExitError
	}

	switch cmd {
	case "install":
		src, err := libs.ParseSource(a.pos[0])
		if err != nil {
			return fail(err)
		}
		r, err := libs.Install(ctx, src, a.target(), libs.Options{Name: a.name, Force: a.force})
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "installed %s %s from %s in %s\n", r.Name, short(r.Entry.Revision), src, r.Dir)
	case "update":
		dir := a.target()
		names := a.pos
		if len(names) == 0 {
			lk, err := libs.ReadLock(dir)
			if err != nil {
				return fail(err)
			}
			names = lk.Names()
		}
		code := runtime.ExitOK
		for _, name := range names {
			r, err := libs.Update(ctx, dir, name)
			if err != nil {
				code = fail(err)
				continue
			}
			if r.Old != nil && r.Old.Revision != r.Entry.Revision {
				fmt.Fprintf(stdout, "updated %s %s -> %s\n", name, short(r.Old.Revision), short(r.Entry.Revision))
			} else {
				fmt.Fprintf(stdout, "updated %s %s (same revision, files restored)\n", name, short(r.Entry.Revision))
			}
		}
		return code
	case "remove":
		if err := libs.Remove(a.target(), a.pos[0]); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "removed %s from %s\n", a.pos[0], a.target())
	case "list":
		tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
		if a.dir == "" && !a.system {
			for _, n := range runtime.Embedded() {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n, "bkrun "+runtime.Version, "built-in", "(in the binary)")
			}
		}
		for _, dir := range a.all() {
			lk, err := libs.ReadLock(dir)
			if err != nil {
				tw.Flush()
				return fail(err)
			}
			for _, n := range lk.Names() {
				e := lk.Libraries[n]
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n, short(e.Revision), libs.Source{Location: e.Source, Ref: e.Ref}, dir)
			}
		}
		tw.Flush()
	case "verify":
		bad, found := 0, false
		for _, dir := range a.all() {
			lk, err := libs.ReadLock(dir)
			if err != nil {
				return fail(err)
			}
			for _, n := range lk.Names() {
				if len(a.pos) == 1 && n != a.pos[0] {
					continue
				}
				found = true
				ps, err := lk.Verify(dir, n)
				if err != nil {
					return fail(err)
				}
				if len(ps) == 0 {
					fmt.Fprintf(stdout, "%s: ok (%d files, %s)\n", n, len(lk.Libraries[n].Files), short(lk.Libraries[n].Revision))
					continue
				}
				bad++
				fmt.Fprintf(stderr, "bkrun: lib verify: %s at %s does not match its lock: %s\n", n, filepath.Join(dir, n), libs.Problems(ps))
			}
		}
		if len(a.pos) == 1 && !found {
			return fail(fmt.Errorf("no library %s in %s", a.pos[0], strings.Join(a.all(), " or ")))
		}
		if bad > 0 {
			return runtime.ExitError
		}
	}
	return runtime.ExitOK
}

// short abbreviates a git commit id or a tarball hash for display.
func short(rev string) string {
	if h, ok := strings.CutPrefix(rev, "sha256:"); ok && len(h) > 12 {
		return "sha256:" + h[:12]
	}
	if len(rev) == 40 {
		return rev[:12]
	}
	return rev
}
