package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bkrun/bkrun/internal/sshtest"
)

// disk-image.lua with a remote DEST (written through conn:create) and a
// remote SOURCE (read through conn:open, a pull backup), against a real
// sshd: both backups decode byte-identical to the image; a remote SOURCE
// with a byte range, an unknown host and a missing remote image are clear
// errors that leave nothing behind.
func TestDiskImageRemote(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	dir := scratchDir(t)
	img := filepath.Join(dir, "vm.img")
	writeImage(t, img, 11, span{'t', 3}, span{'z', 2}, span{'r', 1})
	ssh := []string{"--port", fmt.Sprint(s.Port()), "--identity", s.Identity(), "--known-hosts", s.KnownHosts()}
	host := s.User() + "@127.0.0.1"
	remote := mkdir(t, dir, "remote")
	local := mkdir(t, dir, "local")

	// Push: local image to host:path.
	pushed := filepath.Join(remote, "vm.img.lz4")
	r := bkrun(t, "", append([]string{"scripts/disk-image.lua", img, host + ":" + pushed}, ssh...)...)
	mustSucceed(t, r, "disk-image.lua to a remote DEST")
	sameAsDecoded(t, img, "lz4", "-dc", pushed)
	readCatalogue(t, pushed)
	// Again without --overwrite: refused, the first backup kept.
	r = bkrun(t, "", append([]string{"scripts/disk-image.lua", img, host + ":" + pushed}, ssh...)...)
	if r.code != 1 || !strings.Contains(r.stderr, "already exists") {
		t.Errorf("second push: %+v", r)
	}
	sameAsDecoded(t, img, "lz4", "-dc", pushed)

	// Pull: host:path of an image to a local backup.
	pulled := filepath.Join(local, "vm.img.lz4")
	r = bkrun(t, "", append([]string{"scripts/disk-image.lua", host + ":" + img, pulled}, ssh...)...)
	mustSucceed(t, r, "disk-image.lua from a remote SOURCE")
	sameAsDecoded(t, img, "lz4", "-dc", pulled)
	if c := readCatalogue(t, pulled); !strings.HasSuffix(c.Source, ":"+img) {
		t.Errorf("catalogue source %q", c.Source)
	}

	// Bad input.
	r = bkrun(t, "", append([]string{"scripts/disk-image.lua", "--offset", "512", host + ":" + img, filepath.Join(local, "x.lz4")}, ssh...)...)
	if r.code != 2 || !strings.Contains(r.stderr, "--offset and --length need a local SOURCE") {
		t.Errorf("remote SOURCE with a range: %+v", r)
	}
	r = bkrun(t, "", append([]string{"scripts/disk-image.lua", host + ":" + filepath.Join(dir, "nope.img"), filepath.Join(local, "y.lz4")}, ssh...)...)
	if r.code != 1 || !strings.Contains(r.stderr, "conn:open") || !strings.Contains(r.stderr, "nope.img") {
		t.Errorf("missing remote image: %+v", r)
	}
	t.Logf("missing remote image: %s", r.stderr)
	onlyEntries(t, local, "vm.img.lz4", "vm.img.lz4.json")
	onlyEntries(t, remote, "vm.img.lz4", "vm.img.lz4.json")
}
