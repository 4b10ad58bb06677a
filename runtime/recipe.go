package runtime

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/ast"
	"github.com/yuin/gopher-lua/parse"
)

// Recipe is a parsed Lua script with the metadata it declares at top level:
//
//	description = [[...]]
//	usage = "..."
//	args = { { name = "domain", help = "..." }, { name = "vg", default = "VGatom" } }
//	function run(a) ... end
//
// Metadata is read without running the script (the assignments are
// evaluated alone in an empty Lua state), so `bkrun help` and argument
// checking never have side effects.
type Recipe struct {
	Path        string
	Description string
	Usage       string
	Args        []ArgSpec
	HasArgs     bool // an args table was declared
	HasRun      bool // function run(...) is defined at top level
	Requires    []Require
	chunk       []ast.Stmt
}

// Require is a top-level require "name" found in the script.
type Require struct {
	Name string
	Line int
}

// ArgSpec declares one recipe argument.
type ArgSpec struct {
	Name     string
	Type     string // string, number, integer, boolean, list
	Help     string
	Default  any // nil, string, float64, int64, bool
	Choices  []string
	Required bool
	// positional: given by position (in declaration order) as well as by
	// --name. Default: required arguments are positional, the others are
	// options, so that adding an option never shifts a recipe's positions.
	positional    bool
	positionalSet bool
}

// Positional reports whether the argument may be given without --name.
func (a ArgSpec) Positional() bool {
	if a.Type == "boolean" || a.Type == "list" {
		return false
	}
	if a.positionalSet {
		return a.positional
	}
	return a.Required
}

var argTypes = map[string]bool{"string": true, "number": true, "integer": true, "boolean": true, "list": true}

// LoadRecipe reads and checks a recipe file.
func LoadRecipe(path string) (*Recipe, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return nil, Usagef("%s: %v", path, pe.Err)
		}
		return nil, Usagef("%v", err)
	}
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return nil, Usagef("%s: is a directory, not a recipe", path)
	}
	return ParseRecipe(path, src)
}

// ParseRecipe parses source and extracts its metadata.
func ParseRecipe(name string, src []byte) (*Recipe, error) {
	if bytes.HasPrefix(src, []byte("#!")) { // allow an executable recipe
		if i := bytes.IndexByte(src, '\n'); i >= 0 {
			src = append([]byte("--"), src[i:]...)
		} else {
			src = nil
		}
	}
	chunk, err := parse.Parse(bytes.NewReader(src), name)
	if err != nil {
		var pe *parse.Error
		if errors.As(err, &pe) {
			return nil, toScriptError(&lua.ApiError{Type: lua.ApiErrorSyntax, Object: lua.LString(err.Error()), Cause: err})
		}
		return nil, Usagef("%s: %v", name, err)
	}
	r := &Recipe{Path: name, chunk: chunk}
	var meta []ast.Stmt
	for _, st := range chunk {
		r.Requires = append(r.Requires, topLevelRequires(st)...)
		switch s := st.(type) {
		case *ast.FuncDefStmt:
			if id, ok := s.Name.Func.(*ast.IdentExpr); ok && id.Value == "run" && s.Name.Receiver == nil {
				r.HasRun = true
			}
		case *ast.AssignStmt:
			names := assignedGlobals(s)
			if names["run"] {
				r.HasRun = true
			}
			if names["description"] || names["usage"] || names["args"] {
				meta = append(meta, s)
			}
		}
	}
	if err := r.readMetadata(meta); err != nil {
		return nil, err
	}
	return r, nil
}

func assignedGlobals(s *ast.AssignStmt) map[string]bool {
	out := map[string]bool{}
	for _, e := range s.Lhs {
		if id, ok := e.(*ast.IdentExpr); ok {
			out[id.Value] = true
		}
	}
	return out
}

func topLevelRequires(st ast.Stmt) []Require {
	var exprs []ast.Expr
	switch s := st.(type) {
	case *ast.LocalAssignStmt:
		exprs = s.Exprs
	case *ast.AssignStmt:
		exprs = s.Rhs
	case *ast.FuncCallStmt:
		exprs = []ast.Expr{s.Expr}
	}
	var out []Require
	for _, e := range exprs {
		call, ok := e.(*ast.FuncCallExpr)
		if !ok || call.Receiver != nil || len(call.Args) != 1 {
			continue
		}
		if id, ok := call.Func.(*ast.IdentExpr); !ok || id.Value != "require" {
			continue
		}
		if s, ok := call.Args[0].(*ast.StringExpr); ok {
			out = append(out, Require{Name: s.Value, Line: call.Line()})
		}
	}
	return out
}

