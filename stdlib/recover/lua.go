package recover

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"

	"github.com/bkrun/bkrun/runtime"
	"github.com/bkrun/bkrun/stdlib/btrfs"
	"github.com/bkrun/bkrun/stdlib/catalog"
	"github.com/bkrun/bkrun/stdlib/exec"
	"github.com/bkrun/bkrun/stdlib/stream"
	lua "github.com/yuin/gopher-lua"
)

// Module binds recover to Lua.
var Module = &runtime.Module{
	Name:    "recover",
	Summary: "get data back: verify, restore an image, a dump chain or a snapshot, mount an image read-only, list and extract files",
	Doc: `recover works on the backups stream.copy wrote: a backup is given as a table
from catalog (cat:backups(), cat:find(); its field path is used) or as the path
of the data file, whose catalogue entry X.json must exist (recover.attach and
recover.files also take a raw image file without one). Every decoded byte is
checked against the catalogue's BLAKE3 tree hash; nothing passes through Lua.

A dump backup (kind "dump", written by xen-backup.lua) is restored with its
chain: the level 0 dump and the incrementals leading to it (see catalog's
cat:chain). The chain is looked up in the catalogue given with
{catalog = cat}, or else in a scan of the backup's directory; a missing level
is refused before anything is written, naming it. Each dump is decoded in Go
and piped into restore(8) (restore -r to restore, -t to list, -x -N to walk,
-x -a -o -u to extract), run without a controlling terminal so that it never
waits for an answer. restore -r applies an incremental only on the dump whose
date is exactly the -T date the incremental was taken with ("Incremental tape
too high" otherwise); recover.restore reads the dump headers and refuses such
a chain up front (recover.header shows the dates).

An image (kind "image": a disk or partition copied whole) is restored with
stream.restore's code, or attached: decoded to a sparse temporary image when
compressed, its partition table read natively, the partition attached as a
read-only loop device and mounted read-only (ext2/3/4 with ro,noload, so a
dirty journal is left alone). The mount, the loop device and the temporary
image are undone when the run ends, on error or signal, or by recover.detach.

A snapshot backup (kind "snapshot": a read-only btrfs subvolume received by
btrfs-snapsync.lua, with its entry SNAP.json) is a tree already: nothing is
decoded. recover.verify checks it is still a read-only subvolume with the
UUIDs its entry recorded; recover.restore makes a writable snapshot of it at a
new path (btrfs subvolume snapshot), the rollback of the subvolume it mirrors;
recover.files walks it, recover.extract copies from it, recover.attach returns
its own path. A backup of a catalogue scanned over SFTP ("host:path") is
refused by every function: run them on the backup server.

Long steps draw a progress bar on a terminal. Under --dry-run, restore,
attach, extract and files of an image print what they would do and change
nothing; verify and files of a dump only read, and run as usual.`,
	Funcs: []runtime.Func{
		{Name: "verify", Sig: `recover.verify(b [, {catalog=cat}]) -> {ok=true, path=, kind=, bytes=, hash=, entries=, level=, date=, uuid=, received_uuid=}`,
			Doc: `Decode the backup and check it against its catalogue entry (size and hash),
writing nothing. A dump is also walked: the decoded archive is piped into
restore -t, which must read it without error; entries is the number of names
it listed (an incremental lists only what it holds), level and date (Unix
seconds) come from its header (see recover.header). A snapshot is not read:
it must be a read-only btrfs subvolume (btrfs subvolume show) whose uuid and
received_uuid, returned, match its entry. Raises on a corrupt, truncated or
unreadable backup, or a snapshot missing, writable or replaced, naming it.`},
		{Name: "header", Sig: `recover.header(b [, {catalog=cat}]) -> {level=, date=, base=}`,
			Doc: `The header of a dump backup, read from its first decoded record: level, date
(Unix seconds: restore -t's "Dump date", when dump started) and base (the -T
date it was taken against, "Dumped from"; nil for a full dump). restore -r
applies an incremental only on top of the dump whose date is exactly its
base, so a recipe that keeps its own dump history should record date, not
the time its run started, as the base of later incrementals.`},
		{Name: "restore", Sig: `recover.restore(b, target [, {catalog=cat, overwrite=false}]) -> {path=, kind=, bytes=, applied={path, ...}}`,
			Doc: `Restore a backup. An image or stream is decoded onto target, a file (written
under a temporary name, verified, renamed; overwrite=true replaces an existing
file) or a block device. A dump is restored with its whole chain into the
directory target (created if missing; an existing one must be empty): every
dump of the chain is first verified, then each is piped into restore -r run
inside target, oldest first; restoresymtable is removed at the end and
restore's temporary files are kept inside target until then. applied lists
the dumps applied, oldest first. A chain with a missing level or a corrupt
dump is refused before anything is written. A snapshot is verified, then
restored as a new writable subvolume at target (btrfs subvolume snapshot
SNAP target): target must not exist (overwrite does not apply) and must be on
the snapshot's btrfs filesystem. To roll a subvolume back, move it aside and
restore the snapshot at its path.`},
		{Name: "attach", Sig: `recover.attach(b [, {partition=n, scratch=dir}]) -> mountpoint`,
			Doc: `Mount an image backup (or a raw image file) read-only on a temporary
directory and return its path. A compressed backup is first decoded to a
sparse temporary image in scratch (default the system's temporary directory),
verified; an uncompressed one (codec none) is attached in place, unverified
(recover.verify checks it). Partition n is mounted; with no partition given, an image without a
partition table is mounted whole, and an image with a table mounts its only
partition or its only Linux partition (types linux, linux-root-x86-64,
linux-home); otherwise the error lists the partitions. A file that has no
partition table and no filesystem mount recognises is refused ("not a disk
image") with nothing left attached. Unmounted and detached when the run ends
or by recover.detach. A snapshot needs no mount: its own directory (read-only)
is returned, and recover.detach of it does nothing.`},
		{Name: "detach", Sig: `recover.detach(mountpoint)`,
			Doc: `Undo recover.attach now: unmount, detach the loop device, remove the mount
point and the temporary image. Raises if mountpoint was not made by
recover.attach in this run.`},
		{Name: "files", Sig: `recover.files(b [, {catalog=cat, exact=false, partition=n, scratch=dir}]) -> {path, ...}`,
			Doc: `The names in a backup, relative to the filesystem's root ("etc/fstab"),
sorted, directories included. For a dump the listings (restore -t) of every
dump of its chain are merged. Limit: restore -t lists what a dump holds, not
what was deleted before it, so a file deleted between two dumps of the chain
is still listed (recover.restore does remove it). exact=true lists exactly the
tree of the last dump instead, by restoring the chain into a temporary
directory in scratch and walking it (it needs the space and time of a full
restore). For an image the image is attached read-only (as recover.attach),
walked and detached; a snapshot's directory is walked.`},
		{Name: "extract", Sig: `recover.extract(b, paths, dest [, {catalog=cat, exact=false, partition=n, scratch=dir}]) -> {path, ...}`,
			Doc: `Copy files or directories (paths: a name or a list of names relative to the
filesystem's root) out of a backup into dest (created if missing), keeping
their place in the tree (dest/etc/fstab), mode, times and, as root, owner;
returns the paths written. A name not in the backup raises, naming it, before
anything is written. From a dump chain a file comes from the newest dump
holding it (restore -x), a directory from every dump holding part of it; as
with recover.files, a name deleted between two dumps of the chain can come
back: exact=true restores the chain into a temporary directory in scratch
first and copies from there. From an image files are copied from a read-only
mount, from a snapshot out of its directory.
Files are extracted into a fresh directory inside dest and then moved into
place: an existing file is replaced, a directory merged into, a symbolic link
in dest never followed.`},
	},
	Open: open,
}

