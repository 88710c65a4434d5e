package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// An exec replies Response{PID} only when asked to; without it the first
// frame is output, the exit status, or an error.
func TestExecReportPID(t *testing.T) {
	ta := startAgent(t)
	tests := []struct {
		name   string
		req    agentproto.ExecRequest
		frames string // frame types in order; R carries a pid when the process ran
	}{
		{"no output", agentproto.ExecRequest{Argv: []string{"true"}}, "x"},
		{"no output, pid asked", agentproto.ExecRequest{Argv: []string{"true"}, ReportPID: true}, "Rx"},
		{"output", agentproto.ExecRequest{Argv: []string{"echo", "hi"}}, "1x"},
		{"output, pid asked", agentproto.ExecRequest{Argv: []string{"echo", "hi"}, ReportPID: true}, "R1x"},
		{"not found", agentproto.ExecRequest{Argv: []string{"no-such-command"}}, "2x"},
		{"not found, pid asked", agentproto.ExecRequest{Argv: []string{"no-such-command"}, ReportPID: true}, "A2x"},
		{"bad request", agentproto.ExecRequest{Argv: []string{"true"}, Dir: "relative"}, "e"},
		{"bad request, pid asked", agentproto.ExecRequest{Argv: []string{"true"}, Dir: "relative", ReportPID: true}, "e"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ta.request(t, agentproto.Request{Op: agentproto.OpExec, Exec: &tt.req})
			defer c.Close()
			var got strings.Builder
			for {
				ft, p, err := c.ReadFrame(nil)
				if err != nil {
					t.Fatalf("after frames %q: %v", got.String(), err)
				}
				switch ft {
				case agentproto.FrameResponse:
					var r agentproto.Response
					if err := json.Unmarshal(p, &r); err != nil {
						t.Fatal(err)
					}
					if r.PID > 0 {
						got.WriteString("R")
					} else {
						got.WriteString("A")
					}
				case agentproto.FrameStdout, agentproto.FrameStderr:
					fmt.Fprint(&got, int(ft))
				default:
					got.WriteByte(byte(ft))
				}
				if ft == agentproto.FrameExit || ft == agentproto.FrameError {
					break
				}
			}
			if got.String() != tt.frames {
				t.Errorf("frames %q, want %q", got.String(), tt.frames)
			}
		})
	}
}

// userCache answers as lookupUser does, and notices a changed passwd file,
// whether rewritten in place or replaced.
func TestUserCache(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	passwd := filepath.Join(root, "etc/passwd")
	old := time.Now().Add(-time.Hour) // older than the racy window, so cached; the same for every write
	write := func(home string, replace bool) {
		t.Helper()
		data := []byte("root:x:0:0:root:/root:/bin/sh\nalice:x:1500:1500::" + home + ":/bin/sh\n")
		path := passwd
		if replace {
			path += ".new"
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(path, old, old)
		if replace {
			os.Rename(path, passwd)
		}
		os.WriteFile(filepath.Join(root, "etc/group"), []byte("ops:x:2000:alice\n"), 0o644)
		os.Chtimes(filepath.Join(root, "etc/group"), old, old)
	}
	var uc userCache
	tests := []struct {
		name     string
		home     string
		change   func(home string) // how the file gets home, before the lookup
		wantHome string
	}{
		{"first lookup", "/home/a1", func(h string) { write(h, false) }, "/home/a1"},
		{"cached", "/home/a1", func(string) {}, "/home/a1"},
		{"rewritten in place, another size", "/home/a22", func(h string) { write(h, false) }, "/home/a22"},
		{"replaced by rename, same size and mtime", "/home/a33", func(h string) { write(h, true) }, "/home/a33"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.change(tt.home)
			u, err := uc.lookup(root, "alice")
			if err != nil {
				t.Fatal(err)
			}
			want, _ := lookupUser(root, "alice")
			if u.Home != tt.wantHome || fmt.Sprint(u) != fmt.Sprint(want) {
				t.Errorf("cache gave %+v, lookupUser %+v, want home %s", u, want, tt.wantHome)
			}
			if len(uc.users) != 1 {
				t.Errorf("cache holds %d users, want 1", len(uc.users))
			}
		})
	}
	if _, err := uc.lookup(root, "mallory"); err == nil {
		t.Error("unknown user: no error")
	}
}

