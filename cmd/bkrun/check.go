package main

import (
	"fmt"
	"io"

	"github.com/bkrun/bkrun/runtime"
)

// check is `bkrun check RECIPE...`: each recipe is parsed and its
// metadata and argument declarations validated, and every top-level
// require must resolve — nothing is run. It prints one line per recipe and
// exits 2 if any has a problem.
func check(paths []string, stdout, stderr io.Writer) int {
	if len(paths) == 0 {
		fmt.Fprintln(stderr, "bkrun: check needs at least one recipe (bkrun check scripts/*.lua)")
		return runtime.ExitUsage
	}
	code := runtime.ExitOK
	for _, p := range paths {
		r, err := runtime.LoadRecipe(p)
		if err == nil {
			h := runtime.New(runtime.Options{Modules: modules(), ScriptDir: runtime.ScriptDirOf(p)})
			err = h.CheckRequires(r)
			for _, q := range r.Requires {
				if err == nil {
					if verr := h.VerifyLibrary(q.Name); verr != nil {
						err = fmt.Errorf("%s:%d: %w", p, q.Line, verr)
					}
				}
			}
			h.Close()
		}
		if err != nil {
			fmt.Fprintf(stderr, "bkrun: %v\n", err)
			code = runtime.ExitUsage
			continue
		}
		kind := "script"
		if r.HasRun {
			kind = fmt.Sprintf("recipe, %d argument(s)", len(r.Args))
		}
		fmt.Fprintf(stdout, "%s: ok (%s)\n", p, kind)
	}
	return code
}