// readMetadata evaluates the metadata assignments alone, in a bare state
// with no libraries, so they must be plain values.
func (r *Recipe) readMetadata(meta []ast.Stmt) error {
	if len(meta) == 0 {
		return nil
	}
	proto, err := lua.Compile(meta, r.Path)
	if err != nil {
		return Usagef("%s: %v", r.Path, err)
	}
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	L.SetContext(ctx)
	L.Push(L.NewFunctionFromProto(proto))
	if err := L.PCall(0, 0, nil); err != nil {
		return Usagef("%s: recipe metadata (description, usage, args) must be plain values: %v", r.Path, Describe(toScriptError(err), false))
	}
	bad := func(format string, args ...any) error {
		return Usagef("%s: "+format, append([]any{r.Path}, args...)...)
	}
	for _, st := range meta {
		for name := range assignedGlobals(st.(*ast.AssignStmt)) {
			if (name == "description" || name == "usage" || name == "args") && L.GetGlobal(name) == lua.LNil {
				return bad("recipe metadata (description, usage, args) must be plain values: %s refers to something defined elsewhere", name)
			}
		}
	}
	switch v := L.GetGlobal("description").(type) {
	case lua.LString:
		r.Description = strings.TrimSpace(string(v))
	case *lua.LNilType:
	default:
		return bad("description must be a string, got %s", v.Type())
	}
	switch v := L.GetGlobal("usage").(type) {
	case lua.LString:
		r.Usage = strings.TrimSpace(string(v))
	case *lua.LNilType:
	default:
		return bad("usage must be a string, got %s", v.Type())
	}
	switch v := L.GetGlobal("args").(type) {
	case *lua.LTable:
		r.HasArgs = true
		return r.readArgs(v, bad)
	case *lua.LNilType:
	default:
		return bad("args must be a table of argument declarations, got %s", v.Type())
	}
	return nil
}

func (r *Recipe) readArgs(t *lua.LTable, bad func(string, ...any) error) error {
	seen := map[string]bool{}
	n := t.Len()
	extra := false
	t.ForEach(func(k, _ lua.LValue) {
		if num, ok := k.(lua.LNumber); !ok || int(num) < 1 || int(num) > n {
			extra = true
		}
	})
	if extra {
		return bad("args must be a list: { { name = \"x\", ... }, ... }")
	}
	for i := 1; i <= n; i++ {
		e, ok := t.RawGetInt(i).(*lua.LTable)
		if !ok {
			return bad("args[%d] must be a table such as { name = \"x\", help = \"...\" }", i)
		}
		var a ArgSpec
		var err error
		e.ForEach(func(k, v lua.LValue) {
			if err != nil {
				return
			}
			key := k.String()
			switch key {
			case "name", "help", "type":
				s, ok := v.(lua.LString)
				if !ok {
					err = bad("args[%d].%s must be a string", i, key)
					return
				}
				switch key {
				case "name":
					a.Name = string(s)
				case "help":
					a.Help = string(s)
				case "type":
					a.Type = string(s)
				}
			case "default":
				switch x := v.(type) {
				case lua.LString:
					a.Default = string(x)
				case lua.LNumber:
					a.Default = float64(x)
				case lua.LBool:
					a.Default = bool(x)
				default:
					err = bad("args[%d].default must be a string, number or boolean", i)
				}
			case "required":
				b, ok := v.(lua.LBool)
				if !ok {
					err = bad("args[%d].required must be a boolean", i)
					return
				}
				a.Required = bool(b)
			case "positional":
				b, ok := v.(lua.LBool)
				if !ok {
					err = bad("args[%d].positional must be a boolean", i)
					return
				}
				a.positional, a.positionalSet = bool(b), true
			case "choices":
				ct, ok := v.(*lua.LTable)
				if !ok {
					err = bad("args[%d].choices must be a list of strings", i)
					return
				}
				for j := 1; j <= ct.Len(); j++ {
					a.Choices = append(a.Choices, ct.RawGetInt(j).String())
				}
			default:
				err = bad("args[%d]: unknown field %q (known: name, type, default, help, choices, required, positional)", i, key)
			}
		})
		if err != nil {
			return err
		}
		if a.Name == "" || strings.ContainsAny(a.Name, " =") || strings.HasPrefix(a.Name, "-") {
			return bad("args[%d] needs a name made of letters, digits, _ or -", i)
		}
		a.Name = strings.ReplaceAll(a.Name, "-", "_")
		if seen[a.Name] {
			return bad("args[%d]: duplicate argument %q", i, a.Name)
		}
		seen[a.Name] = true
		if a.Type == "" {
			switch a.Default.(type) {
			case float64:
				a.Type = "number"
			case bool:
				a.Type = "boolean"
			default:
				a.Type = "string"
			}
		}
		if !argTypes[a.Type] {
			return bad("args[%d] (%s): unknown type %q (string, number, integer, boolean, list)", i, a.Name, a.Type)
		}
		if a.Default != nil {
			v, err := convertArg(a, fmt.Sprint(a.Default))
			if err != nil {
				return bad("args[%d] (%s): default %v", i, a.Name, err)
			}
			a.Default = v
		} else if a.Type != "boolean" && a.Type != "list" {
			// An argument without a default must be given, unless it says
			// otherwise with required = false.
			if req, ok := e.RawGetString("required").(lua.LBool); !ok || bool(req) {
				a.Required = true
			}
		}
		r.Args = append(r.Args, a)
	}
	return nil
}

