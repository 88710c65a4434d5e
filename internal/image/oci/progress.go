package oci

import (
	"fmt"
	"io"
	"os"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress reports bytes fetched: a bar on a terminal, a line per layer
// elsewhere, nothing without a writer. It is an io.Writer counting bytes.
type progress struct {
	w   io.Writer
	bar *progressbar.ProgressBar
}

func newProgress(w io.Writer, ref string, total int64) *progress {
	p := &progress{w: w}
	if w == nil || total == 0 {
		return p
	}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription("pulling "+ref),
			progressbar.OptionShowBytes(true),
			progressbar.OptionShowTotalBytes(true),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
		)
		return p
	}
	fmt.Fprintf(w, "pulling %s: %s to fetch\n", ref, humanBytes(total))
	return p
}

func (p *progress) Write(b []byte) (int, error) {
	if p.bar != nil {
		p.bar.Add(len(b))
	}
	return len(b), nil
}

func (p *progress) start(d v1.Descriptor) {
	if p.w != nil && p.bar == nil {
		fmt.Fprintf(p.w, "fetching layer %s (%s)\n", short(d.Digest), humanBytes(d.Size))
	}
}

func (p *progress) done(d v1.Descriptor) {
	if p.w != nil && p.bar == nil {
		fmt.Fprintf(p.w, "fetched layer %s\n", short(d.Digest))
	}
}

func (p *progress) finish() {
	if p.bar != nil {
		p.bar.Exit()
	}
}

func short(d v1.Hash) string {
	if len(d.Hex) > 12 {
		return d.Algorithm + ":" + d.Hex[:12]
	}
	return d.String()
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
