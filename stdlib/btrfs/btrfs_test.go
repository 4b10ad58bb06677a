package btrfs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bkrun/bkrun/internal/testenv"
	"github.com/bkrun/bkrun/stdlib/exec"
	"github.com/bkrun/bkrun/stdlib/stream"
)

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// sameTree compares the regular files (names and contents) under a and b.
func sameTree(t *testing.T, a, b string) {
	t.Helper()
	read := func(root string) map[string]string {
		m := map[string]string{}
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			if d.Type().IsRegular() {
				data, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				rel, _ := filepath.Rel(root, p)
				m[rel] = string(data)
			}
			return nil
		})
		return m
	}
	ma, mb := read(a), read(b)
	if len(ma) == 0 || len(ma) != len(mb) {
		t.Fatalf("trees differ: %d files in %s, %d in %s", len(ma), a, len(mb), b)
	}
	for k, v := range ma {
		if mb[k] != v {
			t.Fatalf("%s differs between %s and %s", k, a, b)
		}
	}
}

func TestParseList(t *testing.T) {
	out := "ID 256 gen 7 top level 5 parent_uuid -                                    received_uuid -                                    uuid 5e9bfae2-6d87-6c41-b37b-034f062d9d8d path cur\n" +
		"ID 257 gen 9 cgen 7 top level 5 parent_uuid 5e9bfae2-6d87-6c41-b37b-034f062d9d8d received_uuid - uuid 78628bb8-2ff1-bb45-82a3-c9129160e477 path snaps/s 1  x\n" +
		"ID 258 gen 10 top level 256 otime 2024-01-01 12:00:00 path <FS_TREE>/cur/sub\n"
	subs, err := ParseList(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(subs) != 3 || subs[0].ID != 256 || subs[0].Path != "cur" || subs[0].ParentUUID != "" ||
		subs[1].Gen != 9 || subs[1].Path != "snaps/s 1  x" || subs[1].ParentUUID != subs[0].UUID ||
		subs[2].TopLevel != 256 || subs[2].Path != "<FS_TREE>/cur/sub" {
		t.Errorf("parsed %+v", subs)
	}
	for _, bad := range []string{"ID x gen 1 top level 5 path a", "gen 1 path a", "ID 1 gen 2", "ID"} {
		if _, err := ParseList(bad); err == nil {
			t.Errorf("ParseList(%q) accepted", bad)
		}
	}
}

func TestParseShow(t *testing.T) {
	out := "s 1\n\tName: \t\t\ts 1\n\tUUID: \t\t\t78628bb8-2ff1-bb45-82a3-c9129160e477\n\tParent UUID: \t\t5e9bfae2-6d87-6c41-b37b-034f062d9d8d\n" +
		"\tReceived UUID: \t\t-\n\tCreation time: \t\t2026-11-22 00:47:54 +0000\n\tSubvolume ID: \t\t257\n\tGeneration: \t\t7\n" +
		"\tGen at creation: \t7\n\tParent ID: \t\t5\n\tTop level ID: \t\t5\n\tFlags: \t\t\treadonly\n\tSnapshot(s):\n\t\t\t\tx: y\n"
	inf, err := ParseShow(out)
	if err != nil {
		t.Fatal(err)
	}
	want := time.Date(2026, 11, 22, 0, 47, 54, 0, time.UTC)
	if inf.Name != "s 1" || inf.ID != 257 || inf.Gen != 7 || !inf.ReadOnly || inf.ReceivedUUID != "" ||
		inf.ParentUUID != "5e9bfae2-6d87-6c41-b37b-034f062d9d8d" || !inf.Created.Equal(want) {
		t.Errorf("parsed %+v", inf)
	}
	if _, err := ParseShow("ERROR: something\n"); err == nil {
		t.Error("garbage accepted")
	}
}

func TestReceivedName(t *testing.T) {
	if n := receivedName("At subvol a b\n"); n != "a b" {
		t.Errorf("%q", n)
	}
	if n := receivedName("At snapshot new\nERROR: x\n"); n != "new" {
		t.Errorf("%q", n)
	}
}

func TestSubvolumeLifecycle(t *testing.T) {
	mnt := testenv.BtrfsMount(t)
	ctx := context.Background()
	cur := filepath.Join(mnt, "cur")
	if err := Create(ctx, cur); err != nil {
		t.Fatal(err)
	}
	if err := Create(ctx, filepath.Join(mnt, "no/such/dir")); err == nil || !strings.Contains(err.Error(), "parent directory") {
		t.Errorf("create without parent: %v", err)
	}
	writeFile(t, filepath.Join(cur, "f"), "hello")
	snap := filepath.Join(mnt, "snap 1")
	if err := Snapshot(ctx, cur, snap, true); err != nil {
		t.Fatal(err)
	}
	if err := Snapshot(ctx, cur, snap, true); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("snapshot onto existing: %v", err)
	}
	if !IsSubvolume(cur) || !IsSubvolume(snap) || !IsSubvolume(mnt) {
		t.Error("IsSubvolume false for a subvolume")
	}
	plain := filepath.Join(mnt, "plain")
	os.Mkdir(plain, 0o755)
	if IsSubvolume(plain) || IsSubvolume(t.TempDir()) || IsSubvolume(filepath.Join(mnt, "missing")) {
		t.Error("IsSubvolume true for a non-subvolume")
	}
	subs, err := List(ctx, mnt)
	if err != nil {
		t.Fatal(err)
	}
	if len(subs) != 2 || subs[0].Path != "cur" || subs[0].ReadOnly || subs[1].Path != "snap 1" || !subs[1].ReadOnly ||
		subs[1].ParentUUID != subs[0].UUID || subs[1].ID == 0 || subs[1].Gen == 0 {
		t.Errorf("list %+v", subs)
	}
	inf, err := Show(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	if !inf.ReadOnly || inf.UUID != subs[1].UUID || inf.ParentUUID != subs[0].UUID || time.Since(inf.Created) > time.Hour {
		t.Errorf("show %+v", inf)
	}
	err = Delete(ctx, plain)
	if err == nil || !errors.Is(err, ErrNotSubvolume) || !strings.Contains(err.Error(), plain) || !strings.Contains(err.Error(), "plain directory") {
		t.Errorf("delete of a plain directory: %v", err)
	}
	t.Logf("delete plain: %v", err)
	if _, err := Show(ctx, plain); err == nil {
		t.Error("show of a plain directory succeeded")
	}
	if err := Delete(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if err := Delete(ctx, cur); err != nil {
		t.Fatal(err)
	}
	if subs, err := List(ctx, mnt); err != nil || len(subs) != 0 {
		t.Errorf("after delete: %+v %v", subs, err)
	}
}

// fixture: two filesystems, a subvolume with some files and a read-only
// snapshot of it on the first.
func fixture(t *testing.T) (src, dst, cur, snap1 string) {
	src, dst = testenv.BtrfsMount(t), testenv.BtrfsMount(t)
	ctx := context.Background()
	cur = filepath.Join(src, "cur")
	if err := Create(ctx, cur); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(cur, "a"), "alpha")
	os.Mkdir(filepath.Join(cur, "d"), 0o755)
	writeFile(t, filepath.Join(cur, "d", "b"), strings.Repeat("bravo ", 100000))
	snap1 = filepath.Join(src, "snap1")
	if err := Snapshot(ctx, cur, snap1, true); err != nil {
		t.Fatal(err)
	}
	return
}

func sendTo(t *testing.T, dir, snap, parent string) (string, error) {
	t.Helper()
	s, err := Send(context.Background(), snap, parent)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	return Receive(context.Background(), dir, s)
}

func TestSendReceiveFullAndIncremental(t *testing.T) {
	src, dst, cur, snap1 := fixture(t)
	ctx := context.Background()
	got, err := sendTo(t, dst, snap1, "")
	if err != nil {
		t.Fatal(err)
	}
	if got != filepath.Join(dst, "snap1") {
		t.Errorf("received %q", got)
	}
	sameTree(t, snap1, got)
	i1, _ := Show(ctx, snap1)
	r1, err := Show(ctx, got)
	if err != nil || r1.ReceivedUUID != i1.UUID || !r1.ReadOnly {
		t.Errorf("received %+v (sent uuid %s) %v", r1, i1.UUID, err)
	}

	// Incremental: change, snapshot again, send against snap1.
	writeFile(t, filepath.Join(cur, "a"), "alpha 2")
	writeFile(t, filepath.Join(cur, "new"), "new file")
	os.Remove(filepath.Join(cur, "d", "b"))
	snap2 := filepath.Join(src, "snap2")
	if err := Snapshot(ctx, cur, snap2, true); err != nil {
		t.Fatal(err)
	}
	got2, err := sendTo(t, dst, snap2, snap1)
	if err != nil {
		t.Fatal(err)
	}
	if got2 != filepath.Join(dst, "snap2") {
		t.Errorf("received %q", got2)
	}
	sameTree(t, snap2, got2)
	sameTree(t, snap1, got) // the base is untouched
}

// An incremental stream whose parent the receiver lacks fails with
// btrfs's own message, and leaves nothing behind.
func TestReceiveMissingParent(t *testing.T) {
	src, dst, cur, snap1 := fixture(t)
	ctx := context.Background()
	writeFile(t, filepath.Join(cur, "a"), "changed")
	snap2 := filepath.Join(src, "snap2")
	if err := Snapshot(ctx, cur, snap2, true); err != nil {
		t.Fatal(err)
	}
	_, err := sendTo(t, dst, snap2, snap1)
	var ee *exec.Error
	if err == nil || !errors.As(err, &ee) || ee.Status == 0 || !strings.Contains(err.Error(), "btrfs receive "+dst) ||
		!strings.Contains(err.Error(), "cannot find parent subvolume") {
		t.Fatalf("err = %v", err)
	}
	t.Logf("missing parent: %v", err)
	if subs, _ := List(ctx, dst); len(subs) != 0 {
		t.Errorf("left behind: %+v", subs)
	}
}

// Sending a writable subvolume fails in btrfs send; the stream reports it
// as a read error, never as a clean (empty) stream.
func TestSendNotReadOnly(t *testing.T) {
	src := testenv.BtrfsMount(t)
	ctx := context.Background()
	cur := filepath.Join(src, "cur")
	if err := Create(ctx, cur); err != nil {
		t.Fatal(err)
	}
	s, err := Send(ctx, cur, "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(io.Discard, s)
	var ee *exec.Error
	if err == nil || !errors.As(err, &ee) || ee.Status == 0 || !strings.Contains(err.Error(), "btrfs send "+cur) ||
		!strings.Contains(err.Error(), "not read-only") {
		t.Fatalf("read err = %v", err)
	}
	if cerr := s.Close(); cerr == nil {
		t.Error("Close after a failed send returned nil")
	}
	t.Logf("send not read-only: %v", err)

	// Through the stream pipeline the failure is a read error too.
	s, _ = Send(ctx, cur, "")
	defer s.Close()
	_, err = stream.Copy(ctx, s, io.Discard, stream.CopyOptions{})
	if err == nil || !strings.Contains(err.Error(), "not read-only") {
		t.Errorf("stream.Copy err = %v", err)
	}
	// And receive refuses it, leaving nothing.
	dst := filepath.Join(src, "in")
	os.Mkdir(dst, 0o755)
	s2, _ := Send(ctx, cur, "")
	defer s2.Close()
	if _, err := Receive(ctx, dst, s2); err == nil || !strings.Contains(err.Error(), "not read-only") {
		t.Errorf("receive err = %v", err)
	}
}

// Closing an unread send stops btrfs send.
func TestSendClose(t *testing.T) {
	_, _, _, snap1 := fixture(t)
	s, err := Send(context.Background(), snap1, "")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if _, err := io.ReadFull(s, buf); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hung")
	}
}

// send -> lz4 file through the stream pipeline -> decode -> receive.
func TestSendToLZ4FileAndReceive(t *testing.T) {
	_, dst, _, snap1 := fixture(t)
	ctx := context.Background()
	s, err := Send(ctx, snap1, "")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out := filepath.Join(t.TempDir(), "snap1.btrfs.lz4")
	sink, err := stream.CreateFile(out, false)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Abort()
	enc, _ := stream.NewEncoder("lz4")
	st, err := stream.Copy(ctx, s, sink, stream.CopyOptions{Encoder: enc})
	if err != nil {
		t.Fatal(err)
	}
	if err := sink.Commit(&stream.Meta{Format: stream.MetaFormat, Source: snap1, Size: st.Size, Codec: "lz4", Hash: st.Hash}); err != nil {
		t.Fatal(err)
	}
	if st.Size == 0 || st.BytesWritten >= st.Size {
		t.Errorf("stats %+v", st)
	}
	// The file is a standard lz4 frame of a standard send stream.
	if p, err := osexec.LookPath("lz4"); err == nil {
		raw, err := osexec.Command(p, "-dc", out).Output()
		if err != nil || int64(len(raw)) != st.Size || !bytes.HasPrefix(raw, []byte("btrfs-stream\x00")) {
			t.Errorf("lz4 -dc: %d bytes, %v", len(raw), err)
		}
	}
	f, err := OpenStream(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := Receive(ctx, dst, f)
	if err != nil {
		t.Fatal(err)
	}
	sameTree(t, snap1, got)

	// A truncated file is an error, and the partial subvolume is removed.
	data, _ := os.ReadFile(out)
	bad := filepath.Join(t.TempDir(), "bad.lz4")
	os.WriteFile(bad, data[:len(data)/2], 0o644)
	dst2 := filepath.Join(dst, "again")
	os.Mkdir(dst2, 0o755)
	fb, _ := OpenStream(bad)
	defer fb.Close()
	if _, err := Receive(ctx, dst2, fb); err == nil {
		t.Error("truncated stream received")
	} else {
		t.Logf("truncated: %v", err)
	}
	if IsSubvolume(filepath.Join(dst2, "snap1")) {
		t.Error("partial subvolume left")
	}
}

// A raw stream cut in the middle fails in btrfs receive itself; the
// half-received subvolume it created is deleted, and the message says so.
func TestReceiveTruncatedRawStream(t *testing.T) {
	_, dst, _, snap1 := fixture(t)
	ctx := context.Background()
	s, err := Send(ctx, snap1, "")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(s)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Receive(ctx, dst, bytes.NewReader(raw[:len(raw)*2/3]))
	if err == nil || !strings.Contains(err.Error(), "partial subvolume "+filepath.Join(dst, "snap1")+" deleted") {
		t.Fatalf("err = %v", err)
	}
	t.Logf("truncated raw: %v", err)
	if subs, _ := List(ctx, dst); len(subs) != 0 {
		t.Errorf("left behind: %+v", subs)
	}
	// An existing subvolume of the same name is never deleted.
	if _, err := Receive(ctx, dst, bytes.NewReader(raw)); err != nil {
		t.Fatal(err)
	}
	if _, err := Receive(ctx, dst, bytes.NewReader(raw)); err == nil || !strings.Contains(err.Error(), "File exists") {
		t.Errorf("second receive: %v", err)
	}
	if !IsSubvolume(filepath.Join(dst, "snap1")) {
		t.Error("existing subvolume deleted")
	}
}