type binding struct {
	h      *runtime.Host
	mu     sync.Mutex
	mounts map[string]attached
}

type attached struct {
	m    *Mount
	step *runtime.Step
}

func open(h *runtime.Host, L *lua.LState) *lua.LTable {
	b := &binding{h: h, mounts: map[string]attached{}}
	return runtime.Table(L, map[string]lua.LGFunction{
		"verify":  b.verify,
		"restore": b.restore,
		"header":  b.header,
		"attach":  b.attach,
		"detach":  b.detach,
		"files":   b.files,
		"extract": b.extract,
	})
}

// backupArg reads argument n: a backup table (field path) or a path.
func backupArg(L *lua.LState, n int, fn string) string {
	switch v := L.Get(n).(type) {
	case lua.LString:
		if v == "" {
			runtime.ArgError(L, n, fn, "empty path")
		}
		return string(v)
	case *lua.LTable:
		p, ok := v.RawGetString("path").(lua.LString)
		if !ok || p == "" {
			runtime.ArgError(L, n, fn, "a backup table without a path")
		}
		return string(p)
	}
	runtime.TypeError(L, n, fn, "backup (table from catalog) or path")
	return ""
}

// options reads the options table at argument n into Options.
func (b *binding) options(L *lua.LState, n int, fn string, keys ...string) Options {
	o := runtime.OptsAt(L, n, fn)
	opts := b.base()
	for _, k := range keys {
		switch k {
		case "catalog":
			switch c := o.Value("catalog").(type) {
			case *lua.LNilType:
			case *lua.LUserData:
				cat, ok := c.Value.(*catalog.Catalog)
				if !ok {
					runtime.ArgError(L, n, fn, "option 'catalog': a catalogue (catalog.scan) expected")
				}
				opts.Catalog = cat
			default:
				runtime.ArgError(L, n, fn, "option 'catalog': a catalogue (catalog.scan) expected, got "+c.Type().String())
			}
		case "partition":
			p := o.Int("partition", 0)
			if p < 0 {
				runtime.ArgError(L, n, fn, fmt.Sprintf("option 'partition': a positive index expected, got %d", p))
			}
			opts.Partition = int(p)
		case "scratch":
			opts.Scratch = o.String("scratch", "")
		case "overwrite":
			opts.Overwrite = o.Bool("overwrite", false)
		case "exact":
			opts.Exact = o.Bool("exact", false)
		}
	}
	o.Done(false)
	return opts
}

