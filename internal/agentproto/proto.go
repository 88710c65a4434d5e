package agentproto

import (
	"bufio"
	"encoding/json"
	"fmt"
	"strings"
)

// Version is the protocol version; the hello line carries it and the host
// refuses an agent that speaks another.
const Version = 1

// HelloPrefix starts the one line the agent writes on the channel, before
// the yamux session, once the guest is ready: "SMOLVM-AGENT/1 {json Hello}\n".
const HelloPrefix = "SMOLVM-AGENT/"

// PortName is the virtio-serial port name of the agent channel on QEMU.
const PortName = "smolvm.agent"

// VsockPort is the vsock port the agent listens on where vsock is used.
const VsockPort = 1024

// Hello is what the agent says about itself when it is ready.
type Hello struct {
	Version    int    `json:"version"`
	Kernel     string `json:"kernel"`
	Hostname   string `json:"hostname"`
	BootMillis int64  `json:"boot_ms"`  // guest uptime when PID 1 started
	ReadyMs    int64  `json:"ready_ms"` // guest uptime when the agent became ready
}

// Line formats the hello line the agent writes.
func (h Hello) Line() string {
	b, _ := json.Marshal(h)
	return fmt.Sprintf("%s%d %s\n", HelloPrefix, Version, b)
}

// ReadHello reads lines until the hello line and parses it; any console noise
// before it is skipped.
func ReadHello(r *bufio.Reader) (Hello, error) {
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return Hello{}, fmt.Errorf("reading agent hello: %w", err)
		}
		i := strings.Index(line, HelloPrefix)
		if i < 0 {
			continue
		}
		var ver int
		rest := line[i+len(HelloPrefix):]
		if _, err := fmt.Sscanf(rest, "%d", &ver); err != nil || ver != Version {
			return Hello{}, fmt.Errorf("agent speaks protocol %q, want %d", strings.Fields(rest)[0], Version)
		}
		var h Hello
		if err := json.Unmarshal([]byte(rest[strings.IndexByte(rest, ' ')+1:]), &h); err != nil {
			return Hello{}, fmt.Errorf("decoding agent hello: %w", err)
		}
		return h, nil
	}
}

// Ops a Request may name.
const (
	OpPing     = "ping"     // reply: Response{}
	OpExec     = "exec"     // reply: data frames, then FrameExit (Response{PID} first if ExecRequest.ReportPID)
	OpPowerOff = "poweroff" // reply: Response{}, then the guest syncs and powers off
	OpSync     = "sync"     // reply: Response{} after sync(2)
)

// Request is the first frame (FrameRequest) of every stream.
type Request struct {
	Op   string       `json:"op"`
	Exec *ExecRequest `json:"exec,omitempty"`
	// Operands of the ops in workflow.go; each op reads the one it names.
	File *FileRequest `json:"file,omitempty"`
	Env  *EnvRequest  `json:"env,omitempty"`
	Proc *ProcRequest `json:"proc,omitempty"`
	SSH  *SSHRequest  `json:"ssh,omitempty"`
}

// ExecRequest starts a process in the guest.
type ExecRequest struct {
	Argv      []string `json:"argv"`
	Env       []string `json:"env,omitempty"` // KEY=VALUE, over the agent's base environment
	Dir       string   `json:"dir,omitempty"`
	TimeoutMs int64    `json:"timeout_ms,omitempty"` // kill the process group after this long
	Stdin     bool     `json:"stdin,omitempty"`      // FrameStdin/FrameStdinClose follow; else stdin is /dev/null
	User      string   `json:"user,omitempty"`
	TTY       bool     `json:"tty,omitempty"`
	Rows      uint16   `json:"rows,omitempty"`
	Cols      uint16   `json:"cols,omitempty"`
	// BaseEnv (image and VM config environment) goes under the variables
	// set with OpEnvSet, and Env over them.
	BaseEnv []string `json:"base_env,omitempty"`
	// LoginShell runs the user's login shell (from /etc/passwd; /bin/sh
	// when it has none) instead of Argv, which must then be empty.
	LoginShell bool `json:"login_shell,omitempty"`
	// ReportPID asks for Response{PID} as soon as the process runs, before
	// any output. Without it the first reply is output or FrameExit (or
	// FrameError when the process could not start): one frame less on
	// the channel for callers that need no pid.
	ReportPID bool `json:"report_pid,omitempty"`
}

// Response is the guest's first reply to a Request.
type Response struct {
	PID int `json:"pid,omitempty"`
	// Results of the ops in workflow.go.
	Stat    *FileInfo         `json:"stat,omitempty"`
	Entries []FileInfo        `json:"entries,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
	Proc    *ProcInfo         `json:"proc,omitempty"`
	Procs   []ProcInfo        `json:"procs,omitempty"`
}

// Signal asks the guest to signal a running process's group.
type Signal struct {
	Signal int `json:"signal"`
}

// Resize changes a PTY's window size.
type Resize struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// ExitStatus ends an exec stream.
type ExitStatus struct {
	Code     int    `json:"code"`             // exit code; 128+n when killed by signal n
	Signal   string `json:"signal,omitempty"` // name of the signal that killed it, if any
	TimedOut bool   `json:"timed_out,omitempty"`
}

// Error is a failed request, as the guest reports it.
type Error struct {
	Message string `json:"message"`
}

func (e *Error) Error() string { return "guest: " + e.Message }
