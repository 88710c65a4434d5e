package agentproto

import (
	"io"
	"time"
)

// Ops for files, environment, background processes and SSH. Streams that
// move bytes use FrameStdin (host → guest) and FrameStdout (guest → host)
// as data frames and end with FrameDone, or FrameError when they fail
// midway.
const (
	// OpStat: File.Path → Response{Stat} (symlinks are not followed).
	OpStat = "stat"
	// OpListDir: File.Path → Response{Entries}, sorted by name.
	OpListDir = "listdir"
	// OpRemove: File.Path (File.Recursive for a tree) → Response{}.
	OpRemove = "remove"
	// OpMkdirAll: File.Path, File.Mode → Response{}.
	OpMkdirAll = "mkdirall"
	// OpReadFile: File.Path → Response{Stat}, data frames, FrameDone.
	OpReadFile = "readfile"
	// OpWriteFile: File.Path, File.Mode → Response{}; the host sends data
	// frames and FrameStdinClose; the guest answers FrameDone once the file
	// is complete (written to a temporary name and renamed into place).
	OpWriteFile = "writefile"
	// OpUpload: File.Path, an existing directory → Response{}; the host
	// sends a tar stream as data frames and FrameStdinClose; the guest
	// extracts it beneath the directory and answers FrameDone.
	OpUpload = "upload"
	// OpDownload: File.Path → Response{Stat}, then a tar stream of it
	// (entries named from File.Name, default the path's base name) as data
	// frames, then FrameDone.
	OpDownload = "download"

	// OpEnvSet: Env.Set → Response{}: every later exec sees the variables.
	OpEnvSet = "env-set"
	// OpEnvUnset: Env.Unset → Response{}: later execs do not see them, even
	// when the VM's configuration sets them.
	OpEnvUnset = "env-unset"
	// OpEnvList: Env.Base → Response{Env}: Base with the set and unset
	// variables applied.
	OpEnvList = "env-list"

	// OpProcStart: Exec → Response{PID, Proc}: a background process whose
	// output the agent keeps; it outlives the stream and the host.
	OpProcStart = "proc-start"
	// OpProcList → Response{Procs}.
	OpProcList = "proc-list"
	// OpProcWait: Proc.ID → Response{Proc} once it has exited.
	OpProcWait = "proc-wait"
	// OpProcSignal: Proc.ID, Proc.Signal → Response{}.
	OpProcSignal = "proc-signal"
	// OpProcOutput: Proc.ID, Proc.Follow → Response{Proc}, then FrameStdout
	// and FrameStderr with what is kept, then (Follow) new output until the
	// process exits, then FrameDone.
	OpProcOutput = "proc-output"
	// OpProcRemove: Proc.ID → Response{}: kills it if it runs, forgets it.
	OpProcRemove = "proc-remove"

	// OpSSH: SSH → Response{}; after that the stream carries an SSH
	// connection, served by the agent.
	OpSSH = "ssh"
)

// FrameDone ends a data stream that completed (JSON Done).
const FrameDone FrameType = 'd'

// FileRequest names a file operation's target.
type FileRequest struct {
	Path      string `json:"path"`
	Mode      uint32 `json:"mode,omitempty"` // permission bits for created files and directories
	Recursive bool   `json:"recursive,omitempty"`
	Name      string `json:"name,omitempty"` // OpDownload: the top entry's name in the tar
}

// FileInfo describes one file, as lstat sees it.
type FileInfo struct {
	Name    string    `json:"name"`
	Size    int64     `json:"size"`
	Mode    uint32    `json:"mode"` // Go's fs.FileMode bits
	ModTime time.Time `json:"mtime"`
	Link    string    `json:"link,omitempty"` // a symlink's target
	UID     uint32    `json:"uid"`
	GID     uint32    `json:"gid"`
}

// Done ends a data stream.
type Done struct {
	Bytes   int64 `json:"bytes"`             // file bytes moved
	Entries int   `json:"entries,omitempty"` // tar entries moved
	// Dropped counts output bytes a background process wrote that had
	// already left its buffer (OpProcOutput).
	Dropped int64 `json:"dropped,omitempty"`
}

// EnvRequest changes or lists the agent's environment.
type EnvRequest struct {
	Set   map[string]string `json:"set,omitempty"`
	Unset []string          `json:"unset,omitempty"`
	Base  []string          `json:"base,omitempty"` // KEY=VALUE (OpEnvList)
}

// ProcRequest names a background process.
type ProcRequest struct {
	ID     string `json:"id,omitempty"`
	Signal int    `json:"signal,omitempty"`
	Follow bool   `json:"follow,omitempty"`
	// BufferBytes bounds the output kept per stream (OpProcStart; 0 means
	// the agent's default).
	BufferBytes int `json:"buffer_bytes,omitempty"`
}

// ProcInfo describes a background process.
type ProcInfo struct {
	ID       string      `json:"id"`
	PID      int         `json:"pid"`
	Argv     []string    `json:"argv"`
	User     string      `json:"user,omitempty"`
	Running  bool        `json:"running"`
	Exit     *ExitStatus `json:"exit,omitempty"`
	Started  time.Time   `json:"started"`
	Exited   time.Time   `json:"exited,omitzero"`
	OutBytes int64       `json:"out_bytes"` // stdout bytes written so far
	ErrBytes int64       `json:"err_bytes"`
}

// SSHRequest hands the stream to the agent's SSH server.
type SSHRequest struct {
	// AuthorizedKeys are public keys in authorized_keys format; a client
	// must prove it holds one of them.
	AuthorizedKeys []string `json:"authorized_keys"`
	// BaseEnv (image and VM config environment) is given to the
	// session's programs, as ExecRequest.BaseEnv is.
	BaseEnv []string `json:"base_env,omitempty"`
	// HostKey is the private host key (OpenSSH PEM) the server presents,
	// the VM's own, kept on the host so that clients can check it; empty:
	// a key the guest makes at first use and keeps until it stops.
	HostKey string `json:"host_key,omitempty"`
}

// Reader returns the stream's read side, including bytes already buffered:
// for a stream that switches from frames to raw bytes (OpSSH).
func (c *Conn) Reader() io.Reader { return c.r }
