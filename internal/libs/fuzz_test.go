package libs

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tarOf builds a tarball of (name, type, content) entries for the corpus.
func tarOf(entries ...[3]string) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := &tar.Header{Name: e[0], Typeflag: e[1][0], Mode: 0o644, Size: int64(len(e[2]))}
		if h.Typeflag != tar.TypeReg {
			h.Size, h.Linkname = 0, e[2]
		}
		tw.WriteHeader(h)
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(e[2]))
		}
	}
	tw.Close()
	return b.Bytes()
}

// FuzzUnpackTar: whatever a tarball holds, unpacking it never creates
// anything outside the library's directory, and never panics.
func FuzzUnpackTar(f *testing.F) {
	f.Add(tarOf([3]string{"lib/init.lua", "0", "return {}"}))
	f.Add(tarOf([3]string{"../evil.lua", "0", "x"}))
	f.Add(tarOf([3]string{"/etc/evil", "0", "x"}))
	f.Add(tarOf([3]string{"lib/link", "2", "/etc"}, [3]string{"lib/link/x", "0", "x"}))
	f.Add(tarOf([3]string{"lib/hard", "1", "../../x"}))
	f.Add(tarOf([3]string{"a/./b/../../c.lua", "0", "x"}, [3]string{"a", "5", ""}))
	f.Fuzz(func(t *testing.T, data []byte) {
		base := t.TempDir()
		file := filepath.Join(base, "lib.tar")
		if err := os.WriteFile(file, data, 0o644); err != nil {
			t.Fatal(err)
		}
		root := filepath.Join(base, "root")
		unpackTar(file, root) // an error is fine; what it may leave is checked below
		filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
			if err != nil || p == base || p == file {
				return nil
			}
			if p != root && !strings.HasPrefix(p, root+string(filepath.Separator)) {
				t.Fatalf("created outside the library directory: %s", p)
			}
			if d.Type()&os.ModeSymlink != 0 {
				t.Fatalf("created a symbolic link: %s", p)
			}
			return nil
		})
	})
}
