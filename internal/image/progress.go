package image

import (
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progressReporter shows the phases of a long build or download. On a
// terminal it draws one progress bar per phase; on anything else (a log file,
// a pipe, a test buffer) it writes plain lines: one when a phase starts and
// one when it ends. A nil writer makes it silent. It is safe for concurrent
// use.
type progressReporter struct {
	mu    sync.Mutex
	w     io.Writer // nil = quiet
	tty   bool
	bar   *progressbar.ProgressBar
	phase string
	total int64 // of the current phase; <= 0 when unknown
	now   int64
	bytes bool // the phase counts bytes
}

// newProgressReporter returns a reporter writing to w (nil = quiet).
func newProgressReporter(w io.Writer) *progressReporter {
	p := &progressReporter{w: w}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
	}
	return p
}

// Phase ends the current phase and starts one named name counting up to
// total items (total <= 0: unknown, shown as a running count).
func (p *progressReporter) Phase(name string, total int64) {
	p.startPhase(name, total, false)
}

// BytesPhase is Phase for a phase that counts bytes.
func (p *progressReporter) BytesPhase(name string, total int64) {
	p.startPhase(name, total, true)
}

func (p *progressReporter) startPhase(name string, total int64, bytes bool) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.w == nil {
		return
	}
	p.endLocked()
	p.phase, p.total, p.now, p.bytes = name, total, 0, bytes
	if !p.tty {
		if total > 0 && bytes {
			fmt.Fprintf(p.w, "%s (%s)\n", name, progressHumanBytes(total))
		} else if total > 0 {
			fmt.Fprintf(p.w, "%s (%d)\n", name, total)
		} else {
			fmt.Fprintf(p.w, "%s\n", name)
		}
		return
	}
	max := total
	if max <= 0 {
		max = -1
	}
	opts := []progressbar.Option{
		progressbar.OptionSetWriter(p.w),
		progressbar.OptionSetDescription(name),
		progressbar.OptionSetWidth(30),
		progressbar.OptionShowCount(),
		progressbar.OptionSetRenderBlankState(true),
		progressbar.OptionSetPredictTime(false),
		progressbar.OptionShowElapsedTimeOnFinish(),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(p.w) }),
	}
	if bytes {
		opts = append(opts, progressbar.OptionShowBytes(true), progressbar.OptionUseIECUnits(true))
	}
	p.bar = progressbar.NewOptions64(max, opts...)
}

// Set moves the current phase to n items done.
func (p *progressReporter) Set(n int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if n < p.now {
		return
	}
	p.now = n
	if p.total > 0 && n > p.total { // the estimate was low: grow, don't finish early
		p.total = n + 1
		if p.bar != nil {
			p.bar.ChangeMax64(p.total)
		}
	}
	if p.bar != nil {
		_ = p.bar.Set64(n)
	}
}

// Add moves the current phase n items on.
func (p *progressReporter) Add(n int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	now := p.now + n
	p.mu.Unlock()
	p.Set(now)
}

// Printf writes one plain line (ending the current bar first on a
// terminal, so the line does not tear it).
func (p *progressReporter) Printf(format string, args ...any) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.w == nil {
		return
	}
	p.endLocked()
	fmt.Fprintf(p.w, format+"\n", args...)
}

// Done ends the current phase.
func (p *progressReporter) Done() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.endLocked()
}

func (p *progressReporter) endLocked() {
	if p.w == nil || p.phase == "" {
		return
	}
	if p.bar != nil {
		_ = p.bar.Finish()
		p.bar = nil
	} else if p.bytes {
		fmt.Fprintf(p.w, "%s: done (%s)\n", p.phase, progressHumanBytes(p.now))
	} else if p.now > 0 {
		fmt.Fprintf(p.w, "%s: done (%d)\n", p.phase, p.now)
	}
	p.phase = ""
}

// progressHumanBytes formats n bytes with binary units: "70.2 MiB".
func progressHumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
