package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"os"

	"github.com/smolvm/smolvm"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// globals are the flags every command takes.
type globals struct {
	dataDir string
	verbose bool
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "smolvm",
		Short:         "Fresh, isolated Linux microVMs for agents, CI and people",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.dataDir, "data-dir", "", "data directory (default $SMOLVM_DATA_DIR, /var/lib/smolvm as root, else ~/.local/state/smolvm)")
	root.PersistentFlags().BoolVarP(&g.verbose, "verbose", "v", false, "log what smolvm does to stderr")
	root.AddCommand(
		runCmd(g), createCmd(g), startCmd(g), stopCmd(g), rmCmd(g), lsCmd(g), inspectCmd(g),
		execCmd(g), logsCmd(g), cleanupCmd(g), doctorCmd(g), imageCmd(g), superviseCmd(g),
		kernelCmd(g), benchCmd(g), portCmd(g), egressCmd(g),
		cpCmd(g), envCmd(g), shellCmd(g), sshCmd(g), psCmd(g),
		pauseCmd(g), resumeCmd(g), snapshotCmd(g), poolCmd(g), poolRefillCmd(g),
	)
	return root
}

// options turns the global flags into SDK options.
func (g *globals) options() []smolvm.Option {
	var opts []smolvm.Option
	if g.dataDir != "" {
		opts = append(opts, smolvm.WithDataDir(g.dataDir))
	}
	if g.verbose {
		opts = append(opts, smolvm.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, nil))))
	}
	return append(opts, smolvm.WithProgress(os.Stderr))
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }
