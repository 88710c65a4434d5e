package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/dustin/go-humanize"
	"github.com/smolvm/smolvm"
	"github.com/spf13/cobra"
)

func imageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Pull, import, build, list, inspect, remove and prune root filesystem images",
		Long: `Images are ext4 root filesystems that VMs boot from. They come from the
built-in recipes (tiny, base), OCI/Docker images (pull, import), directories
and root filesystem tarballs (build --from-dir, --from-tar).

A pulled image's local name is its repository path without the registry
host (and without Docker Hub's library/), slashes as dashes, then -TAG unless
the tag is latest: python:3.12-slim is python-3.12-slim, ghcr.io/org/tool:1
is org-tool-1. --name chooses another.`,
	}
	cmd.AddCommand(imagePullCmd(g), imageImportCmd(g), imageBuildCmd(g), imageLsCmd(g),
		imageInspectCmd(g), imageRmCmd(g), imagePruneCmd(g))
	return cmd
}

func imagePullCmd(g *globals) *cobra.Command {
	var opts smolvm.PullOptions
	cmd := &cobra.Command{
		Use:   "pull REF",
		Short: "Pull an OCI/Docker image from a registry and make it a bootable image",
		Example: `  smolvm image pull python:3.12-slim
  smolvm image pull ghcr.io/org/img:tag --name img
  smolvm run --image python-3.12-slim -- python3 -V`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			img, err := smolvm.PullImage(cmd.Context(), args[0], opts, g.options()...)
			if err != nil {
				return err
			}
			return printImageLine(cmd.OutOrStdout(), img)
		},
	}
	cmd.Flags().StringVar(&opts.Name, "name", "", "local image name (default: derived from REF)")
	cmd.Flags().StringVar(&opts.Platform, "platform", "", "os/arch[/variant] to pull (default linux and this host's arch)")
	return cmd
}

func imageImportCmd(g *globals) *cobra.Command {
	var opts smolvm.ImportOptions
	cmd := &cobra.Command{
		Use:     "import FILE",
		Short:   "Import a `docker save` or OCI layout tarball as a bootable image",
		Example: `  docker save python:3.12-slim -o py.tar && smolvm image import py.tar --name py`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			img, err := smolvm.ImportImage(cmd.Context(), args[0], opts, g.options()...)
			if err != nil {
				return err
			}
			return printImageLine(cmd.OutOrStdout(), img)
		},
	}
	cmd.Flags().StringVar(&opts.Tag, "tag", "", "the image to take from a tarball holding several (repo:tag)")
	cmd.Flags().StringVar(&opts.Name, "name", "", "local image name (default: from --tag, else the file name)")
	return cmd
}