func (b *binding) base() Options {
	o := Options{Logger: b.h.Logger()}
	if b.h.Progress() {
		o.Progress = func(label string, total int64) (func(int64), func(bool)) {
			bar := stream.NewBar(b.h.Stderr(), label, max(total, 0))
			return bar.Set, bar.Done
		}
	}
	return o
}

func (b *binding) verify(L *lua.LState) int {
	const fn = "recover.verify"
	path := backupArg(L, 1, fn)
	o := b.options(L, 2, fn, "catalog")
	r, err := Verify(b.h.Context(), path, o)
	if err != nil {
		runtime.Raise(L, fn, err)
	}
	t := L.NewTable()
	t.RawSetString("ok", lua.LTrue)
	t.RawSetString("path", lua.LString(r.Path))
	t.RawSetString("kind", lua.LString(r.Kind))
	t.RawSetString("bytes", lua.LNumber(r.Bytes))
	t.RawSetString("hash", lua.LString(r.Hash))
	if r.Kind == catalog.KindSnapshot {
		t.RawSetString("uuid", lua.LString(r.UUID))
		t.RawSetString("received_uuid", lua.LString(r.ReceivedUUID))
	}
	if r.Kind == catalog.KindDump {
		t.RawSetString("entries", lua.LNumber(r.Entries))
		t.RawSetString("level", lua.LNumber(r.Header.Level))
		t.RawSetString("date", lua.LNumber(r.Header.Date.Unix()))
	}
	L.Push(t)
	return 1
}

