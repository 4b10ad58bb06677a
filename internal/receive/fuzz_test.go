package receive

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/zeebo/blake3"
)

// session builds what a sender writes for one put of data.
func putSession(path string, data []byte, trailer string) []byte {
	var b bytes.Buffer
	b.WriteString(`{"op":"put","path":"` + path + `"}` + "\n")
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(data)))
	b.Write(n[:])
	b.Write(data)
	b.Write([]byte{0, 0, 0, 0})
	if trailer == "" {
		sum := blake3.Sum256(data)
		trailer = `{"size":` + strconv.Itoa(len(data)) + `,"blake3":"` + hex.EncodeToString(sum[:]) + `"}`
	}
	b.WriteString(trailer + "\n")
	return b.Bytes()
}

// FuzzServe: whatever a sender writes, the receiver never creates anything
// outside its root, never a symbolic link, and leaves no temporary file
// once the session is cleaned up; it never panics.
func FuzzServe(f *testing.F) {
	f.Add(putSession("host/disk.img", []byte("backup bytes"), ""))
	f.Add(putSession("../escape", []byte("x"), ""))
	f.Add(putSession("/etc/passwd", []byte("x"), ""))
	f.Add(putSession("a/b/../../../c", []byte("x"), ""))
	f.Add(putSession("ok.img", []byte("data"), `{"size":4,"blake3":"00"}`))
	f.Add(putSession("ok.img", []byte("data"), `{"abort":true}`))
	f.Add([]byte(`{"op":"quit"}` + "\n"))
	f.Add([]byte("not json\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		base := t.TempDir()
		root := filepath.Join(base, "root")
		os.Mkdir(root, 0o755)
		r, err := New(Options{Root: root})
		if err != nil {
			t.Fatal(err)
		}
		r.Serve(bytes.NewReader(data), io.Discard)
		r.Cleanup()
		r.Close()
		filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
			if err != nil || p == base || p == root {
				return nil
			}
			if !strings.HasPrefix(p, root+string(filepath.Separator)) {
				t.Fatalf("created outside the root: %s", p)
			}
			if d.Type()&os.ModeSymlink != 0 {
				t.Fatalf("created a symbolic link: %s", p)
			}
			if strings.Contains(d.Name(), ".partial") || strings.HasPrefix(d.Name(), ".bkrun-") {
				t.Fatalf("temporary file left: %s", p)
			}
			return nil
		})
	})
}
