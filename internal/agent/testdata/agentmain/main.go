// Command agentmain is the guest agent alone, for the VM tests: it runs
// agent.Main when it is PID 1 and does nothing otherwise.
package main

import (
	"os"

	"github.com/smolvm/smolvm/internal/agent"
)

func main() {
	if os.Getpid() == 1 {
		agent.Main()
	}
}
