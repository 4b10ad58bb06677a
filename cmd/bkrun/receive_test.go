package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReceiveUsageErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"receive"}, "--root DIR is required"},
		{[]string{"receive", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"receive", "--root", file}, "is not a directory"},
		{[]string{"receive", "--root", file + ".missing"}, "no such file or directory"},
		{[]string{"receive", "--root", t.TempDir(), "extra"}, "nothing else"},
	} {
		r := bkrun(t, "", tc.args...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) || r.stdout != "" {
			t.Errorf("bkrun %v: exit %d, stdout %q, stderr %q; want 2 and %q", tc.args, r.code, r.stdout, r.stderr, tc.want)
		}
	}
	r := bkrun(t, `{"op":"quit"}`+"\n", "receive", "--root", t.TempDir())
	if r.code != 0 || !strings.HasPrefix(r.stdout, `{"proto":"bkrun-receive/1"`) {
		t.Errorf("quit: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = bkrun(t, `{"op":"put","path":"../x"}`+"\n", "receive", "--root", t.TempDir())
	if r.code != 0 || !strings.Contains(r.stdout, `{"ok":false,"error":"path \"../x\" refused`) || !strings.Contains(r.stderr, "put refused") {
		t.Errorf("refusal: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}