func imageBuildCmd(g *globals) *cobra.Command {
	var force bool
	var dir, tarball string
	cmd := &cobra.Command{
		Use:   "build NAME [--from-dir DIR | --from-tar FILE]",
		Short: "Build a built-in image (tiny, base), or an image from a directory or root filesystem tarball",
		Long: `Without --from-dir or --from-tar, NAME is a built-in image: tiny (busybox)
or base (Debian + python3, bash, curl, git), rebuilt only when its inputs changed.
With one of them, NAME is the new image's name.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, name := cmd.Context(), args[0]
			var img smolvm.Image
			var err error
			switch {
			case dir != "" && tarball != "":
				return errors.New("give --from-dir or --from-tar, not both")
			case dir != "":
				img, err = smolvm.ImageFromDir(ctx, name, dir, g.options()...)
			case tarball != "":
				img, err = smolvm.ImageFromTar(ctx, name, tarball, g.options()...)
			default:
				img, err = smolvm.BuildImage(ctx, name, force, g.options()...)
			}
			if err != nil {
				return err
			}
			return printImageLine(cmd.OutOrStdout(), img)
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "rebuild a built-in image even when its inputs have not changed")
	cmd.Flags().StringVar(&dir, "from-dir", "", "build from this directory, taken as the root filesystem")
	cmd.Flags().StringVar(&tarball, "from-tar", "", "build from this root filesystem tarball (plain, gzip or zstd)")
	return cmd
}

func imageLsCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List images",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			imgs, err := smolvm.ListImages(cmd.Context(), g.options()...)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				if imgs == nil {
					imgs = []smolvm.Image{}
				}
				return printJSON(out, imgs)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSOURCE\tDIGEST\tSIZE\tCREATED")
			for _, i := range imgs {
				fmt.Fprintf(tw, "%s\t%s\t%.19s\t%s\t%s\n", i.Name, i.Source, i.Digest,
					humanize.IBytes(uint64(i.Size)), humanize.Time(i.Created))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func imageInspectCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect NAME",
		Short: "Show an image: where it came from, its digest, size, and the defaults it gives VMs",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			img, err := smolvm.InspectImage(cmd.Context(), args[0], g.options()...)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), img)
			}
			return printImage(cmd.OutOrStdout(), img)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func imageRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME...",
		Short: "Remove images (their cached layers stay until image prune)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, names []string) error {
			for _, n := range names {
				if err := smolvm.RemoveImage(cmd.Context(), n, g.options()...); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

func imagePruneCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Remove cached layers no image uses, and downloads a killed pull left behind",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rep, err := smolvm.PruneImages(cmd.Context(), g.options()...)
			if asJSON && err == nil {
				if rep.Removed == nil {
					rep.Removed = []smolvm.PrunedFile{}
				}
				return printJSON(cmd.OutOrStdout(), rep)
			}
			printPruned(cmd.OutOrStdout(), rep)
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printPruned(w io.Writer, rep smolvm.PruneReport) {
	if len(rep.Removed) == 0 {
		fmt.Fprintln(w, "nothing to remove")
		return
	}
	for _, f := range rep.Removed {
		fmt.Fprintf(w, "removed %s %s (%s)\n", f.Kind, f.Name, humanize.IBytes(uint64(f.Size)))
	}
	fmt.Fprintf(w, "freed %s in %d files\n", humanize.IBytes(uint64(rep.Bytes)), len(rep.Removed))
}

// printImageLine prints a new image in one line: name, size, digest.
func printImageLine(w io.Writer, img smolvm.Image) error {
	_, err := fmt.Fprintf(w, "%s %s %s\n", img.Name, humanize.IBytes(uint64(img.Size)), img.Digest)
	return err
}

// printImage prints an image's details, one per line.
func printImage(w io.Writer, img smolvm.Image) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) {
		if k != "" {
			k += ":"
		}
		fmt.Fprintf(tw, "%s\t%s\n", k, v)
	}
	row("Name", img.Name)
	row("Source", img.Source)
	row("Digest", img.Digest)
	row("Size", fmt.Sprintf("%s (%d bytes)", humanize.IBytes(uint64(img.Size)), img.Size))
	row("Created", img.Created.Local().Format("2006-01-02 15:04:05 MST"))
	row("Path", img.Path)
	if c := img.Config; c != nil {
		if c.User != "" {
			row("User", c.User)
		}
		if c.WorkingDir != "" {
			row("WorkingDir", c.WorkingDir)
		}
		label := "Env"
		for _, kv := range c.Env {
			row(label, kv)
			label = ""
		}
		if len(c.Entrypoint) > 0 {
			row("Entrypoint", quoteArgv(c.Entrypoint))
		}
		if len(c.Cmd) > 0 {
			row("Cmd", quoteArgv(c.Cmd))
		}
	}
	return tw.Flush()
}

// quoteArgv shows an argv as a JSON-like list, as docker inspect does.
func quoteArgv(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = fmt.Sprintf("%q", a)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// resolveRunImage is `smolvm run`'s image handling: --image may name an
// image reference, pulled on first use (with progress), and with no
// command the image's Entrypoint and Cmd run. It returns the config with
// the local image name and the command to run.
func resolveRunImage(ctx context.Context, g *globals, cfg smolvm.Config, argv []string) (smolvm.Config, []string, error) {
	var ic *smolvm.ImageConfig
	if cfg.Rootfs == "" && cfg.Image != "" {
		img, err := smolvm.EnsureImage(ctx, cfg.Image, g.options()...)
		if err != nil {
			return cfg, nil, err
		}
		cfg.Image, ic = img.Name, img.Config
	}
	if len(argv) > 0 {
		return cfg, argv, nil
	}
	if ic != nil {
		argv = append(append([]string{}, ic.Entrypoint...), ic.Cmd...)
	}
	if len(argv) == 0 {
		what := "the default image"
		switch {
		case cfg.Rootfs != "":
			what = "--rootfs"
		case cfg.Image != "":
			what = "image " + cfg.Image
		}
		return cfg, nil, fmt.Errorf("no command to run: give one after -- (%s has no Entrypoint or Cmd)", what)
	}
	return cfg, argv, nil
}
