package image

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/creack/pty"
)

func TestProgressPlainLines(t *testing.T) {
	var out bytes.Buffer
	p := newProgressReporter(&out)
	p.Phase("staging", 0)
	p.Phase("downloading", 0)
	p.Add(2)
	p.Add(1)
	p.Phase("unpacking", 3)
	p.Set(5) // more than announced: the total grows
	p.Printf("note %d", 7)
	p.BytesPhase("fetching", 3<<20)
	p.Set(3 << 20)
	p.Done()
	p.Done() // idempotent
	want := strings.Join([]string{
		"staging",
		"downloading",
		"downloading: done (3)",
		"unpacking (3)",
		"unpacking: done (5)",
		"note 7",
		"fetching (3.0 MiB)",
		"fetching: done (3.0 MiB)",
	}, "\n") + "\n"
	if out.String() != want {
		t.Errorf("plain progress:\n%s\nwant:\n%s", out.String(), want)
	}
}

func TestProgressQuiet(t *testing.T) {
	var nilReporter *progressReporter
	for _, p := range []*progressReporter{newProgressReporter(nil), nilReporter} {
		p.Phase("x", 3)
		p.Add(1)
		p.Printf("y")
		p.Done() // must not panic or write anywhere
	}
}

// TestProgressTerminal drives the bar on a real pseudo-terminal.
func TestProgressTerminal(t *testing.T) {
	ptm, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	defer ptm.Close()
	got := make(chan string)
	go func() {
		b, _ := io.ReadAll(ptm) // ends with EIO once tty is closed
		got <- string(b)
	}()
	p := newProgressReporter(tty)
	if !p.tty {
		t.Fatal("a pty is not taken for a terminal")
	}
	p.Phase("configuring packages", 10)
	for range 10 {
		p.Add(1)
	}
	p.Printf("making ext4")
	p.Done()
	tty.Close()
	out := <-got
	t.Logf("terminal output: %q", out)
	for _, want := range []string{"configuring packages", "100%", "10/10", "\r", "making ext4"} {
		if !strings.Contains(out, want) {
			t.Errorf("terminal output lacks %q: %q", want, out)
		}
	}
}
