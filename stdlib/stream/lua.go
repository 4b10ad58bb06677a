package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/bkrun/bkrun/runtime"
	"github.com/bkrun/bkrun/stdlib/disk"
	"github.com/bkrun/bkrun/stdlib/ssh"
	lua "github.com/yuin/gopher-lua"
)

// Module binds stream to Lua.
var Module = &runtime.Module{
	Name:    "stream",
	Summary: "copy sources to sinks in Go: parallel lz4/zstd, hashing, verified restore",
	Doc: `stream.copy reads a source (a disk.open source, a device or image path, or
any stream a module returns), compresses it on all cores in 1 MiB blocks and
writes it to a file, computing a BLAKE3 tree hash of the logical image on the
way. Memory stays bounded (about 40 MiB) whatever the size. Zero blocks (and
holes of sparse images) are neither compressed nor hashed twice: a
precomputed encoding is written. A local output file is written with O_DIRECT
where the file system allows it (buffered otherwise), so a backup neither
fills the page cache nor costs the CPU a copy into it.

Outputs are standard streams: lz4 frames (lz4 -d), zstd frames (zstd -d), or
raw bytes. Each output is written as .NAME.partial-XXXX in the destination
directory, synced, optionally verified, and renamed into place together with
its catalogue entry NAME.json (source, size, codec, hash, byte counts, times,
bkrun version). An existing output is replaced only with overwrite=true, and
only by a complete new one. On error or interrupt the partial file is removed.

The image hash (hash_algo blake3-tree-1MiB) is BLAKE3 over the BLAKE3 of each
1 MiB block; without bkrun:
  lz4 -dc IMG.lz4 | split -b 1M --filter='b3sum --no-names' | xxd -r -p | b3sum --no-names

A progress bar is drawn only when stderr is a terminal (and not -q).`,
	Funcs: []runtime.Func{
		{Name: "copy", Sig: "stream.copy{from=source, to=path|file, codec=\"lz4\", overwrite=false, verify=false, meta={...}, ssh=conn|{...}, via=\"sftp\"} -> summary",
			Doc: `Copy a source into a file with its catalogue entry. codec is lz4 (default),
zstd or none; verify=true decodes the written file and checks its hash before
renaming it into place; meta adds fields to the catalogue entry's "extra".
A stream source (btrfs.send, zfs.send, dump.stream, exec.stream) is read
once: when the copy ends, even by an error, it is closed and its command
stopped, so the next step may delete what it was reading.
to = "[user@]host:path" writes on another host over SFTP (a plain OpenSSH
server, nothing installed there), streamed with no temporary file on either
side but the remote .NAME.partial-XXXX, renamed into place with its catalogue
entry once the server has all of it. ssh is a connection from ssh.connect, or
a table of its options (port, user, identity, known_hosts, ...). via="receive"
sends through "bkrun receive --root DIR" on the other host (usually a forced
command; receiver= names another command): path is then relative to DIR, and
the receiver checks size and hash before the rename. to may also be a remote
file from conn:create(path) (written on that connection, committed with its
catalogue entry); from may be a remote file from conn:open(path).
The summary table has path, catalogue, source, size, zero_bytes, hole_bytes,
bytes_written, hash, codec, seconds, rate (bytes/s) and ratio.`},
		{Name: "restore", Sig: "stream.restore{from=image, to=target, overwrite=false} -> summary",
			Doc: `Decode an image onto a file or block device and verify it against its
catalogue entry. A file is written under a temporary name with holes for zero
blocks and renamed only after the hash matches; an existing file is replaced
only with overwrite=true. A block device is written in place and synced.`},
		{Name: "verify", Sig: "stream.verify(image) -> summary",
			Doc: "Decode an image and check its size and hash against its catalogue entry."},
		{Name: "info", Sig: "stream.info(image) -> table",
			Doc: "The catalogue entry of an image (IMAGE.json) as a table."},
		{Name: "summary", Sig: "stream.summary(result) -> string",
			Doc: `One line describing a copy, restore or verify result:
"1.0 GiB in 0.71 s (1.41 GiB/s), 361 MiB written (2.97:1), 512 MiB zero".`},
	},
	Open: open,
}

func open(h *runtime.Host, L *lua.LState) *lua.LTable {
	return runtime.Table(L, map[string]lua.LGFunction{
		"copy":    func(L *lua.LState) int { return luaCopy(h, L) },
		"restore": func(L *lua.LState) int { return luaRestore(h, L) },
		"verify":  func(L *lua.LState) int { return luaVerify(h, L) },
		"info": func(L *lua.LState) int {
			image := runtime.CheckString(L, 1, "stream.info")
			m, err := LoadMeta(image)
			if err != nil {
				runtime.Raise(L, "stream.info", err)
			}
			L.Push(metaTable(L, m))
			return 1
		},
		"summary": func(L *lua.LState) int {
			t, ok := L.Get(1).(*lua.LTable)
			if !ok {
				runtime.TypeError(L, 1, "stream.summary", "table")
			}
			L.Push(lua.LString(summaryLine(t)))
			return 1
		},
	})
}

