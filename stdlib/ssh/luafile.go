package ssh

import (
	"context"
	"io"

	"github.com/bkrun/bkrun/runtime"
	lua "github.com/yuin/gopher-lua"
)

// Lua objects for remote files: conn:create returns a file being written
// (a sink for stream.copy{to=...} and conn:exec{stdout=...}), conn:open a
// file being read (a source for stream.copy{from=...} and stdin). Both are
// closed by the clean-up stack; an uncommitted file is removed then.

const (
	fileType   = "ssh.file"
	sourceType = "ssh.source"
)

type luaFile struct {
	f    *RemoteFile
	step *runtime.Step
	dry  bool // made under --dry-run: names the file, writes nothing
}

// FileFromLua returns the remote file inside a conn:create userdata.
func FileFromLua(v lua.LValue) (*RemoteFile, bool) {
	if ud, ok := v.(*lua.LUserData); ok {
		if lf, ok := ud.Value.(*luaFile); ok {
			return lf.f, true
		}
	}
	return nil, false
}

func (b *binding) fileMetatables(L *lua.LState) {
	fileMT := L.NewTypeMetatable(fileType)
	fileMethods := map[string]*lua.LFunction{
		"commit": L.NewFunction(func(L *lua.LState) int {
			lf := checkFile(L, "file:commit")
			if lf.dry {
				return 0
			}
			err := lf.f.Commit()
			lf.step.Cancel()
			if err != nil {
				runtime.Raise(L, "file:commit", err)
			}
			return 0
		}),
		"abort": L.NewFunction(func(L *lua.LState) int {
			lf := checkFile(L, "file:abort")
			if lf.dry {
				return 0
			}
			err := lf.f.Abort()
			lf.step.Cancel()
			if err != nil {
				runtime.Raise(L, "file:abort", err)
			}
			return 0
		}),
	}
	L.SetField(fileMT, "__index", L.NewFunction(func(L *lua.LState) int {
		lf := checkFile(L, "ssh.file")
		switch k := L.CheckString(2); k {
		case "path":
			L.Push(lua.LString(lf.f.Path))
		case "temp":
			L.Push(lua.LString(lf.f.TempPath()))
		case "written":
			L.Push(lua.LNumber(lf.f.Written()))
		case "done":
			L.Push(lua.LBool(lf.f.Done()))
		default:
			if f := fileMethods[k]; f != nil {
				L.Push(f)
			} else {
				L.Push(lua.LNil)
			}
		}
		return 1
	}))
	L.SetField(fileMT, "__tostring", L.NewFunction(func(L *lua.LState) int {
		lf := checkFile(L, "tostring")
		L.Push(lua.LString("ssh.file(" + lf.f.Conn().String() + ":" + lf.f.Path + ")"))
		return 1
	}))

	smt := L.NewTypeMetatable(sourceType)
	closeSrc := L.NewFunction(func(L *lua.LState) int {
		ud, ok := L.Get(1).(*lua.LUserData)
		if !ok {
			runtime.TypeError(L, 1, "source:close", "remote source (call it as src:close())")
		}
		if r, ok := ud.Value.(*RemoteReader); ok {
			r.Close()
		}
		return 0
	})
	L.SetField(smt, "__index", L.NewFunction(func(L *lua.LState) int {
		ud := L.CheckUserData(1)
		r, _ := ud.Value.(*RemoteReader)
		switch L.CheckString(2) {
		case "path":
			L.Push(lua.LString(r.Path()))
		case "size":
			L.Push(lua.LNumber(r.Size()))
		case "close":
			L.Push(closeSrc)
		default:
			L.Push(lua.LNil)
		}
		return 1
	}))
	L.SetField(smt, "__tostring", L.NewFunction(func(L *lua.LState) int {
		r, _ := L.CheckUserData(1).Value.(*RemoteReader)
		L.Push(lua.LString("ssh.source(" + r.Path() + ")"))
		return 1
	}))
}

func checkFile(L *lua.LState, fn string) *luaFile {
	if ud, ok := L.Get(1).(*lua.LUserData); ok {
		if lf, ok := ud.Value.(*luaFile); ok {
			return lf
		}
	}
	runtime.TypeError(L, 1, fn, "remote file from conn:create (call it as file:method())")
	return nil
}

// create binds conn:create(path [, {overwrite=false}]).
func (b *binding) create(L *lua.LState) int {
	const fn = "conn:create"
	lc := checkConn(L, fn)
	p := runtime.CheckString(L, 2, fn)
	o := runtime.OptsAt(L, 3, fn)
	overwrite := o.Bool("overwrite", false)
	o.Done(false)
	if b.h.DryRun() {
		// A stand-in that stream.copy and conn:exec accept (and print)
		// without writing anything.
		b.h.DryRunf("ssh %s: create %s (temporary name, renamed on commit)", lc.c, p)
		runtime.PushObject(L, &luaFile{f: &RemoteFile{c: lc.c, Path: p, overwrite: overwrite}, dry: true}, fileType)
		return 1
	}
	f, err := lc.c.Create(p, overwrite)
	if err != nil {
		runtime.Raise(L, fn, err)
	}
	lf := &luaFile{f: f}
	lf.step = b.h.Defer("remove unfinished remote file "+lc.c.String()+":"+f.TempPath(), func(context.Context) error {
		return f.Abort() // a no-op once committed
	})
	runtime.PushObject(L, lf, fileType)
	return 1
}

// openFile binds conn:open(path).
func (b *binding) openFile(L *lua.LState) int {
	const fn = "conn:open"
	lc := checkConn(L, fn)
	p := runtime.CheckString(L, 2, fn)
	r, err := lc.c.Open(p)
	if err != nil {
		runtime.Raise(L, fn, err)
	}
	b.h.Defer("close remote file "+r.Path(), func(context.Context) error { r.Close(); return nil })
	runtime.PushObject(L, r, sourceType)
	return 1
}

// stdoutOf resolves conn:exec's stdout option: a remote file from
// conn:create, committed only when the command succeeds.
func stdoutOf(L *lua.LState, v lua.LValue, fn string) (*luaFile, io.Writer) {
	if v == lua.LNil {
		return nil, nil
	}
	if ud, ok := v.(*lua.LUserData); ok {
		if lf, ok := ud.Value.(*luaFile); ok {
			return lf, lf.f
		}
	}
	runtime.ArgError(L, 3, fn, "option 'stdout': a remote file (conn:create) expected, got "+v.Type().String())
	return nil, nil
}
