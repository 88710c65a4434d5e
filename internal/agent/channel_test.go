package agent

import (
	"bufio"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// TestAcceptLoop serves connections the way the vsock channel does, over a
// unix socket (this host has no vsock transport to loop back through):
// each connection gets its own hello and session, and an idle one does not
// hold up the next.
func TestAcceptLoop(t *testing.T) {
	dir, err := os.MkdirTemp("/tmp", "agentsock")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "l.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		t.Fatal(err)
	}
	b := &boot{log: slog.New(slog.DiscardHandler)}
	cfg := Config{Hello: agentproto.Hello{Version: agentproto.Version, Hostname: "vs"}, State: NewState()}
	done := make(chan error, 1)
	go func() { done <- b.acceptLoop(fd, cfg) }()

	idle, err := net.Dial("unix", path) // connected, never used
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.Dial("unix", path)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			br := bufio.NewReader(conn)
			h, err := agentproto.ReadHello(br)
			if err != nil || h.Hostname != "vs" {
				t.Errorf("conn %d: hello %+v, %v", i, h, err)
				return
			}
			ta := &testAgent{sess: newClientSession(t, br, conn), hostConn: conn}
			defer ta.sess.Close()
			if res := ta.exec(t, agentproto.ExecRequest{Argv: []string{"echo", "x"}}, nil, nil); res.Err != nil || res.Stdout != "x\n" {
				t.Errorf("conn %d: exec %+v", i, res)
			}
		}()
	}
	wg.Wait()
	// Shutting the listener down wakes the blocked accept; the loop ends.
	unix.Shutdown(fd, unix.SHUT_RDWR)
	if err := <-done; err == nil {
		t.Error("acceptLoop returned nil after its socket was shut down")
	}
}
