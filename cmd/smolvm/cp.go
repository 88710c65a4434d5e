package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/smolvm/smolvm"
	"github.com/spf13/cobra"
)

func cpCmd(g *globals) *cobra.Command {
	var quiet bool
	cmd := &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files and directories between the host and a VM (one side is ID:/path; - is a tar stream)",
		Long: `Copy a file, symlink or directory tree between the host and a running VM,
keeping modes, modification times and symlinks, as docker cp does: when DST
is an existing directory the copy goes inside it; otherwise DST names the
copy. "-" as SRC reads a tar stream from stdin; as DST it writes one to stdout.`,
		Example: `  smolvm cp ./src dev:/work/
  smolvm cp dev:/var/log/app.log ./app.log
  tar -C dir -c . | smolvm cp - dev:/work
  smolvm cp dev:/etc - | tar -t`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			srcID, src := splitVMPath(args[0])
			dstID, dst := splitVMPath(args[1])
			if (srcID == "") == (dstID == "") {
				return fmt.Errorf("cp %s %s: exactly one side must be ID:/path", args[0], args[1])
			}
			id := srcID + dstID
			vm, err := smolvm.Open(cmd.Context(), id, g.options()...)
			if err != nil {
				return err
			}
			defer vm.Close()
			ctx := cmd.Context()
			var st smolvm.TransferStats
			switch {
			case srcID == "" && src == "-":
				st, err = vm.UploadTar(ctx, os.Stdin, dst)
			case srcID == "":
				st, err = vm.Upload(ctx, src, dst)
			case dst == "-":
				st, err = vm.DownloadTar(ctx, src, os.Stdout)
				quiet = true
			default:
				st, err = vm.Download(ctx, src, dst)
			}
			if err != nil {
				return err
			}
			if !quiet {
				fmt.Fprintf(os.Stderr, "copied %d entries, %d bytes\n", st.Entries, st.Bytes)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print nothing on success")
	return cmd
}

// splitVMPath splits "ID:/path" into the VM id and the guest path; a local
// path ("./a:b", "/x", "-") gives an empty id.
func splitVMPath(s string) (id, path string) {
	i := strings.IndexByte(s, ':')
	if i <= 0 || strings.ContainsRune(s[:i], '/') || !smolvm.ValidName(s[:i]) {
		return "", s
	}
	return s[:i], s[i+1:]
}
