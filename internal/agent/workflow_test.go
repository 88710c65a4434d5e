package agent

import (
	"archive/tar"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// call sends a request and reads its Response (or the guest's error).
func (ta *testAgent) call(t *testing.T, req agentproto.Request) (agentproto.Response, *agentproto.Conn, error) {
	t.Helper()
	c := ta.request(t, req)
	var resp agentproto.Response
	err := c.ReadJSON(agentproto.FrameResponse, &resp)
	return resp, c, err
}

// readData collects data frames until FrameDone (or an error frame).
func readData(c *agentproto.Conn) ([]byte, agentproto.Done, error) {
	var out bytes.Buffer
	for {
		t, p, err := c.ReadFrame(nil)
		if err != nil {
			return out.Bytes(), agentproto.Done{}, err
		}
		switch t {
		case agentproto.FrameStdout, agentproto.FrameStderr:
			out.Write(p)
		case agentproto.FrameDone:
			var d agentproto.Done
			return out.Bytes(), d, jsonUnmarshal(p, &d)
		case agentproto.FrameError:
			var e agentproto.Error
			jsonUnmarshal(p, &e)
			return out.Bytes(), agentproto.Done{}, &e
		}
	}
}

func TestEnvSetUnsetListAndExec(t *testing.T) {
	ta := startAgent(t)
	tricky := "it's \"quoted\"\nline2 $HOME `x` \\"
	env := func(op string, e agentproto.EnvRequest) (agentproto.Response, error) {
		resp, c, err := ta.call(t, agentproto.Request{Op: op, Env: &e})
		c.Close()
		return resp, err
	}
	if _, err := env(agentproto.OpEnvSet, agentproto.EnvRequest{Set: map[string]string{"TRICKY": tricky, "FROM_CFG": "set"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := env(agentproto.OpEnvUnset, agentproto.EnvRequest{Unset: []string{"GONE"}}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"1X", "A-B", "", "A=B"} {
		if _, err := env(agentproto.OpEnvSet, agentproto.EnvRequest{Set: map[string]string{bad: "v"}}); err == nil {
			t.Errorf("key %q was accepted", bad)
		}
	}
	resp, err := env(agentproto.OpEnvList, agentproto.EnvRequest{Base: []string{"GONE=x", "FROM_CFG=cfg", "KEEP=k"}})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"TRICKY": tricky, "FROM_CFG": "set", "KEEP": "k"}
	if len(resp.Env) != len(want) {
		t.Fatalf("list = %q, want %q", resp.Env, want)
	}
	for k, v := range want {
		if resp.Env[k] != v {
			t.Errorf("list[%s] = %q, want %q", k, resp.Env[k], v)
		}
	}
	res := ta.exec(t, agentproto.ExecRequest{
		Argv:    []string{"/bin/sh", "-c", `printf '%s|%s|%s|%s' "$TRICKY" "$FROM_CFG" "${GONE-unset}" "$PER_EXEC"`},
		BaseEnv: []string{"GONE=x", "FROM_CFG=cfg"}, Env: []string{"PER_EXEC=p"},
	}, nil, nil)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if w := tricky + "|set|unset|p"; res.Stdout != w {
		t.Fatalf("exec saw %q, want %q", res.Stdout, w)
	}
}

func TestFileOps(t *testing.T) {
	ta := startAgent(t)
	dir := t.TempDir()
	file := func(op string, f agentproto.FileRequest) (agentproto.Response, *agentproto.Conn, error) {
		return ta.call(t, agentproto.Request{Op: op, File: &f})
	}
	// WriteFile, then ReadFile, Stat, ListDir.
	body := bytes.Repeat([]byte("0123456789"), 300000)
	_, c, err := file(agentproto.OpWriteFile, agentproto.FileRequest{Path: dir + "/sub/../f.txt", Mode: 0o640})
	if err != nil {
		t.Fatal(err)
	}
	c.WriteFrame(agentproto.FrameStdin, body)
	c.WriteFrame(agentproto.FrameStdinClose, nil)
	if _, d, err := readData(c); err != nil || d.Bytes != int64(len(body)) {
		t.Fatalf("writefile: %v %+v", err, d)
	}
	resp, c, err := file(agentproto.OpReadFile, agentproto.FileRequest{Path: dir + "/f.txt"})
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := readData(c)
	if err != nil || !bytes.Equal(got, body) || resp.Stat.Size != int64(len(body)) || os.FileMode(resp.Stat.Mode) != 0o640 {
		t.Fatalf("readfile: %v, %d bytes, stat %+v", err, len(got), resp.Stat)
	}
	if _, _, err := file(agentproto.OpMkdirAll, agentproto.FileRequest{Path: dir + "/a/b/c"}); err != nil {
		t.Fatal(err)
	}
	os.Symlink("f.txt", filepath.Join(dir, "link"))
	resp, _, err = file(agentproto.OpListDir, agentproto.FileRequest{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range resp.Entries {
		names = append(names, e.Name+":"+e.Link)
	}
	if strings.Join(names, ",") != "a:,f.txt:,link:f.txt" {
		t.Fatalf("listdir = %v", names)
	}
	// Errors name the path.
	errs := []struct {
		op   string
		req  agentproto.FileRequest
		want string
	}{
		{agentproto.OpStat, agentproto.FileRequest{Path: dir + "/missing"}, dir + "/missing: no such file or directory"},
		{agentproto.OpListDir, agentproto.FileRequest{Path: dir + "/f.txt"}, dir + "/f.txt: not a directory"},
		{agentproto.OpReadFile, agentproto.FileRequest{Path: dir + "/a"}, dir + "/a: is a directory"},
		{agentproto.OpWriteFile, agentproto.FileRequest{Path: dir + "/nodir/x"}, dir + "/nodir: no such file or directory"},
		{agentproto.OpWriteFile, agentproto.FileRequest{Path: dir + "/f.txt/x"}, "not a directory"},
		{agentproto.OpRemove, agentproto.FileRequest{Path: dir + "/a"}, dir + "/a: directory not empty"},
		{agentproto.OpStat, agentproto.FileRequest{Path: "relative"}, `"relative": must be absolute`},
		{agentproto.OpUpload, agentproto.FileRequest{Path: dir + "/f.txt"}, dir + "/f.txt: not a directory"},
		{agentproto.OpRemove, agentproto.FileRequest{Path: "/", Recursive: true}, "refusing"},
	}
	for _, e := range errs {
		_, c, err := file(e.op, e.req)
		c.Close()
		if err == nil || !strings.Contains(err.Error(), e.want) {
			t.Errorf("%s %s: got %v, want %q", e.op, e.req.Path, err, e.want)
		}
	}
	if _, _, err := file(agentproto.OpRemove, agentproto.FileRequest{Path: dir + "/a", Recursive: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir + "/a"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a still exists: %v", err)
	}
}

func TestUploadDownloadTar(t *testing.T) {
	ta := startAgent(t)
	src, dst := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(src, "tree", "d"), 0o755)
	os.WriteFile(filepath.Join(src, "tree", "d", "x"), []byte("hello"), 0o755)
	os.Symlink("d/x", filepath.Join(src, "tree", "l"))
	resp, c, err := ta.call(t, agentproto.Request{Op: agentproto.OpDownload, File: &agentproto.FileRequest{Path: src + "/tree", Name: "copy"}})
	if err != nil {
		t.Fatal(err)
	}
	tarball, done, err := readData(c)
	if err != nil || done.Entries != 4 || !os.FileMode(resp.Stat.Mode).IsDir() {
		t.Fatalf("download: %v %+v %+v", err, done, resp.Stat)
	}
	_, c, err = ta.call(t, agentproto.Request{Op: agentproto.OpUpload, File: &agentproto.FileRequest{Path: dst}})
	if err != nil {
		t.Fatal(err)
	}
	c.WriteFrame(agentproto.FrameStdin, tarball)
	c.WriteFrame(agentproto.FrameStdinClose, nil)
	if _, d, err := readData(c); err != nil || d.Entries != 4 || d.Bytes != 5 {
		t.Fatalf("upload: %v %+v", err, d)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "copy", "l")); string(b) != "hello" {
		t.Fatalf("uploaded link reads %q", b)
	}
	// An entry escaping the destination is refused and names itself.
	var evil bytes.Buffer
	tw := tar.NewWriter(&evil)
	tw.WriteHeader(&tar.Header{Name: "../escape", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644})
	tw.Write([]byte("x"))
	tw.Close()
	_, c, _ = ta.call(t, agentproto.Request{Op: agentproto.OpUpload, File: &agentproto.FileRequest{Path: dst}})
	c.WriteFrame(agentproto.FrameStdin, evil.Bytes())
	c.WriteFrame(agentproto.FrameStdinClose, nil)
	if _, _, err := readData(c); err == nil || !strings.Contains(err.Error(), "../escape") {
		t.Fatalf("evil upload: %v", err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dst), "escape")); err == nil {
		t.Fatal("escape was written")
	}
}

func TestBackgroundProcesses(t *testing.T) {
	ta := startAgent(t)
	start := func(argv ...string) agentproto.ProcInfo {
		resp, c, err := ta.call(t, agentproto.Request{Op: agentproto.OpProcStart,
			Exec: &agentproto.ExecRequest{Argv: argv}, Proc: &agentproto.ProcRequest{BufferBytes: 4096}})
		if err != nil {
			t.Fatal(err)
		}
		c.Close() // the process outlives its stream
		return *resp.Proc
	}
	loud := start("/bin/sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done; echo err >&2; exit 7")
	sleeper := start("sleep", "60")
	resp, c, err := ta.call(t, agentproto.Request{Op: agentproto.OpProcWait, Proc: &agentproto.ProcRequest{ID: loud.ID}})
	c.Close()
	if err != nil || resp.Proc.Exit == nil || resp.Proc.Exit.Code != 7 || resp.Proc.Running {
		t.Fatalf("wait: %v %+v", err, resp.Proc)
	}
	_, c, err = ta.call(t, agentproto.Request{Op: agentproto.OpProcOutput, Proc: &agentproto.ProcRequest{ID: loud.ID}})
	if err != nil {
		t.Fatal(err)
	}
	out, done, err := readData(c)
	if err != nil || !strings.HasSuffix(string(out), "line1999\nerr\n") || done.Dropped == 0 || len(out) > 4096+4 {
		t.Fatalf("output: %v, %d bytes ending %q, done %+v", err, len(out), out[max(0, len(out)-20):], done)
	}
	resp, c, err = ta.call(t, agentproto.Request{Op: agentproto.OpProcList})
	c.Close()
	if err != nil || len(resp.Procs) != 2 || !resp.Procs[1].Running || resp.Procs[1].ID != sleeper.ID {
		t.Fatalf("list: %v %+v", err, resp.Procs)
	}
	_, c, err = ta.call(t, agentproto.Request{Op: agentproto.OpProcSignal, Proc: &agentproto.ProcRequest{ID: sleeper.ID, Signal: int(syscall.SIGTERM)}})
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	resp, c, err = ta.call(t, agentproto.Request{Op: agentproto.OpProcWait, Proc: &agentproto.ProcRequest{ID: sleeper.ID}})
	c.Close()
	if err != nil || resp.Proc.Exit.Signal != "SIGTERM" {
		t.Fatalf("wait after TERM: %v %+v", err, resp.Proc)
	}
	for _, id := range []string{loud.ID, sleeper.ID} {
		_, c, err := ta.call(t, agentproto.Request{Op: agentproto.OpProcRemove, Proc: &agentproto.ProcRequest{ID: id}})
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, c, err = ta.call(t, agentproto.Request{Op: agentproto.OpProcWait, Proc: &agentproto.ProcRequest{ID: loud.ID}})
	c.Close()
	if err == nil || !strings.Contains(err.Error(), "no background process") {
		t.Fatalf("wait on a removed process: %v", err)
	}
	for _, x := range []agentproto.ExecRequest{{Argv: []string{"true"}, Dir: "/nonexistent"}, {Argv: []string{"no-such-cmd"}, Dir: "/dev/null"}} {
		_, c, err := ta.call(t, agentproto.Request{Op: agentproto.OpProcStart, Exec: &x})
		c.Close()
		if err == nil || !strings.Contains(err.Error(), "working directory") {
			t.Fatalf("start in %s: %v, want the working directory named", x.Dir, err)
		}
	}
}

// TestExecHangsUpWhenHostGoes: a host that drops an exec stream leaves no
// process behind.
func TestExecHangsUpWhenHostGoes(t *testing.T) {
	for _, tty := range []bool{false, true} {
		ta := startAgent(t)
		c := ta.request(t, agentproto.Request{Op: agentproto.OpExec, Exec: &agentproto.ExecRequest{
			Argv: []string{"/bin/sh", "-c", "trap '' HUP; sleep 60"}, TTY: tty, Stdin: true, ReportPID: true}})
		var resp agentproto.Response
		if err := c.ReadJSON(agentproto.FrameResponse, &resp); err != nil {
			t.Fatal(err)
		}
		c.Close()
		deadline := time.Now().Add(10 * time.Second)
		for syscall.Kill(resp.PID, 0) == nil {
			if time.Now().After(deadline) {
				t.Fatalf("tty=%v: pid %d still runs after its host went away", tty, resp.PID)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func TestSSHSession(t *testing.T) {
	ta := startAgent(t)
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(priv)
	sshPub, _ := ssh.NewPublicKey(pub)
	authorized := string(ssh.MarshalAuthorizedKey(sshPub))
	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	otherSigner, _ := ssh.NewSignerFromKey(otherPriv)

	// The host's host key, given with each connection.
	_, hostPriv, _ := ed25519.GenerateKey(rand.Reader)
	block, _ := ssh.MarshalPrivateKey(hostPriv, "")
	hostPEM := string(pem.EncodeToMemory(block))
	hostSigner, _ := ssh.NewSignerFromKey(hostPriv)

	dial := func(user string, key ssh.Signer) (*ssh.Client, error) {
		return dialSSH(t, ta, &agentproto.SSHRequest{AuthorizedKeys: []string{authorized}}, user, key, ssh.InsecureIgnoreHostKey())
	}
	if _, err := dial("root", otherSigner); err == nil {
		t.Fatal("an unauthorized key got in")
	}
	if _, err := dial("nosuchuser", signer); err == nil {
		t.Fatal("an unknown user got in")
	}
	for i := 0; i < 2; i++ { // the second time from the parsed key kept
		given, err := dialSSH(t, ta, &agentproto.SSHRequest{AuthorizedKeys: []string{authorized}, HostKey: hostPEM},
			"root", signer, ssh.FixedHostKey(hostSigner.PublicKey()))
		if err != nil {
			t.Fatalf("with the given host key: %v", err)
		}
		given.Close()
	}
	if _, err := dial("root", signer); err != nil {
		t.Fatal(err)
	}
	if c, err := dialSSH(t, ta, &agentproto.SSHRequest{AuthorizedKeys: []string{authorized}},
		"root", signer, ssh.FixedHostKey(hostSigner.PublicKey())); err == nil {
		c.Close()
		t.Fatal("without a given host key the guest presented the given one")
	}
	client, err := dial("root", signer)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	sess, _ := client.NewSession()
	sess.Setenv("FROM_CLIENT", "v")
	sess.Stdin = strings.NewReader("in")
	out, err := sess.Output(`cat; echo " $FROM_CLIENT"; exit 3`)
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != 3 || string(out) != "in v\n" {
		t.Fatalf("got %q, %v; want \"in v\\n\" and exit 3", out, err)
	}
}

// dialSSH opens an agent stream for req and makes an SSH client over it.
func dialSSH(t *testing.T, ta *testAgent, req *agentproto.SSHRequest, user string, key ssh.Signer, hostKey ssh.HostKeyCallback) (*ssh.Client, error) {
	t.Helper()
	st, err := ta.sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	c := agentproto.NewConn(st)
	c.WriteJSON(agentproto.FrameRequest, agentproto.Request{Op: agentproto.OpSSH, SSH: req})
	var resp agentproto.Response
	if err := c.ReadJSON(agentproto.FrameResponse, &resp); err != nil {
		t.Fatal(err)
	}
	conn := &rawConn{Conn: st, r: c.Reader()}
	cc, chans, reqs, err := ssh.NewClientConn(conn, "guest", &ssh.ClientConfig{
		User: user, Auth: []ssh.AuthMethod{ssh.PublicKeys(key)}, HostKeyCallback: hostKey})
	if err != nil {
		return nil, err
	}
	return ssh.NewClient(cc, chans, reqs), nil
}
