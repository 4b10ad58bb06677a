// Package libs installs Lua recipe libraries into a library directory and
// keeps their lock file: where each came from, at which revision, and the
// SHA-256 of every file, so that a root-run tool never silently runs code
// that changed after it was installed.
//
// A library is a directory NAME/ in a library directory (require "NAME"
// loads NAME/init.lua, require "NAME.x" loads NAME/x.lua). The lock file
// LockFile sits beside the libraries.
package libs

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// LockFile is the name of the lock file in a library directory.
const LockFile = "bkrun-lock.json"

// Lock is the content of a lock file.
type Lock struct {
	Version   int               `json:"version"`
	Libraries map[string]*Entry `json:"libraries"`
}

// Entry records one installed library.
type Entry struct {
	Source    string            `json:"source"`        // git URL or absolute path, directory or tarball
	Kind      string            `json:"kind"`          // "git", "dir" or "tar"
	Ref       string            `json:"ref,omitempty"` // git ref asked for (tag, branch, commit)
	Revision  string            `json:"revision"`      // git commit id, "sha256:<hex>" of a tarball, "dir"
	Installed time.Time         `json:"installed"`
	Files     map[string]string `json:"files"` // slash-separated path in the library -> sha256 hex
}

// ReadLock reads dir's lock file; a missing file is an empty lock.
func ReadLock(dir string) (*Lock, error) {
	l := &Lock{Version: 1, Libraries: map[string]*Entry{}}
	b, err := os.ReadFile(filepath.Join(dir, LockFile))
	if errors.Is(err, fs.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, l); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, LockFile), err)
	}
	if l.Libraries == nil {
		l.Libraries = map[string]*Entry{}
	}
	return l, nil
}

// write replaces dir's lock file atomically.
func (l *Lock) write(dir string) error {
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+LockFile+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), filepath.Join(dir, LockFile))
}

// Names lists the locked libraries, sorted.
func (l *Lock) Names() []string {
	names := make([]string, 0, len(l.Libraries))
	for n := range l.Libraries {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Problem is one way an installed library differs from its lock.
type Problem struct {
	File string // slash-separated path in the library
	What string // "changed", "missing", "added", "not a regular file"
}

func (p Problem) String() string { return p.File + " " + p.What }

// Problems joins problems for a message: "init.lua changed, x.lua added".
func Problems(ps []Problem) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// Verify compares the library dir/name with its lock entry and lists every
// changed, missing or added file.
func (l *Lock) Verify(dir, name string) ([]Problem, error) {
	e, ok := l.Libraries[name]
	if !ok {
		return nil, fmt.Errorf("no library %s in %s", name, filepath.Join(dir, LockFile))
	}
	root := filepath.Join(dir, name)
	if st, err := os.Lstat(root); err != nil || !st.IsDir() {
		return []Problem{{File: name + "/", What: "missing"}}, nil
	}
	var ps []Problem
	seen := map[string]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel := filepath.ToSlash(strings.TrimPrefix(p, root+string(filepath.Separator)))
		if d.IsDir() {
			return nil
		}
		seen[rel] = true
		want, locked := e.Files[rel]
		switch {
		case !d.Type().IsRegular():
			ps = append(ps, Problem{rel, "not a regular file"})
		case !locked:
			ps = append(ps, Problem{rel, "added"})
		default:
			got, err := HashFile(p)
			if err != nil {
				return err
			}
			if got != want {
				ps = append(ps, Problem{rel, "changed"})
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, f := range sortedKeys(e.Files) {
		if !seen[f] {
			ps = append(ps, Problem{f, "missing"})
		}
	}
	sort.SliceStable(ps, func(i, j int) bool { return ps[i].File < ps[j].File })
	return ps, nil
}

// HashFile is the hex SHA-256 of a file's content.
func HashFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Hash is the hex SHA-256 of b.
func Hash(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// hashTree hashes every file under root; anything but regular files and
// directories (a symlink, a device) is refused.
func hashTree(root string) (map[string]string, error) {
	files := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel := filepath.ToSlash(strings.TrimPrefix(p, root+string(filepath.Separator)))
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s is not a regular file (libraries hold only files and directories)", rel)
		}
		h, err := HashFile(p)
		if err != nil {
			return err
		}
		files[rel] = h
		return nil
	})
	return files, err
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
