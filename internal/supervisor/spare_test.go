package supervisor

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// The spare stream reaches the agent before any client asks (its opening
// is not held for a request), carries the next client's request, and is
// replaced once that client is done.
func TestSpareStream(t *testing.T) {
	a, b := net.Pipe()
	s := &supervisor{spare: make(chan *yamux.Stream, 1)}
	// Held for an hour: only the flush can send a lone opening.
	s.chanW = agentproto.JoinWrites(a, time.Hour)
	var err error
	if s.session, err = yamux.Client(s.chanW, agentproto.YamuxConfig()); err != nil {
		t.Fatal(err)
	}
	defer s.session.Close()
	agent, err := yamux.Server(b, agentproto.YamuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			st, err := agent.Accept()
			if err != nil {
				return
			}
			accepted <- st
		}
	}()
	acceptedStream := func(what string) net.Conn {
		t.Helper()
		select {
		case st := <-accepted:
			return st
		case <-time.After(10 * time.Second):
			t.Fatalf("the agent never got %s", what)
			return nil
		}
	}

	s.openSpare()
	spare := acceptedStream("the spare stream")

	client, c := net.Pipe()
	done := make(chan struct{})
	go func() {
		s.proxyAgent(c, bufio.NewReader(c))
		close(done)
	}()
	got := make(chan string, 2) // what the client reads: the answer, the reply
	go func() {
		br := bufio.NewReader(client)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				close(got)
				return
			}
			got <- line
		}
	}()
	go io.WriteString(client, "request\n")
	line, err := bufio.NewReader(spare).ReadString('\n')
	if err != nil || line != "request\n" {
		t.Fatalf("the spare stream read %q, %v; want the client's request", line, err)
	}
	io.WriteString(spare, "reply\n")
	spare.Close()
	for _, want := range []string{"{\"ok\":true}\n", "reply\n"} {
		if line := <-got; line != want {
			t.Fatalf("client read %q; want %q", line, want)
		}
	}
	client.Close()
	<-done
	if next := acceptedStream("a new spare after the client was done"); next == spare {
		t.Fatal("the used spare came back")
	}
	if n := len(accepted); n != 0 {
		t.Errorf("%d more streams were opened; want one spare at a time", n)
	}
}
