package part

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/bkrun/bkrun/stdlib/disk"
	"github.com/bkrun/bkrun/stdlib/exec"
)

// ReadFile parses the partition table of an image file or block device,
// opened read-only through disk.Open.
func ReadFile(path string) (*Table, error) {
	src, err := disk.Open(path, disk.Options{})
	if err != nil {
		return nil, err
	}
	defer src.Close()
	return ReadSource(src)
}

// ReadSource parses the partition table at the start of a disk source (a
// whole disk, or a range of one).
func ReadSource(src *disk.Source) (*Table, error) {
	t, err := Read(SourceReader(src), src.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src.Path(), err)
	}
	return t, nil
}

// SourceReader adapts a disk.Source (which reads aligned blocks) to
// io.ReaderAt; holes of sparse images read as zeros.
func SourceReader(src *disk.Source) io.ReaderAt { return &sourceReader{src: src} }

type sourceReader struct{ src *disk.Source }

func (r *sourceReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("part: negative offset %d", off)
	}
	const blk = disk.BlockAlign
	start := off &^ (blk - 1)
	buf := disk.AlignedBuffer(blk)
	n := 0
	for pos := start; n < len(p); pos += blk {
		m, hole, err := r.src.ReadBlock(buf[:blk], pos)
		if err != nil {
			return n, err
		}
		if hole {
			clear(buf[:m])
		}
		skip := 0
		if pos < off {
			skip = int(off - pos)
		}
		if m <= skip {
			return n, io.EOF
		}
		n += copy(p[n:], buf[skip:m])
		if m < blk && n < len(p) {
			return n, io.EOF
		}
	}
	return n, nil
}

// AttachOptions tune Attach.
type AttachOptions struct {
	Writable bool // attach read-write (default: read-only)
}

// AttachArgs is the losetup command line Attach runs.
func AttachArgs(path string, p Partition, o AttachOptions) []string {
	argv := []string{"losetup", "--find", "--show"}
	if !o.Writable {
		argv = append(argv, "--read-only")
	}
	return append(argv, "--offset", fmt.Sprint(p.Start), "--sizelimit", fmt.Sprint(p.Size), path)
}

// Attach attaches partition p of the image or device at path as a
// read-only loop device (losetup --find --show --read-only --offset
// --sizelimit) and returns its path and the function that detaches it
// (losetup -d; calling it again is harmless).
func Attach(ctx context.Context, path string, p Partition) (dev string, detach func() error, err error) {
	return AttachWith(ctx, path, p, AttachOptions{})
}

// AttachWith is Attach with options.
func AttachWith(ctx context.Context, path string, p Partition, o AttachOptions) (dev string, detach func() error, err error) {
	if p.Size <= 0 || p.Start < 0 {
		return "", nil, fmt.Errorf("part.attach: %s: partition %d has an invalid range (start %d, size %d)", path, p.Index, p.Start, p.Size)
	}
	res, err := exec.Run(ctx, exec.Cmd{Argv: AttachArgs(path, p, o), Capture: true})
	if err != nil {
		return "", nil, fmt.Errorf("part.attach: %s partition %d: %w", path, p.Index, err)
	}
	dev = strings.TrimSpace(res.Stdout)
	if !strings.HasPrefix(dev, "/dev/loop") || strings.ContainsAny(dev, " \n") {
		return "", nil, fmt.Errorf("part.attach: %s partition %d: losetup printed %q, not a loop device", path, p.Index, res.Stdout)
	}
	var once sync.Once
	var derr error
	detach = func() error {
		once.Do(func() {
			// Detaching must work even when the run was interrupted:
			// a fresh context, the command is quick.
			if _, err := exec.Run(context.Background(), exec.Cmd{Argv: []string{"losetup", "-d", dev}, Timeout: time.Minute}); err != nil {
				derr = fmt.Errorf("part.detach: %s: %w", dev, err)
			}
		})
		return derr
	}
	return dev, detach, nil
}