// ErrHelp is returned by ParseArgs for -h/--help.
var ErrHelp = errors.New("help requested")

// ParseArgs checks command-line arguments against the declarations and
// returns their values by name. Arguments may be given in declaration order
// (booleans and lists excepted) or as --name=value, --name value, --flag,
// --no-flag; a list argument is repeated (--local A --local B).
func (r *Recipe) ParseArgs(argv []string) (map[string]any, error) {
	byName := map[string]*ArgSpec{}
	for i := range r.Args {
		byName[r.Args[i].Name] = &r.Args[i]
	}
	vals := map[string]any{}
	var positional []string
	usage := func(format string, args ...any) error {
		return Usagef("%s: "+format+" (see: bkrun help %s)", append(append([]any{r.Path}, args...), r.Path)...)
	}
	set := func(a *ArgSpec, raw string) error {
		v, err := convertArg(*a, raw)
		if err != nil {
			return usage("argument %s: %v", a.Name, err)
		}
		if a.Type == "list" {
			l, _ := vals[a.Name].([]string)
			vals[a.Name] = append(l, raw)
			return nil
		}
		if _, dup := vals[a.Name]; dup {
			return usage("argument %s given twice", a.Name)
		}
		vals[a.Name] = v
		return nil
	}
	for i := 0; i < len(argv); i++ {
		s := argv[i]
		if s == "--" {
			positional = append(positional, argv[i+1:]...)
			break
		}
		if s == "-h" || s == "--help" {
			return nil, ErrHelp
		}
		if !strings.HasPrefix(s, "--") {
			if strings.HasPrefix(s, "-") && len(s) > 1 && !isNumber(s) {
				return nil, usage("unknown option %s", s)
			}
			positional = append(positional, s)
			continue
		}
		name, raw, hasVal := strings.Cut(s[2:], "=")
		key := strings.ReplaceAll(name, "-", "_")
		a := byName[key]
		if a == nil && strings.HasPrefix(key, "no_") && !hasVal {
			if b := byName[strings.TrimPrefix(key, "no_")]; b != nil && b.Type == "boolean" {
				if err := set(b, "false"); err != nil {
					return nil, err
				}
				continue
			}
		}
		if a == nil {
			return nil, usage("unknown option --%s", name)
		}
		if !hasVal {
			if a.Type == "boolean" {
				raw = "true"
			} else if i+1 < len(argv) {
				i++
				raw = argv[i]
			} else {
				return nil, usage("option --%s needs a value", name)
			}
		}
		if err := set(a, raw); err != nil {
			return nil, err
		}
	}
	for _, raw := range positional {
		var target *ArgSpec
		for i := range r.Args {
			a := &r.Args[i]
			if _, given := vals[a.Name]; !given && a.Positional() {
				target = a
				break
			}
		}
		if target == nil {
			return nil, usage("unexpected argument %q", raw)
		}
		if err := set(target, raw); err != nil {
			return nil, err
		}
	}
	for _, a := range r.Args {
		if _, ok := vals[a.Name]; ok {
			continue
		}
		switch {
		case a.Default != nil:
			vals[a.Name] = a.Default
		case a.Type == "boolean":
			vals[a.Name] = false
		case a.Type == "list":
			vals[a.Name] = []string{}
		case a.Required:
			help := ""
			if a.Help != "" {
				help = " (" + a.Help + ")"
			}
			return nil, usage("missing argument %s%s", strings.ToUpper(a.Name), help)
		}
	}
	return vals, nil
}

