package runtime

import (
	"fmt"
	"io"
	"strings"
)

// WriteModuleList prints the one-line summary of every module.
func WriteModuleList(w io.Writer, mods []*Module) {
	fmt.Fprintln(w, "Modules (require \"name\" in a recipe; bkrun help NAME for details):")
	for _, m := range mods {
		fmt.Fprintf(w, "  %-10s %s\n", m.Name, m.Summary)
	}
	fmt.Fprintln(w, "\nGlobals: defer(fn), arg, bkrun.version, bkrun.dry_run, bkrun.script, bkrun.usage(msg)")
}

// WriteModuleHelp prints a module's documentation and functions.
func WriteModuleHelp(w io.Writer, m *Module) {
	fmt.Fprintf(w, "%s — %s\n\n", m.Name, m.Summary)
	if m.Doc != "" {
		fmt.Fprintf(w, "%s\n\n", strings.TrimSpace(m.Doc))
	}
	for _, f := range m.Funcs {
		WriteFuncHelp(w, f)
	}
}

// WriteFuncHelp prints one function's signature and description.
func WriteFuncHelp(w io.Writer, f Func) {
	fmt.Fprintf(w, "  %s\n", f.Sig)
	for _, l := range strings.Split(strings.TrimSpace(f.Doc), "\n") {
		fmt.Fprintf(w, "      %s\n", l)
	}
	fmt.Fprintln(w)
}

// WriteMarkdown renders the module reference (docs/MODULES.md).
func WriteMarkdown(w io.Writer, mods []*Module) {
	fmt.Fprintln(w, "# Module reference")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Generated from the modules' own documentation by `bkrun help --markdown`;")
	fmt.Fprintln(w, "do not edit by hand (`make docs` regenerates it, a test checks it is current).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Globals: `defer(fn)` registers an undo on the clean-up stack; `arg` holds a")
	fmt.Fprintln(w, "plain script's arguments; `bkrun.version`, `bkrun.dry_run`, `bkrun.script`;")
	fmt.Fprintln(w, "`bkrun.usage(msg)` rejects the recipe's arguments (exit status 2).")
	fmt.Fprintln(w)
	for _, m := range mods {
		fmt.Fprintf(w, "- [%s](#%s) — %s\n", m.Name, m.Name, m.Summary)
	}
	for _, m := range mods {
		fmt.Fprintf(w, "\n## %s\n\n%s.\n\n", m.Name, upperFirst(m.Summary))
		if m.Doc != "" {
			fmt.Fprintf(w, "```\n%s\n```\n\n", strings.TrimSpace(m.Doc))
		}
		for _, f := range m.Funcs {
			fmt.Fprintf(w, "### `%s`\n\n%s\n\n", f.Sig, strings.TrimSpace(f.Doc))
		}
	}
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
