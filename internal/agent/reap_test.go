package agent

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startWithReaper forks argv under r, its stdout going to out (or /dev/null).
func startWithReaper(r *Reaper, out *os.File, argv ...string) (int, <-chan unix.WaitStatus, error) {
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return 0, nil, err
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		return 0, nil, err
	}
	defer null.Close()
	if out == nil {
		out = null
	}
	return r.Start(func() (int, error) {
		return syscall.ForkExec(path, argv, &syscall.ProcAttr{
			Files: []uintptr{null.Fd(), out.Fd(), 2},
			Sys:   &syscall.SysProcAttr{Setpgid: true},
		})
	})
}

func TestReaperRoutesStatuses(t *testing.T) {
	r := NewReaper(false)
	defer r.Close()
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Processes that exit at once race with their registration.
			_, wait, err := startWithReaper(r, nil, "sh", "-c", fmt.Sprintf("exit %d", i%7))
			if err != nil {
				errs <- err
				return
			}
			select {
			case ws := <-wait:
				if ws.ExitStatus() != i%7 {
					errs <- fmt.Errorf("child %d: exit %d", i, ws.ExitStatus())
				}
			case <-time.After(time.Minute):
				errs <- fmt.Errorf("child %d: no status", i)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestReaperReapsOrphans runs itself in a child process that is a child
// subreaper, as PID 1 is in effect, so that orphans re-parent to it.
func TestReaperReapsOrphans(t *testing.T) {
	if os.Getenv("AGENT_REAPER_HELPER") == "1" {
		reaperOrphanHelper(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestReaperReapsOrphans$", "-test.v")
	cmd.Env = append(os.Environ(), "AGENT_REAPER_HELPER=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
}

func reaperOrphanHelper(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	r := NewReaper(true)
	defer r.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// The shell prints its background child's pid and exits; the child
	// becomes an orphan of this process.
	_, wait, err := startWithReaper(r, pw, "sh", "-c", "sleep 0.2 & echo $!")
	pw.Close()
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	orphan, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	if ws := <-wait; ws.ExitStatus() != 0 {
		t.Fatalf("shell exit %d", ws.ExitStatus())
	}
	for range 1000 {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", orphan))
		if errors.Is(err, fs.ErrNotExist) {
			return // exited and reaped: no zombie left
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("orphan %d was never reaped", orphan)
}