func isNumber(s string) bool {
	_, err := strconv.ParseFloat(s, 64)
	return err == nil
}

func convertArg(a ArgSpec, raw string) (any, error) {
	var v any
	switch a.Type {
	case "number":
		f, err := strconv.ParseFloat(raw, 64)
		if err != nil {
			return nil, fmt.Errorf("%q is not a number", raw)
		}
		v = f
	case "integer":
		n, err := strconv.ParseInt(raw, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%q is not an integer", raw)
		}
		v = n
	case "boolean":
		switch strings.ToLower(raw) {
		case "true", "yes", "1", "on":
			v = true
		case "false", "no", "0", "off":
			v = false
		default:
			return nil, fmt.Errorf("%q is not a boolean (true/false)", raw)
		}
	default:
		v = raw
	}
	if len(a.Choices) > 0 {
		for _, c := range a.Choices {
			if c == raw {
				return v, nil
			}
		}
		return nil, fmt.Errorf("%q is not one of %s", raw, strings.Join(a.Choices, ", "))
	}
	return v, nil
}

// WriteHelp prints the recipe's description, usage and arguments.
func (r *Recipe) WriteHelp(w io.Writer) {
	base := r.Path
	if r.Description != "" {
		fmt.Fprintf(w, "%s\n\n", r.Description)
	}
	fmt.Fprintf(w, "Usage: bkrun [--dry-run] [-v|-q] %s %s\n", base, r.usageLine())
	if len(r.Args) > 0 {
		fmt.Fprintln(w, "\nArguments (positional ones in this order or as --name=value; options as --name=value):")
		for _, a := range r.Args {
			left := "  " + strings.ToUpper(a.Name)
			if !a.Positional() {
				left = "  --" + strings.ReplaceAll(a.Name, "_", "-") + " " + strings.ToUpper(a.Name)
				if a.Type == "boolean" {
					left = "  --[no-]" + strings.ReplaceAll(a.Name, "_", "-")
				}
				if a.Type == "list" {
					left = "  --" + strings.ReplaceAll(a.Name, "_", "-") + " VALUE (repeatable)"
				}
			}
			var notes []string
			if a.Type != "string" {
				notes = append(notes, a.Type)
			}
			if len(a.Choices) > 0 {
				notes = append(notes, "one of: "+strings.Join(a.Choices, ", "))
			}
			if a.Required {
				notes = append(notes, "required")
			} else if a.Default != nil {
				notes = append(notes, fmt.Sprintf("default: %v", formatDefault(a.Default)))
			}
			line := a.Help
			if len(notes) > 0 {
				line = strings.TrimSpace(line + " [" + strings.Join(notes, "; ") + "]")
			}
			if len(left) < 24 {
				fmt.Fprintf(w, "%-24s%s\n", left, line)
			} else {
				fmt.Fprintf(w, "%s\n%24s%s\n", left, "", line)
			}
		}
	}
	if !r.HasRun {
		fmt.Fprintln(w, "\nA plain script: its arguments are in the global table arg.")
	}
}

func formatDefault(v any) string {
	switch x := v.(type) {
	case string:
		return strconv.Quote(x)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	}
	return fmt.Sprint(v)
}

func (r *Recipe) usageLine() string {
	if r.Usage != "" {
		return r.Usage
	}
	if !r.HasArgs {
		return "[ARG...]"
	}
	var parts []string
	if len(r.Args) > 0 {
		parts = append(parts, "[options]")
	}
	for _, a := range r.Args {
		if !a.Positional() {
			continue
		}
		if a.Required {
			parts = append(parts, strings.ToUpper(a.Name))
		} else {
			parts = append(parts, "["+strings.ToUpper(a.Name)+"]")
		}
	}
	return strings.Join(parts, " ")
}

// CheckRequires reports top-level requires that do not resolve.
func (h *Host) CheckRequires(r *Recipe) error {
	for _, q := range r.Requires {
		if _, ok := h.FindLibrary(q.Name); !ok {
			names := make([]string, 0, len(h.modules))
			for n := range h.modules {
				names = append(names, n)
			}
			sort.Strings(names)
			return Usagef("%s:%d: module %q not found (native modules: %s; library path: %s)",
				r.Path, q.Line, q.Name, strings.Join(names, ", "), strings.Join(LibDirs(h.opts.ScriptDir), ":"))
		}
	}
	return nil
}