// named is implemented by sources that know where they read from.
type named interface {
	Path() string
	Kind() string
}

// sourceOf resolves `from`: a userdata carrying a stream source, or a path
// to a device or image opened with disk.Open.
func sourceOf(h *runtime.Host, L *lua.LState, v lua.LValue, fn string) (src any, name, kind string, closeFn func()) {
	switch x := v.(type) {
	case lua.LString:
		s, err := disk.Open(string(x), disk.Options{Logger: h.Logger()})
		if err != nil {
			runtime.Raise(L, fn, err)
		}
		return s, s.Path(), s.Kind(), func() { s.Close() }
	case *lua.LUserData:
		switch s := x.Value.(type) {
		case BlockReader:
			name, kind = fmt.Sprint(s), ""
			if n, ok := s.(named); ok {
				name, kind = n.Path(), n.Kind()
			}
			return s, name, kind, func() {}
		case io.Reader:
			name = fmt.Sprint(s)
			if n, ok := s.(named); ok {
				name, kind = n.Path(), n.Kind()
			}
			return s, name, kind, func() { runtime.CloseConsumed(s) }
		}
	}
	runtime.ArgError(L, 1, fn, "option 'from': a source (disk.open(...)) or a device/image path expected, got "+v.Type().String())
	return nil, "", "", nil
}

