package main

import (
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/dustin/go-humanize"
	"github.com/smolvm/smolvm"
	"github.com/spf13/cobra"
)

func imageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build, list and remove root filesystem images",
	}
	var force bool
	build := &cobra.Command{
		Use:   "build NAME",
		Short: "Build a built-in image: tiny (busybox) or base (Debian + python3, bash, curl, git)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			img, err := smolvm.BuildImage(cmd.Context(), args[0], force, g.options()...)
			if err != nil {
				return err
			}
			fmt.Printf("%s %s %s\n", img.Name, humanize.IBytes(uint64(img.Size)), img.Path)
			return nil
		},
	}
	build.Flags().BoolVar(&force, "force", false, "rebuild even when the inputs have not changed")
	var asJSON bool
	ls := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List images",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			imgs, err := smolvm.ListImages(cmd.Context(), g.options()...)
			if err != nil {
				return err
			}
			if asJSON {
				if imgs == nil {
					imgs = []smolvm.Image{}
				}
				return printJSON(os.Stdout, imgs)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSOURCE\tDIGEST\tSIZE\tCREATED")
			for _, i := range imgs {
				fmt.Fprintf(tw, "%s\t%s\t%.19s\t%s\t%s\n", i.Name, i.Source, i.Digest,
					humanize.IBytes(uint64(i.Size)), humanize.Time(i.Created))
			}
			return tw.Flush()
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	rm := &cobra.Command{
		Use:   "rm NAME...",
		Short: "Remove images",
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
	cmd.AddCommand(build, ls, rm)
	return cmd
}
