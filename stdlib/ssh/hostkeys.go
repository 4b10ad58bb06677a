package ssh

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	xssh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// hostKeys checks server keys against one known_hosts file. err keeps the
// refusal so Dial can return it as it is, not wrapped in "handshake failed".
type hostKeys struct {
	file      string
	acceptNew bool
	check     xssh.HostKeyCallback // nil when the file does not exist yet
	err       error
}

var knownHostsMu sync.Mutex // serialises appends within this process

func newHostKeys(file string, acceptNew bool) (*hostKeys, error) {
	hk := &hostKeys{file: file, acceptNew: acceptNew}
	cb, err := knownhosts.New(file)
	switch {
	case err == nil:
		hk.check = cb
	case errors.Is(err, os.ErrNotExist):
	default:
		return nil, fmt.Errorf("known hosts: %w", err)
	}
	return hk, nil
}

// algorithms restricts the host key algorithms to the types already known
// for the host, so that a server offering an ed25519 key to a known_hosts
// that holds only its RSA key is checked against that key instead of
// looking changed. nil (all algorithms) for a host not yet known.
func (hk *hostKeys) algorithms(addr string) []string {
	if hk.check == nil {
		return nil
	}
	var ke *knownhosts.KeyError
	err := hk.check(addr, &net.TCPAddr{IP: net.IPv4zero}, probeKey{})
	if !errors.As(err, &ke) || len(ke.Want) == 0 {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	add := func(a ...string) {
		for _, s := range a {
			if !seen[s] {
				seen[s] = true
				out = append(out, s)
			}
		}
	}
	for _, k := range ke.Want {
		switch t := k.Key.Type(); t {
		case xssh.KeyAlgoRSA:
			add(xssh.KeyAlgoRSASHA512, xssh.KeyAlgoRSASHA256, xssh.KeyAlgoRSA)
		default:
			add(t)
		}
	}
	return out
}

func (hk *hostKeys) callback(hostname string, remote net.Addr, key xssh.PublicKey) error {
	hk.err = hk.verify(hostname, remote, key)
	return hk.err
}

func (hk *hostKeys) verify(hostname string, remote net.Addr, key xssh.PublicKey) error {
	name := knownhosts.Normalize(hostname)
	var err error
	if hk.check != nil {
		err = hk.check(hostname, remote, key)
	} else {
		err = &knownhosts.KeyError{}
	}
	if err == nil {
		return nil
	}
	var ke *knownhosts.KeyError
	var re *knownhosts.RevokedError
	switch {
	case errors.As(err, &re):
		return fmt.Errorf("ssh: %s: host key %s is marked @revoked in %s:%d; not connecting", name, xssh.FingerprintSHA256(key), re.Revoked.Filename, re.Revoked.Line)
	case errors.As(err, &ke) && len(ke.Want) > 0:
		w := ke.Want[0]
		return fmt.Errorf("ssh: %s: HOST KEY CHANGED (%s:%d has a different key) — possible man-in-the-middle; not connecting (the server offered %s %s)",
			name, w.Filename, w.Line, key.Type(), xssh.FingerprintSHA256(key))
	case errors.As(err, &ke):
		if !hk.acceptNew {
			return fmt.Errorf("ssh: host key for %s is unknown (not in %s); add it with ssh-keyscan or accept_new=true", name, hk.file)
		}
		if err := hk.append(hostname, key); err != nil {
			return fmt.Errorf("ssh: %s: accepting the new host key: %w", name, err)
		}
		return nil
	default:
		return fmt.Errorf("ssh: %s: checking the host key: %w", name, err)
	}
}

func (hk *hostKeys) append(hostname string, key xssh.PublicKey) error {
	knownHostsMu.Lock()
	defer knownHostsMu.Unlock()
	if err := os.MkdirAll(filepath.Dir(hk.file), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(hk.file, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	line := knownhosts.Line([]string{knownhosts.Normalize(hostname)}, key)
	if _, err := f.WriteString(line + "\n"); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// probeKey is a key no known_hosts line matches: checking it lists the
// keys known for a host.
type probeKey struct{}

func (probeKey) Type() string                         { return "bkrun-probe" }
func (probeKey) Marshal() []byte                      { return []byte("bkrun-probe") }
func (probeKey) Verify([]byte, *xssh.Signature) error { return errors.New("probe key") }