func luaCopy(h *runtime.Host, L *lua.LState) int {
	const fn = "stream.copy"
	t, ok := L.Get(1).(*lua.LTable)
	if !ok {
		runtime.TypeError(L, 1, fn, "table")
	}
	o := runtime.OptsOf(L, t, 1, fn)
	fromV := o.Value("from")
	// to is a path, [user@]host:path, or a remote file from conn:create.
	var toFile *ssh.RemoteFile
	to := ""
	switch v := o.Value("to").(type) {
	case *lua.LNilType:
	case lua.LString:
		to = string(v)
	default:
		f, ok := ssh.FileFromLua(v)
		if !ok {
			runtime.ArgError(L, 1, fn, "option 'to': a path or a remote file (conn:create) expected, got "+v.Type().String())
		}
		toFile, to = f, f.Conn().String()+":"+f.Path
	}
	codec := o.String("codec", "lz4")
	overwrite := o.Bool("overwrite", false)
	verify := o.Bool("verify", false)
	workers := o.Int("workers", 0)
	sshV := o.Value("ssh")
	via := o.String("via", "sftp")
	receiverCmd := o.String("receiver", "bkrun receive")
	if via != "sftp" && via != "receive" {
		runtime.ArgError(L, 1, fn, fmt.Sprintf("option 'via': %q is not sftp or receive", via))
	}
	var extra map[string]any
	if mv, ok := o.Value("meta").(*lua.LTable); ok {
		extra = runtime.FromLua(mv).(map[string]any)
	}
	o.Done(false)
	if fromV == lua.LNil {
		runtime.ArgError(L, 1, fn, "option 'from' is required")
	}
	if to == "" {
		runtime.ArgError(L, 1, fn, "option 'to' is required (the output file)")
	}
	enc, err := NewEncoder(codec)
	if err != nil {
		runtime.ArgError(L, 1, fn, "option 'codec': "+err.Error())
	}
	remoteDest, remotePath, remote := ParseRemote(to)
	if toFile != nil {
		remote = true
	}
	sshConn, sshOpts := ssh.ConnOption(L, sshV, 1, fn)
	if remote && verify {
		runtime.ArgError(L, 1, fn, "option 'verify': not supported for a remote destination yet (the size is checked on the server before the rename)")
	}
	if h.DryRun() {
		name := fromV.String()
		if ud, ok := fromV.(*lua.LUserData); ok {
			if n, ok := ud.Value.(named); ok {
				name = n.Path()
			}
		}
		h.DryRunf("stream.copy %s -> %s (codec %s, catalogue %s)", name, to, codec, MetaPath(to))
		r := L.NewTable()
		r.RawSetString("path", lua.LString(to))
		r.RawSetString("dry_run", lua.LTrue)
		L.Push(r)
		return 1
	}
	src, name, kind, closeSrc := sourceOf(h, L, fromV, fn)
	defer closeSrc()
	var sink Sink
	var local *FileSink
	if toFile != nil {
		if toFile.Done() {
			runtime.ArgError(L, 1, fn, "option 'to': "+to+" was already committed or aborted")
		}
		sink = RemoteSinkFor(toFile)
	} else if remote {
		if sshConn == nil {
			c, err := ssh.Dial(h.Context(), remoteDest, sshOpts)
			if err != nil {
				runtime.Raise(L, fn, err)
			}
			defer c.Close()
			sshConn = c
		}
		if via == "receive" {
			sess, err := sshConn.Receiver(h.Context(), receiverCmd)
			if err != nil {
				runtime.Raise(L, fn, fmt.Errorf("%s: %w", to, err))
			}
			defer sess.Close()
			rs, err := CreateReceiver(sess, remotePath, overwrite)
			if err != nil {
				runtime.Raise(L, fn, fmt.Errorf("%s: %w", to, err))
			}
			sink = rs
		} else {
			rs, err := CreateRemote(sshConn, remotePath, overwrite)
			if err != nil {
				runtime.Raise(L, fn, fmt.Errorf("%s: %w", to, err))
			}
			sink = rs
		}
	} else {
		fs, err := CreateFile(to, overwrite)
		if err != nil {
			runtime.Raise(L, fn, err)
		}
		sink, local = fs, fs
	}
	defer sink.Abort()
	log := h.Logger()
	log.Debug("stream.copy", "from", name, "to", to, "codec", codec, "temp", sink.TempPath())
	var total int64 = -1
	if br, ok := src.(BlockReader); ok {
		total = br.Size()
	}
	progress, finish := bar(h, "backup", total)
	st, err := Copy(h.Context(), src, sink, CopyOptions{Encoder: enc, Workers: int(workers), Progress: progress})
	finish(err == nil)
	if err != nil {
		runtime.Raise(L, fn, copyError(name, to, err))
	}
	host, _ := os.Hostname()
	meta := &Meta{
		Format: MetaFormat, Source: name, SourceKind: kind, Size: st.Size, Codec: enc.Name(),
		BlockSize: BlockSize, HashAlgo: HashAlgo, Hash: st.Hash, ZeroBytes: st.ZeroBytes, HoleBytes: st.HoleBytes,
		BytesWritten: st.BytesWritten, Started: st.Start.UTC(), Finished: st.End.UTC(), Seconds: st.Duration().Seconds(),
		Host: host, BkrunVersion: runtime.Version, Extra: extra,
	}
	if verify && local != nil {
		if err := local.Sync(); err != nil {
			runtime.Raise(L, fn, fmt.Errorf("%s: %w", to, err))
		}
		if _, _, err := VerifyAgainst(h.Context(), local.TempPath(), meta, nil); err != nil {
			runtime.Raise(L, fn, fmt.Errorf("%s: verification of the new backup failed: %w", to, err))
		}
	}
	if err := sink.Commit(meta); err != nil {
		runtime.Raise(L, fn, fmt.Errorf("%s: %w", to, err))
	}
	log.Info("backup written", "path", to, "size", st.Size, "written", st.BytesWritten, "zero", st.ZeroBytes,
		"seconds", round(st.Duration().Seconds()), "hash", st.Hash)
	r := statsTable(L, st)
	r.RawSetString("path", lua.LString(to))
	r.RawSetString("catalogue", lua.LString(MetaPath(to)))
	r.RawSetString("source", lua.LString(name))
	r.RawSetString("verified", lua.LBool(verify))
	L.Push(r)
	return 1
}

// copyError names the side that failed: the source for read errors, the
// output for write errors, and passes interrupts through as they are.
func copyError(from, to string, err error) error {
	var se *runtime.SignalError
	if errors.As(err, &se) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("%s: %w", to, err)
	}
	var re *ReadError
	if errors.Is(err, ErrSourceShort) || errors.As(err, &re) {
		return fmt.Errorf("%s: %w", from, err)
	}
	return fmt.Errorf("%s: %w", to, err)
}

func luaRestore(h *runtime.Host, L *lua.LState) int {
	const fn = "stream.restore"
	t, ok := L.Get(1).(*lua.LTable)
	if !ok {
		runtime.TypeError(L, 1, fn, "table")
	}
	o := runtime.OptsOf(L, t, 1, fn)
	from := o.String("from", "")
	to := o.String("to", "")
	overwrite := o.Bool("overwrite", false)
	o.Done(false)
	if from == "" || to == "" {
		runtime.ArgError(L, 1, fn, "options 'from' (the backup) and 'to' (a file or block device) are required")
	}
	if h.DryRun() {
		h.DryRunf("stream.restore %s -> %s (verified against %s)", from, to, MetaPath(from))
		r := L.NewTable()
		r.RawSetString("path", lua.LString(to))
		r.RawSetString("dry_run", lua.LTrue)
		L.Push(r)
		return 1
	}
	var total int64 = -1
	if m, err := LoadMeta(from); err == nil {
		total = m.Size
	}
	progress, finish := bar(h, "restore", total)
	st, err := Restore(h.Context(), from, to, RestoreOptions{Overwrite: overwrite, Progress: progress})
	finish(err == nil)
	if err != nil {
		runtime.Raise(L, fn, err)
	}
	h.Logger().Info("restored", "from", from, "to", to, "size", st.Size, "seconds", round(st.Duration().Seconds()), "hash", st.Hash)
	r := statsTable(L, st)
	r.RawSetString("path", lua.LString(to))
	r.RawSetString("source", lua.LString(from))
	r.RawSetString("verified", lua.LTrue)
	L.Push(r)
	return 1
}

