package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"github.com/smolvm/smolvm"
	"github.com/spf13/cobra"
)

func sshCmd(g *globals) *cobra.Command {
	var opts smolvm.SSHOptions
	var printOnly bool
	cmd := &cobra.Command{
		Use:   "ssh [flags] ID [-- SSH-ARGS...]",
		Short: "Open an SSH session to a VM with OpenSSH (no sshd needed in the image)",
		Long: `Runs OpenSSH's ssh against the VM's SSH port on 127.0.0.1 (from the pool
2200-2999), served by the guest agent. The key is an ed25519 key smolvm makes
in the data dir on first use, or --ssh-key. scp and sftp work the same way;
--print shows the command line (smolvm inspect shows it too).`,
		Example: `  smolvm ssh dev
  smolvm ssh dev -- uname -a
  smolvm ssh --print dev`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			vm, err := smolvm.Open(cmd.Context(), args[0], g.options()...)
			if err != nil {
				return err
			}
			defer vm.Close()
			info, err := vm.SSH(cmd.Context(), opts)
			if err != nil {
				return err
			}
			argv := append(info.Command, args[1:]...)
			if printOnly {
				fmt.Println(strings.Join(argv, " "))
				return nil
			}
			path, err := exec.LookPath("ssh")
			if err != nil {
				return fmt.Errorf("running ssh: %w (install openssh-client)", err)
			}
			return syscall.Exec(path, argv, os.Environ())
		},
	}
	cmd.Flags().StringVar(&opts.KeyPath, "ssh-key", "", "private key to use (its .pub is authorized in the VM; default: smolvm's own key)")
	cmd.Flags().StringVarP(&opts.User, "user", "u", "", "guest user to log in as (default root)")
	cmd.Flags().BoolVar(&printOnly, "print", false, "print the ssh command line instead of running it")
	return cmd
}
