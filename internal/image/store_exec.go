package image

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// storeToolTail is how many of a tool's last output lines go into its error.
const storeToolTail = 8

// storeToolDrain bounds the wait for a tool's output after it exited.
const storeToolDrain = 2 * time.Second

// storeTool describes one run of an external tool (mkfs.ext4, debootstrap,
// apt-get, dpkg-deb).
type storeTool struct {
	Name   string   // program, looked up in PATH
	Args   []string // arguments
	Dir    string   // working directory; "" = current
	Env    []string // extra environment (appended to the inherited one)
	OnLine func(string)
}

// storeRunTool runs t, feeding each line of its combined stdout and stderr
// to t.OnLine; on failure the error holds the tool's last lines. The tool
// runs in its own process group: cancelling ctx sends SIGTERM to the group
// (so tools like debootstrap can unmount what they mounted), and once the
// tool has exited (or 10 s later) SIGKILL to whatever is left of the group.
func storeRunTool(ctx context.Context, t storeTool) error {
	cmd := exec.CommandContext(ctx, t.Name, t.Args...)
	cmd.Dir = t.Dir
	if len(t.Env) > 0 {
		cmd.Env = append(cmd.Environ(), t.Env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second

	// An *os.File pipe, not an io.Writer: Wait then returns when the tool
	// exits, not when every descendant has closed its copy of the pipe.
	pr, pw, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("run %s: %w", t.Name, err)
	}
	defer pr.Close()
	cmd.Stdout, cmd.Stderr = pw, pw
	tail := storeTailLines{max: storeToolTail}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			line := sc.Text()
			tail.add(line)
			if t.OnLine != nil {
				t.OnLine(line)
			}
		}
		_, _ = io.Copy(io.Discard, pr) // after an overlong line: keep draining
	}()

	err = cmd.Start()
	pw.Close()
	if err != nil {
		<-scanned
		return fmt.Errorf("run %s: %w", t.Name, err)
	}
	err = cmd.Wait()
	if ctx.Err() != nil {
		// Sweep the group: children of a cancelled tool (dpkg under
		// debootstrap) must not outlive the build. ESRCH is fine.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	select {
	case <-scanned:
	case <-time.After(storeToolDrain):
		// A daemon the tool left behind holds the pipe; stop reading.
		pr.Close()
		<-scanned
	}
	if err == nil {
		return nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("%s: %w", t.Name, ctxErr)
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return fmt.Errorf("%s exited with status %d: %s", t.Name, exitErr.ExitCode(), tail.String())
	}
	return fmt.Errorf("%s: %w: %s", t.Name, err, tail.String())
}

// storeToolOutput runs t and returns its combined output (for short
// queries such as apt-cache).
func storeToolOutput(ctx context.Context, t storeTool) (string, error) {
	var b strings.Builder
	t.OnLine = func(line string) { b.WriteString(line); b.WriteByte('\n') }
	err := storeRunTool(ctx, t)
	return b.String(), err
}

// storeTailLines keeps the last max lines written to it.
type storeTailLines struct {
	max   int
	lines []string
}

func (t *storeTailLines) add(line string) {
	line = strings.TrimSpace(line)
	if line == "" {
		return
	}
	t.lines = append(t.lines, line)
	if len(t.lines) > t.max {
		t.lines = t.lines[len(t.lines)-t.max:]
	}
}

// String joins the kept lines with " | " so the error stays on one line.
func (t *storeTailLines) String() string {
	if len(t.lines) == 0 {
		return "(no output)"
	}
	return strings.Join(t.lines, " | ")
}