func luaVerify(h *runtime.Host, L *lua.LState) int {
	const fn = "stream.verify"
	image := runtime.CheckString(L, 1, fn)
	var total int64 = -1
	if m, err := LoadMeta(image); err == nil {
		total = m.Size
	}
	progress, finish := bar(h, "verify", total)
	_, st, err := Verify(h.Context(), image, progress)
	finish(err == nil)
	if err != nil {
		runtime.Raise(L, fn, err)
	}
	r := statsTable(L, st)
	r.RawSetString("path", lua.LString(image))
	r.RawSetString("verified", lua.LTrue)
	L.Push(r)
	return 1
}

func bar(h *runtime.Host, label string, total int64) (func(int64), func(bool)) {
	if !h.Progress() {
		return nil, func(bool) {}
	}
	b := NewBar(h.Stderr(), label, max(total, 0))
	return b.Set, b.Done
}

func round(f float64) float64 { return float64(int64(f*1000)) / 1000 }

func statsTable(L *lua.LState, st Stats) *lua.LTable {
	t := L.NewTable()
	set := func(k string, v lua.LValue) { t.RawSetString(k, v) }
	set("size", lua.LNumber(st.Size))
	set("zero_bytes", lua.LNumber(st.ZeroBytes))
	set("hole_bytes", lua.LNumber(st.HoleBytes))
	if st.BytesWritten > 0 {
		set("bytes_written", lua.LNumber(st.BytesWritten))
		set("ratio", lua.LNumber(round(float64(st.Size)/float64(st.BytesWritten))))
	}
	set("hash", lua.LString(st.Hash))
	set("codec", lua.LString(st.Codec))
	set("seconds", lua.LNumber(round(st.Duration().Seconds())))
	set("rate", lua.LNumber(int64(st.Rate())))
	return t
}

func metaTable(L *lua.LState, m *Meta) *lua.LTable {
	t := L.NewTable()
	set := func(k string, v lua.LValue) { t.RawSetString(k, v) }
	set("format", lua.LString(m.Format))
	set("source", lua.LString(m.Source))
	set("source_kind", lua.LString(m.SourceKind))
	set("size", lua.LNumber(m.Size))
	set("codec", lua.LString(m.Codec))
	set("block_size", lua.LNumber(m.BlockSize))
	set("hash_algo", lua.LString(m.HashAlgo))
	set("hash", lua.LString(m.Hash))
	set("zero_bytes", lua.LNumber(m.ZeroBytes))
	set("hole_bytes", lua.LNumber(m.HoleBytes))
	set("bytes_written", lua.LNumber(m.BytesWritten))
	set("started", lua.LString(m.Started.Format(time.RFC3339)))
	set("finished", lua.LString(m.Finished.Format(time.RFC3339)))
	set("seconds", lua.LNumber(m.Seconds))
	set("host", lua.LString(m.Host))
	set("bkrun_version", lua.LString(m.BkrunVersion))
	if len(m.Extra) > 0 {
		set("extra", runtime.ToLua(L, m.Extra))
	}
	return t
}

func summaryLine(t *lua.LTable) string {
	num := func(k string) float64 { return float64(lua.LVAsNumber(t.RawGetString(k))) }
	s := fmt.Sprintf("%s in %.2f s (%s/s)", human(num("size")), num("seconds"), human(num("rate")))
	if w := num("bytes_written"); w > 0 {
		s += fmt.Sprintf(", %s written (%.2f:1)", human(w), num("ratio"))
	}
	if z := num("zero_bytes"); z > 0 {
		s += fmt.Sprintf(", %s zero", human(z))
	}
	if p := t.RawGetString("path"); p != lua.LNil {
		s = filepath.Clean(p.String()) + ": " + s
	}
	return s
}

func human(b float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for b >= 1024 && i < len(units)-1 {
		b /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f B", b)
	}
	return fmt.Sprintf("%.1f %s", b, units[i])
}
