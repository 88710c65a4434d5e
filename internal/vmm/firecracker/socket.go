package firecracker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// waitSocket waits until the unix socket at path accepts connections. It
// watches the socket's directory with inotify rather than polling; it
// fails when exited is closed (the server process died) or ctx ends.
func waitSocket(ctx context.Context, path string, exited <-chan struct{}) error {
	created, stop, err := watchCreate(filepath.Dir(path), filepath.Base(path))
	if err != nil {
		return err
	}
	defer stop()
	if dialable(path) {
		return nil
	}
	for {
		select {
		case <-created:
			return waitListening(ctx, path, exited)
		case <-exited:
			return errors.New("firecracker exited before opening its api socket")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// waitListening covers the instant between bind(2), which makes the socket
// file, and listen(2): a connection is refused only within it.
func waitListening(ctx context.Context, path string, exited <-chan struct{}) error {
	for delay := 100 * time.Microsecond; ; delay = min(2*delay, 10*time.Millisecond) {
		if dialable(path) {
			return nil
		}
		select {
		case <-time.After(delay):
		case <-exited:
			return errors.New("firecracker exited before listening on its api socket")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func dialable(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// watchCreate returns a channel that is closed once a file called name is
// created in (or moved into) dir, and a func that stops watching.
func watchCreate(dir, name string) (<-chan struct{}, func(), error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("watching %s: %w", dir, err)
	}
	// A non-blocking fd in an *os.File is read through the runtime poller,
	// so Close wakes a blocked Read.
	f := os.NewFile(uintptr(fd), "inotify")
	created := make(chan struct{})
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := f.Read(buf)
			if err != nil {
				return
			}
			if inotifyNamed(buf[:n], name) {
				close(created)
				return
			}
		}
	}()
	return created, func() { f.Close() }, nil
}

// inotifyNamed says whether any event in buf names name.
func inotifyNamed(buf []byte, name string) bool {
	for off := 0; off+unix.SizeofInotifyEvent <= len(buf); {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
		start := off + unix.SizeofInotifyEvent
		end := start + int(ev.Len)
		if end > len(buf) {
			return false
		}
		if cstring(buf[start:end]) == name {
			return true
		}
		off = end
	}
	return false
}

func cstring(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