// A file changed just now is read again on every lookup, since a same-size
// rewrite within the inode time's granularity would keep its stamp.
func TestUserCacheRecentFileNotCached(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("bob:x:1600:1600::/home/b:/bin/sh\n"), 0o644)
	var uc userCache
	if _, err := uc.lookup(root, "bob"); err != nil {
		t.Fatal(err)
	}
	if len(uc.users) != 0 {
		t.Errorf("a file modified just now was cached: %v", uc.users)
	}
}

// pipe gives the parent a non-blocking end (for Go's poller, so Close
// interrupts a Read) and the child a blocking one; neither leaks into
// other children.
func TestPipeEnds(t *testing.T) {
	for _, parentReads := range []bool{true, false} {
		t.Run(fmt.Sprint("parentReads=", parentReads), func(t *testing.T) {
			parent, child, err := pipe(parentReads)
			if err != nil {
				t.Fatal(err)
			}
			defer parent.Close()
			defer unix.Close(child)
			rc, _ := parent.SyscallConn()
			var pfl, pfd int
			rc.Control(func(fd uintptr) {
				pfl, _ = unix.FcntlInt(fd, unix.F_GETFL, 0)
				pfd, _ = unix.FcntlInt(fd, unix.F_GETFD, 0)
			})
			cfl, _ := unix.FcntlInt(uintptr(child), unix.F_GETFL, 0)
			cfd, _ := unix.FcntlInt(uintptr(child), unix.F_GETFD, 0)
			if pfl&unix.O_NONBLOCK == 0 || cfl&unix.O_NONBLOCK != 0 {
				t.Errorf("O_NONBLOCK: parent %v, child %v; want true, false", pfl&unix.O_NONBLOCK != 0, cfl&unix.O_NONBLOCK != 0)
			}
			if pfd&unix.FD_CLOEXEC == 0 || cfd&unix.FD_CLOEXEC == 0 {
				t.Errorf("FD_CLOEXEC: parent %v, child %v; want both", pfd&unix.FD_CLOEXEC != 0, cfd&unix.FD_CLOEXEC != 0)
			}
			wantAcc := unix.O_RDONLY
			if !parentReads {
				wantAcc = unix.O_WRONLY
			}
			if pfl&unix.O_ACCMODE != wantAcc {
				t.Errorf("parent end access mode %#x, want %#x", pfl&unix.O_ACCMODE, wantAcc)
			}
			// Closing the parent's end interrupts a pending read there.
			if parentReads {
				done := make(chan error, 1)
				go func() { _, err := parent.Read(make([]byte, 1)); done <- err }()
				time.Sleep(10 * time.Millisecond)
				parent.Close()
				if err := <-done; err == nil {
					t.Error("Read on the closed parent end succeeded")
				}
			}
		})
	}
}

// Output much bigger than a pipe's default 64 KiB arrives whole, through
// growing read buffers and a grown pipe.
func TestExecOutputGrows(t *testing.T) {
	ta := startAgent(t)
	const size = 3 << 20
	res := ta.exec(t, agentproto.ExecRequest{Argv: []string{"head", "-c", fmt.Sprint(size), "/dev/zero"}}, nil, nil)
	if res.Err != nil || res.Exit.Code != 0 || len(res.Stdout) != size {
		t.Fatalf("got %d bytes, exit %+v, err %v; want %d", len(res.Stdout), res.Exit, res.Err, size)
	}
}

func TestLookPath(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	write := func(path string, mode os.FileMode) {
		if err := os.WriteFile(path, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(a, "plain"), 0o644)  // not executable: skipped
	write(filepath.Join(b, "plain"), 0o755)  // found after it
	write(filepath.Join(a, "tool"), 0o700)   // owner-executable
	write(filepath.Join(b, "tool"), 0o755)   // shadowed by a's
	os.Mkdir(filepath.Join(a, "dir"), 0o755) // a directory is not a command
	os.Symlink(filepath.Join(b, "tool"), filepath.Join(a, "link"))
	path := a + ":" + b
	tests := []struct{ name, path, want string }{
		{"tool", path, filepath.Join(a, "tool")},
		{"plain", path, filepath.Join(b, "plain")},
		{"dir", path, ""},
		{"link", path, filepath.Join(a, "link")},
		{"missing", path, ""},
		{"/bin/anything", path, "/bin/anything"}, // a slash: used as it is
		{"tool", "", ""},
	}
	for _, tt := range tests {
		if got := lookPath(tt.name, tt.path); got != tt.want {
			t.Errorf("lookPath(%q, %q) = %q, want %q", tt.name, tt.path, got, tt.want)
		}
	}
}
