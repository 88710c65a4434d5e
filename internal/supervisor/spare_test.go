package supervisor

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// spareSession is a supervisor whose session runs over a pipe to an agent
// end (the returned session), with the streams the agent accepts.
func spareSession(t *testing.T) (*supervisor, *yamux.Session, <-chan net.Conn) {
	t.Helper()
	a, b := net.Pipe()
	s := &supervisor{spare: make(chan *yamux.Stream, 1)}
	// Held for an hour: only the flush can send a lone opening.
	s.chanW = agentproto.JoinWrites(a, time.Hour)
	var err error
	if s.session, err = yamux.Client(s.chanW, agentproto.YamuxConfig()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.session.Close() })
	agent, err := yamux.Server(b, agentproto.YamuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Close() })
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
	return s, agent, accepted
}

// The spare stream reaches the agent before any client asks (its opening
// is not held for a request), carries the next client's request, and is
// replaced once that client is done.
func TestSpareStream(t *testing.T) {
	s, _, accepted := spareSession(t)
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

// A spare left from a session that has ended is not handed out: the
// client hears why, as without a spare.
func TestSpareStreamAfterSessionEnds(t *testing.T) {
	s, agent, accepted := spareSession(t)
	s.openSpare()
	<-accepted
	agent.Close()
	for deadline := time.Now().Add(10 * time.Second); !s.session.IsClosed(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the supervisor's session never noticed the agent's end")
		}
	}
	client, c := net.Pipe()
	go s.proxyAgent(c, bufio.NewReader(c))
	defer client.Close()
	var rep reply
	if err := readLine(bufio.NewReader(client), &rep); err != nil || !strings.Contains(rep.Error, "session shutdown") {
		t.Errorf("answer %+v, %v; want the session's end", rep, err)
	}
}
