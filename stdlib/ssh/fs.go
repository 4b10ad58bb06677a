package ssh

import (
	"io/fs"
	"path"
	"sort"

	"github.com/pkg/sftp"
)

// FS returns the remote directory root as a read-only fs.FS over SFTP, so
// that code written for local directories (fs.WalkDir, fs.ReadFile) reads
// a backup server the same way. Directory entries carry lstat
// information: a symbolic link is reported as a link, never followed.
func (c *Conn) FS(root string) (fs.FS, error) {
	sc, err := c.SFTP()
	if err != nil {
		return nil, err
	}
	return &remoteFS{c: c, sc: sc, root: root}, nil
}

type remoteFS struct {
	c    *Conn
	sc   *sftp.Client
	root string
}

func (r *remoteFS) path(op, name string) (string, error) {
	if !fs.ValidPath(name) {
		return "", &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	return path.Join(r.root, name), nil
}

func (r *remoteFS) Open(name string) (fs.File, error) {
	p, err := r.path("open", name)
	if err != nil {
		return nil, err
	}
	f, err := r.sc.Open(p)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return f, nil
}

func (r *remoteFS) Stat(name string) (fs.FileInfo, error) {
	p, err := r.path("stat", name)
	if err != nil {
		return nil, err
	}
	fi, err := r.sc.Stat(p)
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	return fi, nil
}

func (r *remoteFS) ReadDir(name string) ([]fs.DirEntry, error) {
	p, err := r.path("readdir", name)
	if err != nil {
		return nil, err
	}
	infos, err := r.sc.ReadDir(p)
	if err != nil {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: err}
	}
	out := make([]fs.DirEntry, len(infos))
	for i, fi := range infos {
		out[i] = fs.FileInfoToDirEntry(fi)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out, nil
}
