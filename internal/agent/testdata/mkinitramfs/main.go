// Command mkinitramfs builds the initramfs the VM tests boot:
//
//	mkinitramfs CACHEDIR AGENT [MODULESDIR]
//
// and prints its path. It runs as its own process so that the agent's unit
// tests do not depend on package image compiling.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/smolvm/smolvm/internal/image"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: mkinitramfs CACHEDIR AGENT [MODULESDIR]")
		os.Exit(2)
	}
	var k image.Kernel
	if len(os.Args) > 3 {
		k.ModulesDir = os.Args[3]
	}
	p, err := image.BuildInitramfs(context.Background(), os.Args[1], os.Args[2], k)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkinitramfs:", err)
		os.Exit(1)
	}
	fmt.Println(p)
}
