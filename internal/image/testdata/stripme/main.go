// Command stripme is a small program the initramfs tests strip and run.
package main

import (
	"fmt"
	"runtime"
)

func main() {
	// A stack trace needs the function table the stripper must keep.
	pc, _, _, _ := runtime.Caller(0)
	fmt.Println("hello from", runtime.FuncForPC(pc).Name())
}
