package runtime

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/bkrun/bkrun/internal/libs"
	shipped "github.com/bkrun/bkrun/scripts/lib"
	lua "github.com/yuin/gopher-lua"
)

// EmbeddedPrefix names the libraries built into bkrun: require
// "bkrun.dest" loads scripts/lib/bkrun/dest.lua from the binary. No file on
// disk can take the prefix over.
const EmbeddedPrefix = "bkrun."

// Embedded lists the built-in libraries by require name, e.g. "bkrun.dest".
func Embedded() []string {
	ents, _ := fs.ReadDir(shipped.FS, "bkrun")
	var names []string
	for _, e := range ents {
		if n, ok := strings.CutSuffix(e.Name(), ".lua"); ok {
			names = append(names, EmbeddedPrefix+n)
		}
	}
	return names
}

// EmbeddedSource is the Lua source of a built-in library.
func EmbeddedSource(name string) ([]byte, bool) {
	rest, ok := strings.CutPrefix(name, EmbeddedPrefix)
	if !ok || rest == "" || strings.ContainsAny(rest, "./") {
		return nil, false
	}
	b, err := fs.ReadFile(shipped.FS, path.Join("bkrun", rest+".lua"))
	return b, err == nil
}

func reserved(name string) bool {
	return name == "bkrun" || strings.HasPrefix(name, EmbeddedPrefix)
}

// installLoaders makes require look, in order: in the built-in libraries
// (for bkrun.*, and nowhere else for that prefix), in package.preload (the
// native modules), then along package.path, checking a file of a locked
// library against its lock before it is loaded.
func (h *Host) installLoaders() {
	L := h.L
	loaders := L.GetField(L.Get(lua.RegistryIndex), "_LOADERS").(*lua.LTable)
	preload := loaders.RawGetInt(1)
	loaders.RawSetInt(1, L.NewFunction(h.loadEmbedded))
	loaders.RawSetInt(2, preload)
	loaders.RawSetInt(3, L.NewFunction(h.loadFile))
	h.locks = map[string]*libs.Lock{}
	h.verified = map[string]error{}
}

func (h *Host) loadEmbedded(L *lua.LState) int {
	name := L.CheckString(1)
	if !reserved(name) {
		L.Push(lua.LNil)
		return 1
	}
	src, ok := EmbeddedSource(name)
	if !ok {
		L.RaiseError("module %s not found: %s* is reserved for the libraries built into bkrun (%s; bkrun lib list)",
			name, EmbeddedPrefix, strings.Join(Embedded(), ", "))
	}
	fn, err := L.Load(strings.NewReader(string(src)), "bkrun:"+strings.TrimPrefix(name, EmbeddedPrefix)+".lua")
	if err != nil {
		L.RaiseError("%s", err.Error())
	}
	L.Push(fn)
	return 1
}

func (h *Host) loadFile(L *lua.LState) int {
	name := L.CheckString(1)
	p, dir, msg := h.findFile(name)
	if p == "" {
		L.Push(lua.LString(msg))
		return 1
	}
	src, err := h.readChecked(name, p, dir)
	if err != nil {
		L.RaiseError("%s", err.Error())
	}
	if len(src) > 0 && src[0] == '#' { // a #! line, skipped as lua.LoadFile does
		if i := strings.IndexByte(string(src), '\n'); i >= 0 {
			src = src[i:]
		} else {
			src = nil
		}
	}
	fn, err := L.Load(strings.NewReader(string(src)), p)
	if err != nil {
		L.RaiseError("%s", err.Error())
	}
	L.Push(fn)
	return 1
}

// findFile searches package.path like Lua does; dir is the library
// directory of the template that matched.
func (h *Host) findFile(name string) (file, dir, msg string) {
	L := h.L
	pv, ok := L.GetField(L.GetGlobal("package"), "path").(lua.LString)
	if !ok {
		L.RaiseError("package.path must be a string")
	}
	rel := strings.ReplaceAll(name, ".", string(filepath.Separator))
	var msgs []string
	for _, t := range strings.Split(string(pv), ";") {
		if t == "" {
			continue
		}
		p := strings.ReplaceAll(t, "?", rel)
		st, err := os.Stat(p)
		if err != nil {
			msgs = append(msgs, err.Error())
			continue
		}
		if st.IsDir() {
			continue
		}
		d, _, found := strings.Cut(t, "?")
		if !found {
			return p, "", ""
		}
		return p, filepath.Dir(d + "x"), ""
	}
	return "", "", strings.Join(msgs, "\n\t")
}

// readChecked reads file p for require name. When p belongs to a library
// recorded in the lock file of its library directory, the whole library
// is verified once per host and p's content, the bytes that will be run,
// must match its lock entry.
func (h *Host) readChecked(name, p, dir string) ([]byte, error) {
	if dir == "" {
		return os.ReadFile(p)
	}
	lk, err := h.lockOf(dir)
	if err != nil {
		return nil, fmt.Errorf("require %q: %w", name, err)
	}
	rel, err := filepath.Rel(dir, p)
	if err != nil || lk == nil || len(lk.Libraries) == 0 {
		return os.ReadFile(p)
	}
	lib, inLib, _ := strings.Cut(filepath.ToSlash(rel), "/")
	if inLib == "" {
		if _, ok := lk.Libraries[strings.TrimSuffix(lib, ".lua")]; ok {
			return nil, fmt.Errorf("require %q: %s shadows the locked library %s in %s: remove it", name, p, strings.TrimSuffix(lib, ".lua"), dir)
		}
		return os.ReadFile(p)
	}
	e, ok := lk.Libraries[lib]
	if !ok {
		return os.ReadFile(p)
	}
	key := filepath.Join(dir, lib)
	verr, done := h.verified[key]
	if !done {
		ps, err := lk.Verify(dir, lib)
		switch {
		case err != nil:
			verr = err
		case len(ps) > 0:
			verr = errors.New(libs.Problems(ps))
		}
		h.verified[key] = verr
	}
	mismatch := func(what string) error {
		return fmt.Errorf("require %q: library %s at %s does not match its lock: %s (bkrun lib verify %s; bkrun lib update %s restores it)", name, lib, key, what, lib, lib)
	}
	if verr != nil {
		return nil, mismatch(verr.Error())
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	if want, ok := e.Files[inLib]; !ok {
		return nil, mismatch(inLib + " added")
	} else if libs.Hash(b) != want {
		return nil, mismatch(inLib + " changed")
	}
	return b, nil
}

func (h *Host) lockOf(dir string) (*libs.Lock, error) {
	if lk, ok := h.locks[dir]; ok {
		return lk, nil
	}
	lk, err := libs.ReadLock(dir)
	if err != nil {
		return nil, err
	}
	h.locks[dir] = lk
	return lk, nil
}

// VerifyLibrary checks what require name would load against its lock,
// without running it (bkrun check): nil for native modules, built-in
// libraries, unlocked files and names that do not resolve.
func (h *Host) VerifyLibrary(name string) error {
	if _, ok := h.modules[name]; ok || reserved(name) {
		return nil
	}
	p, dir, _ := h.findFile(name)
	if p == "" {
		return nil
	}
	_, err := h.readChecked(name, p, dir)
	return err
}
