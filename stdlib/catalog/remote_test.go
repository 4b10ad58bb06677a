package catalog_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/bkrun/bkrun/internal/sshtest"
	"github.com/bkrun/bkrun/runtime/luatest"
	"github.com/bkrun/bkrun/stdlib/catalog"
	"github.com/bkrun/bkrun/stdlib/ssh"
)

// A backup server's directory scanned over SFTP gives the same catalogue
// as a local scan, with paths in the host:path form stream.copy takes.
func TestScanRemote(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	d := t.TempDir()
	p := dumps(t, d, 5)
	os.WriteFile(filepath.Join(d, "master", "notes.txt"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(d, "master", ".1.1106.dump.lz4.partial-abc"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(d, "broken.json"), []byte("{"), 0o644)
	os.Symlink("/etc", filepath.Join(d, "link"))

	local, err := catalog.Scan(d)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := ssh.Dial(t.Context(), s.Dest(), ssh.Options{Identity: []string{s.Identity()}, KnownHosts: s.KnownHosts(), ConfigFile: "none", AgentSocket: "none"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dest := s.User() + "@127.0.0.1"
	remote, err := catalog.ScanRemote(conn, dest, d)
	if err != nil {
		t.Fatal(err)
	}
	strip := func(x string) string { return strings.TrimPrefix(x, dest+":") }
	if len(remote.Backups) != len(local.Backups) || len(remote.Backups) != 10 {
		t.Fatalf("remote %d backups, local %d", len(remote.Backups), len(local.Backups))
	}
	for i, b := range remote.Backups {
		l := local.Backups[i]
		if strip(b.Path) != l.Path || b.Source != l.Source || b.Level != l.Level || !b.Time.Equal(l.Time) || b.Meta.Hash != l.Meta.Hash {
			t.Errorf("backup %d: remote %s %s %d, local %s %s %d", i, b.Path, b.Source, b.Level, l.Path, l.Source, l.Level)
		}
	}
	if len(remote.Problems) != 2 || len(local.Problems) != 2 {
		t.Fatalf("problems: remote %v, local %v", remote.Problems, local.Problems)
	}
	for i, pr := range remote.Problems {
		if strip(pr.Path) != local.Problems[i].Path || pr.Reason != local.Problems[i].Reason {
			t.Errorf("problem %d: remote %v, local %v", i, pr, local.Problems[i])
		}
	}
	if strings.Join(remote.Unknown, " ") != dest+":"+filepath.Join(d, "link")+" "+dest+":"+filepath.Join(d, "master", "notes.txt") {
		t.Errorf("unknown: %v", remote.Unknown)
	}
	// Chains and lookups work on remote paths.
	b, ok := remote.Find(dest + ":" + p[4])
	if !ok {
		t.Fatal("Find by remote path")
	}
	chain, err := remote.Chain(b)
	if err != nil || len(chain) != 3 || chain[0].Path != dest+":"+p[0] {
		t.Errorf("chain %v: %v", chain, err)
	}
	if _, ok := remote.Find("master/1.1101.dump.lz4"); ok {
		t.Error("found a file that does not exist")
	}
	if _, ok := remote.Find(strings.TrimPrefix(p[0], d+"/")); !ok {
		t.Error("Find by relative path")
	}
	// A missing remote directory is named once.
	if _, err := catalog.ScanRemote(conn, dest, d+"/nope"); err == nil || err.Error() != dest+":"+d+"/nope: file does not exist" {
		t.Errorf("missing dir: %v", err)
	}

	// From Lua: with a connection, with options, and an unreachable host.
	h := luatest.NewHost(t, luatest.HostOptions{Globals: map[string]string{
		"DEST": dest + ":" + d, "ID": s.Identity(), "KH": s.KnownHosts(), "PORT": strconv.Itoa(s.Port()),
	}, Prelude: `local catalog, ssh = require "catalog", require "ssh"; `}, catalog.Module, ssh.Module)
	h.Run(t, `
		local opts = {identity = ID, known_hosts = KH, config = "none", port = tonumber(PORT)}
		local cat = catalog.scan(DEST, {ssh = opts})
		assert(#cat:backups() == 10 and #cat:problems() == 2, #cat:backups())
		assert(cat.dir == DEST, cat.dir)
		local c = ssh.connect(DEST:match("^[^:]+"), opts)
		assert(#catalog.scan(DEST, {ssh = c}):sources() == 2)
		local ok, msg = pcall(catalog.scan, DEST, {ssh = 5})
		assert(not ok and msg:find("option 'ssh'", 1, true), msg)
	`)
}
