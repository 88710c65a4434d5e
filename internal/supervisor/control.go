package supervisor

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
)

// Control operations a client may ask for, one per connection.
const (
	opAgent  = "agent"  // the connection becomes a raw stream to the guest agent
	opStop   = "stop"   // stop the VM; the reply comes once the VMM has exited
	opStatus = "status" // report the running VM's details
)

// request is the one JSON line a client sends first.
type request struct {
	Op       string           `json:"op"`
	Force    bool             `json:"force,omitempty"`    // stop: kill the VMM at once, no guest shutdown
	Net      *NetRequest      `json:"net,omitempty"`      // network operations' arguments
	Snapshot *SnapshotRequest `json:"snapshot,omitempty"` // snapshot's arguments (snapshot.go)
}

// reply is the one JSON line the supervisor sends back.
type reply struct {
	OK     bool    `json:"ok"`
	Error  string  `json:"error,omitempty"`
	Status *Status `json:"status,omitempty"`
}

// Status is what a running supervisor reports about its VM.
type Status struct {
	ID            string `json:"id"`
	Backend       string `json:"backend"`
	Accel         string `json:"accel"`
	SupervisorPID int    `json:"supervisor_pid"`
	VMMPID        int    `json:"vmm_pid"`
	Kernel        string `json:"guest_kernel"`
	GuestBootMs   int64  `json:"guest_boot_ms"`  // guest uptime when the agent started
	GuestReadyMs  int64  `json:"guest_ready_ms"` // guest uptime when the agent was ready
}

func writeLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

func readLine(r *bufio.Reader, v any) error {
	line, err := r.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("reading control message: %w", err)
	}
	return json.Unmarshal(line, v)
}
