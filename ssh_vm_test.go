package smolvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smolvm/smolvm/internal/vmtest"
)

// sshArgs returns OpenSSH options for info with key (and -p or -P),
// checking the host key against info's known_hosts file.
func sshArgs(info SSHInfo, key, portFlag string) []string {
	return []string{"-i", key, portFlag, strconv.Itoa(info.Port), "-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile=" + info.KnownHostsFile, "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
		"-o", "IdentitiesOnly=yes"}
}

func TestSSHVM(t *testing.T) {
	vmtest.Require(t, "ssh", "scp", "sftp")
	vm := bootQuiet(t, Config{Env: map[string]string{"FROM_CFG": "cfg"}})
	ctx := context.Background()
	if err := vm.SetEnv(ctx, map[string]string{"FROM_SETENV": "set"}); err != nil {
		t.Fatal(err)
	}
	info, err := vm.SSH(ctx, SSHOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Port < 2200 || info.Port > 2999 || info.Host != "127.0.0.1" {
		t.Fatalf("ssh info %+v", info)
	}
	target := "root@127.0.0.1"
	run := func(name string, args ...string) (string, int) {
		var out bytes.Buffer
		cmd := exec.Command(name, args...)
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.Stdin = strings.NewReader("from stdin")
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return out.String(), ee.ExitCode()
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return out.String(), 0
	}

	out, code := run("ssh", append(sshArgs(info, info.KeyPath, "-p"), target, `cat; echo " $((6*7)) $(pwd) $FROM_CFG $FROM_SETENV"; exit 3`)...)
	if code != 3 || out != "from stdin 42 /root cfg set\n" {
		t.Fatalf("ssh: exit %d, output %q", code, out)
	}

	dir := t.TempDir()
	local := filepath.Join(dir, "up.txt")
	os.WriteFile(local, []byte("via scp\n"), 0o640)
	if out, code := run("scp", append(sshArgs(info, info.KeyPath, "-P"), local, target+":/tmp/up.txt")...); code != 0 {
		t.Fatalf("scp up: %d %s", code, out)
	}
	if b, err := vm.ReadFile(ctx, "/tmp/up.txt"); err != nil || string(b) != "via scp\n" {
		t.Fatalf("after scp: %q %v", b, err)
	}
	batch := filepath.Join(dir, "batch")
	os.WriteFile(batch, []byte(fmt.Sprintf("mkdir /tmp/sftpdir\nput %s /tmp/sftpdir/x\nls /tmp/sftpdir\nget /tmp/up.txt %s/down.txt\n", local, dir)), 0o644)
	if out, code := run("sftp", append(sshArgs(info, info.KeyPath, "-P"), "-b", batch, target)...); code != 0 || !strings.Contains(out, "/tmp/sftpdir/x") {
		t.Fatalf("sftp: %d %s", code, out)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "down.txt")); string(b) != "via scp\n" {
		t.Fatalf("sftp get: %q", b)
	}

	// A key the VM was not given is refused; --ssh-key authorizes one.
	other := filepath.Join(dir, "other_key")
	if err := makeSSHKey(other); err != nil {
		t.Fatal(err)
	}
	if out, code := run("ssh", append(sshArgs(info, other, "-p"), target, "true")...); code != 255 {
		t.Fatalf("unauthorized key: exit %d %s", code, out)
	}
	if _, err := vm.SSH(ctx, SSHOptions{KeyPath: other}); err != nil {
		t.Fatal(err)
	}
	if out, code := run("ssh", append(sshArgs(info, other, "-p"), target, "true")...); code != 0 {
		t.Fatalf("authorized key: exit %d %s", code, out)
	}

	// The host key is checked: another key for the same address is
	// refused, and the VM's own survives a restart.
	wrong := info
	wrong.KnownHostsFile = filepath.Join(dir, "known_hosts")
	otherPub, err := os.ReadFile(other + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(wrong.KnownHostsFile, []byte(fmt.Sprintf("[127.0.0.1]:%d %s", info.Port, otherPub)), 0o644)
	if out, code := run("ssh", append(sshArgs(wrong, info.KeyPath, "-p"), target, "true")...); code != 255 || !strings.Contains(out, "HOST IDENTIFICATION HAS CHANGED") {
		t.Fatalf("a wrong host key: exit %d %s", code, out)
	}
	if err := vm.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	again, err := vm.SSH(ctx, SSHOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if out, code := run(again.Command[0], append(again.Command[1:], "-o", "BatchMode=yes", "echo", "back")...); code != 0 || out != "back\n" {
		t.Fatalf("ssh with the ready command after a restart: exit %d %q", code, out)
	}
}

// tmux drives a real terminal multiplexer on its own server socket.
type tmux struct {
	t      *testing.T
	socket string
	name   string
}

func (m *tmux) cmd(args ...string) string {
	m.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-L", m.socket}, args...)...).CombinedOutput()
	if err != nil {
		m.t.Fatalf("tmux %v: %v %s", args, err, out)
	}
	return string(out)
}

// waitFor polls the pane until it shows want (a terminal gives no event).
func (m *tmux) waitFor(want string) {
	m.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		pane := m.cmd("capture-pane", "-p", "-t", m.name)
		if strings.Contains(pane, want) {
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("pane never showed %q; it shows:\n%s", want, pane)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestShellUnderTmuxVM(t *testing.T) {
	vmtest.Require(t, "tmux")
	vm := bootQuiet(t, Config{})
	m := &tmux{t: t, socket: fmt.Sprintf("smolvm-test-%d", os.Getpid()), name: "sh"}
	shell := fmt.Sprintf("%s --data-dir %s shell %s; echo SHELL-EXIT=$?; sleep 600",
		vmtest.Binary(t), vmtest.DataDir(t), vm.ID())
	m.cmd("new-session", "-d", "-s", m.name, "-x", "100", "-y", "30", shell)
	t.Cleanup(func() { exec.Command("tmux", "-L", m.socket, "kill-server").Run() })

	m.cmd("send-keys", "-t", m.name, "stty size; echo term=$TERM", "Enter")
	m.waitFor("30 100")
	m.waitFor("term=xterm-256color")
	m.cmd("send-keys", "-t", m.name, "sleep 600", "Enter")
	waitGuest(t, vm, "ps | grep -c '[s]leep 600'", "1") // Ctrl-C must find it in the foreground
	m.cmd("send-keys", "-t", m.name, "C-c")
	m.cmd("send-keys", "-t", m.name, "echo after-$((40+2))", "Enter")
	m.waitFor("after-42")
	m.cmd("resize-window", "-t", m.name, "-x", "120", "-y", "40")
	m.cmd("send-keys", "-t", m.name, "stty size", "Enter")
	m.waitFor("40 120")
	m.cmd("send-keys", "-t", m.name, "exit 3", "Enter")
	m.waitFor("SHELL-EXIT=3")
	res, err := vm.Run(context.Background(), Shell("ps | grep -c '[s]leep 600'"), RunOptions{})
	if err != nil || strings.TrimSpace(string(res.Stdout)) != "0" {
		t.Fatalf("the interrupted sleep still runs: %q %v", res.Stdout, err)
	}
}

// waitGuest polls script in the guest until it prints want.
func waitGuest(t *testing.T, vm *VM, script, want string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		res, err := vm.Run(context.Background(), Shell(script), RunOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(string(res.Stdout)) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q printed %q, never %q", script, res.Stdout, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
