package stream

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/bkrun/bkrun/stdlib/ssh"
)

// Sink is where a copy goes: a local file or a file on another host.
// Nothing is visible under the final name before Commit.
type Sink interface {
	Write(p []byte) (int, error)
	TempPath() string
	Commit(meta *Meta) error
	Abort() error
}

// ParseRemote splits "[user@]host:path" the way scp does: a colon before
// any slash makes a remote destination ("./a:b" is a local file).
func ParseRemote(s string) (dest, path string, ok bool) {
	i := strings.IndexByte(s, ':')
	if i <= 0 || strings.ContainsRune(s[:i], '/') || i == len(s)-1 {
		return "", "", false
	}
	if strings.HasPrefix(s, "[") { // [v6]:path is not supported as a path; [v6]:port is not a path
		return "", "", false
	}
	return s[:i], s[i+1:], true
}

// RemoteSink writes over SFTP to a plain OpenSSH server: the image goes to
// a temporary name in the destination directory and is renamed into
// place, with its catalogue entry, only after the server has it all
// (size checked, fsync@openssh.com).
type RemoteSink struct {
	conn      *ssh.Conn
	path      string
	overwrite bool
	f         *ssh.RemoteFile
}

// CreateRemote opens a remote sink on an established connection.
func CreateRemote(conn *ssh.Conn, path string, overwrite bool) (*RemoteSink, error) {
	f, err := conn.Create(path, overwrite)
	if err != nil {
		return nil, err
	}
	return &RemoteSink{conn: conn, path: path, overwrite: overwrite, f: f}, nil
}

// RemoteSinkFor makes a sink of a remote file already being written
// (conn:create in Lua).
func RemoteSinkFor(f *ssh.RemoteFile) *RemoteSink {
	return &RemoteSink{conn: f.Conn(), path: f.Path, overwrite: f.Overwrite(), f: f}
}

func (s *RemoteSink) Write(p []byte) (int, error) { return s.f.Write(p) }

// TempPath is the remote temporary name.
func (s *RemoteSink) TempPath() string { return s.conn.String() + ":" + s.f.TempPath() }

// Commit uploads the catalogue entry under a temporary name, then renames
// the image and the entry into place, image first.
func (s *RemoteSink) Commit(meta *Meta) error {
	var mf *ssh.RemoteFile
	if meta != nil {
		b, err := json.MarshalIndent(meta, "", "  ")
		if err != nil {
			s.f.Abort()
			return err
		}
		if mf, err = s.conn.Create(MetaPath(s.path), s.overwrite); err != nil {
			s.f.Abort()
			return fmt.Errorf("catalogue entry: %w", err)
		}
		if _, err := mf.Write(append(b, '\n')); err != nil {
			mf.Abort()
			s.f.Abort()
			return fmt.Errorf("catalogue entry: %w", err)
		}
	}
	if err := s.f.Commit(); err != nil {
		if mf != nil {
			mf.Abort()
		}
		return err
	}
	if mf != nil {
		if err := mf.Commit(); err != nil {
			return fmt.Errorf("catalogue entry: %w", err)
		}
	}
	return nil
}

// Abort removes the remote temporary file.
func (s *RemoteSink) Abort() error { return s.f.Abort() }

// ReceiverSink writes through `bkrun receive` on the other host (a forced
// command in authorized_keys): the receiver checks size and hash of what
// arrived before it renames the file into place, and keeps the sender
// inside its root directory.
type ReceiverSink struct {
	sess      *ssh.ReceiverSession
	path      string
	overwrite bool
	f         *ssh.ReceiverFile
}

// CreateReceiver starts an upload of path through a receiver session.
func CreateReceiver(sess *ssh.ReceiverSession, path string, overwrite bool) (*ReceiverSink, error) {
	f, err := sess.Put(path, overwrite)
	if err != nil {
		return nil, err
	}
	return &ReceiverSink{sess: sess, path: path, overwrite: overwrite, f: f}, nil
}

func (s *ReceiverSink) Write(p []byte) (int, error) { return s.f.Write(p) }

// TempPath names the upload (the receiver picks the temporary name).
func (s *ReceiverSink) TempPath() string { return "receiver:" + s.path }

// Commit ends the image upload (the receiver verifies it and renames it
// into place), then uploads the catalogue entry the same way.
func (s *ReceiverSink) Commit(meta *Meta) error {
	if err := s.f.Commit(); err != nil {
		return err
	}
	if meta == nil {
		return nil
	}
	b, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return err
	}
	mf, err := s.sess.Put(MetaPath(s.path), s.overwrite)
	if err != nil {
		return fmt.Errorf("catalogue entry: %w", err)
	}
	if _, err := mf.Write(append(b, '\n')); err != nil {
		mf.Abort()
		return fmt.Errorf("catalogue entry: %w", err)
	}
	if err := mf.Commit(); err != nil {
		return fmt.Errorf("catalogue entry: %w", err)
	}
	return nil
}

// Abort discards the upload on the receiver.
func (s *ReceiverSink) Abort() error { return s.f.Abort() }