func (b *binding) header(L *lua.LState) int {
	const fn = "recover.header"
	path := backupArg(L, 1, fn)
	o := b.options(L, 2, fn, "catalog")
	bk, _, err := Resolve(path, o)
	if err != nil {
		runtime.Raise(L, fn, err)
	}
	if bk.Kind != catalog.KindDump {
		runtime.Raise(L, fn, fmt.Errorf("%s: not a dump backup (kind %s)", bk.Path, bk.Kind))
	}
	hd, err := ReadDumpHeader(b.h.Context(), bk)
	if err != nil {
		runtime.Raise(L, fn, err)
	}
	t := L.NewTable()
	t.RawSetString("level", lua.LNumber(hd.Level))
	t.RawSetString("date", lua.LNumber(hd.Date.Unix()))
	if !hd.Base.IsZero() {
		t.RawSetString("base", lua.LNumber(hd.Base.Unix()))
	}
	L.Push(t)
	return 1
}

func (b *binding) restore(L *lua.LState) int {
	const fn = "recover.restore"
	path := backupArg(L, 1, fn)
	target := runtime.CheckPath(L, 2, fn)
	o := b.options(L, 3, fn, "catalog", "overwrite")
	if b.h.DryRun() {
		bk, chain, err := Chain(path, o)
		if err != nil {
			runtime.Raise(L, fn, err)
		}
		applied := L.NewTable()
		if bk.Kind == catalog.KindDump {
			b.h.DryRunf("recover.restore: verify %d dump(s), then restore into %s (created if missing, must be empty)", len(chain), target)
			for _, c := range chain {
				b.h.DryRunf("cd %s && restore -r -f - < decoded %s (level %d)", target, c.Path, c.Level)
				applied.Append(lua.LString(c.Path))
			}
			b.h.DryRunf("rm %s", filepath.Join(target, "restoresymtable"))
		} else if bk.Kind == catalog.KindSnapshot {
			b.h.DryRunf("recover.restore: check %s is a read-only subvolume, then %s", bk.Path, exec.Quote(btrfs.Argv(btrfs.SnapshotArgs(bk.Path, target, false)...)))
			applied.Append(lua.LString(bk.Path))
		} else {
			b.h.DryRunf("stream.restore %s -> %s (verified against %s)", bk.Path, target, stream.MetaPath(bk.Path))
			applied.Append(lua.LString(bk.Path))
		}
		t := L.NewTable()
		t.RawSetString("path", lua.LString(target))
		t.RawSetString("kind", lua.LString(bk.Kind))
		t.RawSetString("applied", applied)
		t.RawSetString("dry_run", lua.LTrue)
		L.Push(t)
		return 1
	}
	r, err := Restore(b.h.Context(), path, target, o)
	if err != nil {
		runtime.Raise(L, fn, err)
	}
	t := L.NewTable()
	t.RawSetString("path", lua.LString(r.Target))
	t.RawSetString("kind", lua.LString(r.Kind))
	t.RawSetString("bytes", lua.LNumber(r.Bytes))
	applied := L.NewTable()
	for _, p := range r.Applied {
		applied.Append(lua.LString(p))
	}
	t.RawSetString("applied", applied)
	L.Push(t)
	return 1
}

func (b *binding) attach(L *lua.LState) int {
	const fn = "recover.attach"
	path := backupArg(L, 1, fn)
	o := b.options(L, 2, fn, "partition", "scratch")
	if b.h.DryRun() {
		if bk, _, err := Resolve(path, o); err == nil && bk.Kind == catalog.KindSnapshot {
			L.Push(lua.LString(bk.Path)) // nothing to do
			return 1
		}
		b.h.DryRunf("recover.attach %s: decode to a temporary image if compressed, losetup --find --show --read-only (partition %s), mount -o ro on a temporary directory", path, partName(o.Partition))
		L.Push(lua.LString(filepath.Join(o.scratch(), "bkrun-mnt-X")))
		return 1
	}
	m, err := Attach(b.h.Context(), path, o)
	if err != nil {
		runtime.Raise(L, fn, err)
	}
	step := b.h.Defer("recover.detach "+m.Path, func(context.Context) error { return m.Close() })
	b.mu.Lock()
	b.mounts[m.Path] = attached{m, step}
	b.mu.Unlock()
	L.Push(lua.LString(m.Path))
	return 1
}