// RunRecipe checks r's requires and arguments, then runs it: the chunk
// first, then run(args) if the recipe defines it. Problems found before
// anything runs are UsageErrors.
func (h *Host) RunRecipe(r *Recipe, argv []string) error {
	if err := h.CheckRequires(r); err != nil {
		return err
	}
	var vals map[string]any
	if r.HasRun && r.HasArgs {
		var err error
		if vals, err = r.ParseArgs(argv); err != nil {
			return err
		}
	}
	L := h.L
	L.SetField(L.GetGlobal("bkrun"), "script", lua.LString(r.Path))
	argt := L.NewTable()
	argt.RawSetInt(0, lua.LString(r.Path))
	varargs := make([]lua.LValue, len(argv))
	for i, s := range argv {
		argt.RawSetInt(i+1, lua.LString(s))
		varargs[i] = lua.LString(s)
	}
	L.SetGlobal("arg", argt)
	proto, err := lua.Compile(r.chunk, r.Path)
	if err != nil {
		return Usagef("%s: %v", r.Path, err)
	}
	if _, err := h.CallLua(L.NewFunctionFromProto(proto), 0, varargs...); err != nil {
		return err
	}
	if !r.HasRun {
		return nil
	}
	run, ok := L.GetGlobal("run").(*lua.LFunction)
	if !ok {
		return &ScriptError{Msg: r.Path + ": run must be a function, got " + L.GetGlobal("run").Type().String()}
	}
	a := argt
	if r.HasArgs {
		a = h.argsTable(r, vals)
	}
	_, err = h.CallLua(run, 0, a)
	return err
}

func (h *Host) argsTable(r *Recipe, vals map[string]any) *lua.LTable {
	t := h.L.NewTable()
	for _, a := range r.Args {
		t.RawSetString(a.Name, ToLua(h.L, vals[a.Name]))
	}
	return t
}

// ToLua converts plain Go values (as produced by ParseArgs and JSON-like
// data) to Lua values.
func ToLua(L *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case nil:
		return lua.LNil
	case string:
		return lua.LString(x)
	case float64:
		return lua.LNumber(x)
	case int64:
		return lua.LNumber(x)
	case int:
		return lua.LNumber(x)
	case bool:
		return lua.LBool(x)
	case []string:
		t := L.NewTable()
		for _, s := range x {
			t.Append(lua.LString(s))
		}
		return t
	case map[string]any:
		t := L.NewTable()
		for k, e := range x {
			t.RawSetString(k, ToLua(L, e))
		}
		return t
	case []any:
		t := L.NewTable()
		for _, e := range x {
			t.Append(ToLua(L, e))
		}
		return t
	}
	return lua.LString(fmt.Sprint(v))
}

// FromLua converts a Lua value to plain Go data, the inverse of ToLua for
// what encoding/json writes: strings, numbers, booleans and tables (as
// maps with string keys); anything else becomes its string form.
func FromLua(v lua.LValue) any {
	switch x := v.(type) {
	case lua.LString:
		return string(x)
	case lua.LNumber:
		return float64(x)
	case lua.LBool:
		return bool(x)
	case *lua.LTable:
		m := map[string]any{}
		x.ForEach(func(k, e lua.LValue) { m[k.String()] = FromLua(e) })
		return m
	}
	return v.String()
}

// RunChunk runs source code given with -e or on standard input and returns
// the values it returns.
func (h *Host) RunChunk(src, name string, argv []string) ([]lua.LValue, error) {
	fn, err := h.L.Load(strings.NewReader(src), name)
	if err != nil {
		return nil, toScriptError(err)
	}
	argt := h.L.NewTable()
	argt.RawSetInt(0, lua.LString(name))
	args := make([]lua.LValue, len(argv))
	for i, s := range argv {
		argt.RawSetInt(i+1, lua.LString(s))
		args[i] = lua.LString(s)
	}
	h.L.SetGlobal("arg", argt)
	return h.CallLua(fn, lua.MultRet, args...)
}

// ScriptDirOf is the directory that heads package.path for a recipe.
func ScriptDirOf(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		return filepath.Dir(abs)
	}
	return filepath.Dir(path)
}
