package smolvm_test

import (
	"context"
	"fmt"
	"log"

	"github.com/smolvm/smolvm"
)

// Create a VM from the tiny image, run a command in it, and throw it away.
// (Programs other than the smolvm CLI add smolvm.WithExecutable with the
// path of an installed smolvm binary, which serves as supervisor and agent.)
func Example() {
	ctx := context.Background()
	vm, err := smolvm.New(ctx, smolvm.Config{Image: "tiny", MemoryMiB: 256})
	if err != nil {
		log.Fatal(err)
	}
	defer vm.Close()
	defer vm.Delete(ctx)
	if err := vm.Start(ctx); err != nil {
		log.Fatal(err)
	}
	res, err := vm.Run(ctx, smolvm.Shell("echo hello from $(uname -s)"), smolvm.RunOptions{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s(exit %d)\n", res.Stdout, res.ExitCode)
}
