package agent

import (
	"sync"

	"golang.org/x/crypto/ssh"
)

// State is what the agent keeps across host connections for as long as
// the guest runs: the environment set with OpEnvSet, background
// processes, the SSH host key. One mutex guards it all; a background
// process's output has its own lock (see ring). Safe for concurrent use.
type State struct {
	mu       sync.Mutex
	env      map[string]envVar // set or unset by the host, by key
	procs    map[string]*proc  // background processes by id
	nextProc int
	hostKey  ssh.Signer // made on first use
	given    struct {   // the last host key the host gave, parsed
		pem    string
		signer ssh.Signer
	}
}

// NewState returns an empty State.
func NewState() *State {
	return &State{env: map[string]envVar{}, procs: map[string]*proc{}}
}