func partName(n int) string {
	if n == 0 {
		return "chosen"
	}
	return fmt.Sprint(n)
}

func (b *binding) detach(L *lua.LState) int {
	const fn = "recover.detach"
	mnt := runtime.CheckPath(L, 1, fn)
	if b.h.DryRun() {
		b.h.DryRunf("recover.detach %s: umount, losetup -d, remove the temporary files", mnt)
		return 0
	}
	b.mu.Lock()
	a, ok := b.mounts[filepath.Clean(mnt)]
	delete(b.mounts, filepath.Clean(mnt))
	b.mu.Unlock()
	if !ok {
		runtime.Raise(L, fn, fmt.Errorf("%s: not a mount made by recover.attach in this run", mnt))
	}
	a.step.Cancel()
	if err := a.m.Close(); err != nil {
		runtime.Raise(L, fn, err)
	}
	return 0
}

func (b *binding) files(L *lua.LState) int {
	const fn = "recover.files"
	path := backupArg(L, 1, fn)
	o := b.options(L, 2, fn, "catalog", "partition", "scratch", "exact")
	if b.h.DryRun() {
		if bk, _, err := Resolve(path, o); err != nil || (bk.Kind != catalog.KindDump || o.Exact) && bk.Kind != catalog.KindSnapshot {
			b.h.DryRunf("recover.files %s: attach read-only (or restore the dump chain into a temporary directory), walk, clean up", path)
			L.Push(L.NewTable())
			return 1
		}
	}
	entries, err := Files(b.h.Context(), path, o)
	if err != nil {
		runtime.Raise(L, fn, err)
	}
	t := L.CreateTable(len(entries), 0)
	for _, e := range entries {
		t.Append(lua.LString(e.Path))
	}
	L.Push(t)
	return 1
}

func (b *binding) extract(L *lua.LState) int {
	const fn = "recover.extract"
	path := backupArg(L, 1, fn)
	var names []string
	switch v := L.Get(2).(type) {
	case lua.LString:
		names = []string{string(v)}
	case *lua.LTable:
		for i := 1; i <= v.Len(); i++ {
			s, ok := v.RawGetInt(i).(lua.LString)
			if !ok {
				runtime.ArgError(L, 2, fn, fmt.Sprintf("paths[%d]: string expected, got %s", i, v.RawGetInt(i).Type()))
			}
			names = append(names, string(s))
		}
		if len(names) == 0 {
			runtime.ArgError(L, 2, fn, "empty list of paths")
		}
	default:
		runtime.TypeError(L, 2, fn, "path or list of paths")
	}
	dest := runtime.CheckPath(L, 3, fn)
	o := b.options(L, 4, fn, "catalog", "partition", "scratch", "exact")
	for _, n := range names {
		if _, err := cleanName(n); err != nil {
			runtime.ArgError(L, 2, fn, err.Error())
		}
	}
	if b.h.DryRun() {
		b.h.DryRunf("recover.extract %s: %s -> %s", path, strings.Join(names, ", "), dest)
		L.Push(L.NewTable())
		return 1
	}
	out, err := Extract(b.h.Context(), path, names, dest, o)
	if err != nil {
		runtime.Raise(L, fn, err)
	}
	t := L.NewTable()
	for _, p := range out {
		t.Append(lua.LString(p))
	}
	L.Push(t)
	return 1
}
