package smolvm

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/smolvm/smolvm/internal/store"
)

// Option changes how the SDK finds its state and reports progress.
type Option func(*options)

type options struct {
	dataDir  string
	logger   *slog.Logger
	progress io.Writer
	exe      string
}

// WithDataDir sets the data directory (database, images, VM files). The
// default is $SMOLVM_DATA_DIR, else /var/lib/smolvm for root, else
// $XDG_STATE_HOME/smolvm (~/.local/state/smolvm).
func WithDataDir(dir string) Option { return func(o *options) { o.dataDir = dir } }

// WithLogger sets the logger for SDK internals (nil discards).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithProgress sets where long work (image builds, kernel fetches) reports
// progress; nil is quiet.
func WithProgress(w io.Writer) Option { return func(o *options) { o.progress = w } }

// WithExecutable sets the smolvm binary used as supervisor and guest agent.
// The default is the running program, which suits the smolvm CLI; programs
// that embed the SDK point it at an installed smolvm binary.
func WithExecutable(path string) Option { return func(o *options) { o.exe = path } }

// DefaultDataDir returns the data directory used when none is given.
func DefaultDataDir() string {
	if d := os.Getenv("SMOLVM_DATA_DIR"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/lib/smolvm"
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "smolvm")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "state", "smolvm")
}

// host is one open data directory.
type host struct {
	dir   string
	store *store.Store
	log   *slog.Logger
	opts  options
}

func openHost(ctx context.Context, opt []Option) (*host, error) {
	var o options
	for _, f := range opt {
		f(&o)
	}
	if o.dataDir == "" {
		o.dataDir = DefaultDataDir()
	}
	dir, err := filepath.Abs(o.dataDir)
	if err != nil {
		return nil, err
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	if o.exe == "" {
		if o.exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("finding the smolvm executable: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "vms"), 0o755); err != nil {
		return nil, fmt.Errorf("creating data dir: %w", err)
	}
	st, err := store.Open(ctx, filepath.Join(dir, "smolvm.db"))
	if err != nil {
		return nil, err
	}
	return &host{dir: dir, store: st, log: o.logger, opts: o}, nil
}

func (h *host) vmDir(id string) string { return filepath.Join(h.dir, "vms", id) }

func (h *host) path(elem ...string) string {
	return filepath.Join(append([]string{h.dir}, elem...)...)
}
