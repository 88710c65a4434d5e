package firecracker

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// The test binary plays firecracker (and the jailer) when re-executed with
// envFake=1, so the backend's real launch path runs against a recording
// API server that checks each request against the published spec.
const (
	envFake      = "SMOLVM_FAKE_FC"            // "1": this process plays firecracker
	envRecord    = "SMOLVM_FAKE_FC_RECORD"     // file the fake appends one JSON line per request to
	envSpec      = "SMOLVM_FAKE_FC_SPEC"       // the API spec the fake validates requests against
	envFaults    = "SMOLVM_FAKE_FC_FAULTS"     // "PUT /drives/disk1=400:message;..." replies to inject
	envIgnoreCAD = "SMOLVM_FAKE_FC_IGNORE_CAD" // "1": the guest ignores Ctrl-Alt-Del
	envExit      = "SMOLVM_FAKE_FC_EXIT"       // a message: print it to stderr and exit 1 at once
)

func TestMain(m *testing.M) {
	if os.Getenv(envFake) == "1" {
		os.Exit(fakeFirecracker(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// recorded is one line of the fake's record.
type recorded struct {
	PID       int             `json:"pid,omitempty"` // the first line only
	Args      []string        `json:"args,omitempty"`
	Method    string          `json:"method,omitempty"`
	Path      string          `json:"path,omitempty"`
	Body      json.RawMessage `json:"body,omitempty"`
	Status    int             `json:"status,omitempty"`
	Violation string          `json:"violation,omitempty"`
}

// fakeVM is the fake's state, guarded by mu.
type fakeVM struct {
	mu        sync.Mutex
	spec      *apiSpec
	record    *os.File
	faults    map[string]string
	root      string // jail root when started as the jailer; paths are resolved in it
	state     string // "Not started", "Running", "Paused"
	booted    bool   // configured beyond logger/metrics: a snapshot load is refused
	saved     fakeSnapshot
	ignoreCAD bool
	vsock     net.Listener
}

// fakeSnapshot is what the fake's "vmstate" file holds.
type fakeSnapshot struct {
	Drives map[string]string `json:"drives"` // id -> path as given
	Ifaces []string          `json:"ifaces"`
	Vsock  string            `json:"vsock"`
}

func fakeFirecracker(args []string) int {
	if msg := os.Getenv(envExit); msg != "" {
		fmt.Fprintln(os.Stderr, msg)
		return 1
	}
	f := &fakeVM{state: "Not started", faults: map[string]string{}, ignoreCAD: os.Getenv(envIgnoreCAD) == "1"}
	f.saved.Drives = map[string]string{}
	var err error
	if f.record, err = os.OpenFile(os.Getenv(envRecord), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "fake firecracker:", err)
		return 2
	}
	f.write(recorded{PID: os.Getpid(), Args: args})
	if p := os.Getenv(envSpec); p != "" {
		if f.spec, err = loadSpec(p); err != nil {
			fmt.Fprintln(os.Stderr, "fake firecracker:", err)
			return 2
		}
	}
	for _, fault := range strings.Split(os.Getenv(envFaults), ";") {
		if k, v, ok := strings.Cut(fault, "="); ok {
			f.faults[k] = v
		}
	}
	sock, err := f.parseArgs(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake firecracker:", err)
		return 2
	}
	l, err := net.Listen("unix", f.resolve(sock))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake firecracker:", err)
		return 1
	}
	http.Serve(l, f)
	return 1
}

// parseArgs returns the API socket path; given jailer arguments, it also
// plays the jailer: the jail root becomes where absolute paths resolve.
func (f *fakeVM) parseArgs(args []string) (string, error) {
	flags := map[string]string{}
	for i := 0; i < len(args); i++ {
		if args[i] == "--" {
			continue
		}
		if strings.HasPrefix(args[i], "--") && i+1 < len(args) {
			flags[args[i]] = args[i+1]
			i++
		}
	}
	if exe := flags["--exec-file"]; exe != "" {
		for _, k := range []string{"--id", "--uid", "--gid", "--chroot-base-dir"} {
			if flags[k] == "" {
				return "", fmt.Errorf("jailer: %s missing", k)
			}
		}
		f.root = filepath.Join(flags["--chroot-base-dir"], filepath.Base(exe), flags["--id"], "root")
		if err := os.MkdirAll(f.root, 0o755); err != nil {
			return "", err
		}
	}
	if flags["--api-sock"] == "" {
		return "", errors.New("--api-sock missing")
	}
	return flags["--api-sock"], nil
}

// resolve maps a path firecracker was given to the host (the jail's
// absolute paths live under the jail root; others resolve as the OS does).
func (f *fakeVM) resolve(p string) string {
	if f.root != "" && filepath.IsAbs(p) {
		return filepath.Join(f.root, p)
	}
	return p
}

func (f *fakeVM) write(r recorded) {
	b, _ := json.Marshal(r)
	f.record.Write(append(b, '\n'))
}

func (f *fakeVM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	body, _ := io.ReadAll(r.Body)
	rec := recorded{Method: r.Method, Path: r.URL.Path}
	if len(body) > 0 {
		rec.Body = body
	}
	status, reply, exit := f.handle(r.Method, r.URL.Path, body, &rec)
	rec.Status = status
	f.write(rec)
	if reply != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write(reply)
	} else {
		w.WriteHeader(status)
	}
	if exit {
		http.NewResponseController(w).Flush()
		os.Exit(0)
	}
}

func fault(msg string) []byte {
	b, _ := json.Marshal(map[string]string{"fault_message": msg})
	return b
}

// handle applies one request and returns the reply; exit asks the fake to
// end after replying (the guest rebooted).
func (f *fakeVM) handle(method, path string, body []byte, rec *recorded) (status int, reply []byte, exit bool) {
	if f.spec != nil {
		if err := f.spec.validate(method, path, body); err != nil {
			rec.Violation = err.Error()
			return 400, fault("contract: " + err.Error()), false
		}
	}
	if v, ok := f.faults[method+" "+path]; ok {
		code, msg, _ := strings.Cut(v, ":")
		var n int
		fmt.Sscan(code, &n)
		return n, fault(msg), false
	}
	var m map[string]any
	json.Unmarshal(body, &m)
	str := func(k string) string { s, _ := m[k].(string); return s }
	switch {
	case method == "GET" && path == "/":
		b, _ := json.Marshal(instanceInfo{ID: "fake", State: f.state, VMMVersion: "1.16.1", AppName: "Firecracker"})
		return 200, b, false
	case path == "/logger":
		return f.needFile(str("log_path"))
	case path == "/metrics":
		return f.needFile(str("metrics_path"))
	case path == "/snapshot/load":
		return f.load(m)
	case path == "/snapshot/create":
		return f.create(str("snapshot_path"), str("mem_file_path"))
	case path == "/vm":
		if f.state == "Not started" {
			return 400, fault("the microVM is not running"), false
		}
		f.state = map[string]string{"Paused": "Paused", "Resumed": "Running"}[str("state")]
		return 204, nil, false
	case path == "/actions":
		return f.action(str("action_type"))
	case method == "PATCH" && strings.HasPrefix(path, "/network-interfaces/"):
		if f.state == "Not started" {
			return 400, fault("post-boot only"), false
		}
		return 204, nil, false
	}
	if f.state != "Not started" {
		return 400, fault("pre-boot only: " + path), false
	}
	f.booted = true
	switch {
	case path == "/boot-source":
		if status, reply, _ := f.needFile(str("kernel_image_path")); status != 204 {
			return status, reply, false
		}
		if p := str("initrd_path"); p != "" {
			return f.needFile(p)
		}
	case strings.HasPrefix(path, "/drives/"):
		id := strings.TrimPrefix(path, "/drives/")
		if str("drive_id") != id {
			return 400, fault("drive_id does not match the path"), false
		}
		if status, reply, _ := f.needFile(str("path_on_host")); status != 204 {
			return status, reply, false
		}
		f.saved.Drives[id] = str("path_on_host")
	case strings.HasPrefix(path, "/network-interfaces/"):
		f.saved.Ifaces = append(f.saved.Ifaces, str("iface_id"))
	case path == "/vsock":
		f.saved.Vsock = str("uds_path")
	}
	return 204, nil, false
}

func (f *fakeVM) needFile(p string) (int, []byte, bool) {
	if _, err := os.Stat(f.resolve(p)); err != nil {
		return 400, fault(fmt.Sprintf("cannot open %s: %v", p, err)), false
	}
	return 204, nil, false
}

func (f *fakeVM) action(typ string) (int, []byte, bool) {
	switch typ {
	case "InstanceStart":
		if f.state != "Not started" {
			return 400, fault("already started"), false
		}
		if err := f.startGuest(); err != nil {
			return 400, fault(err.Error()), false
		}
		return 204, nil, false
	case "SendCtrlAltDel":
		if f.state != "Running" {
			return 400, fault("the microVM is not running"), false
		}
		return 204, nil, !f.ignoreCAD
	}
	return 400, fault("unsupported action"), false
}

// startGuest "boots": console output on stdout, and an agent on vsock.
func (f *fakeVM) startGuest() error {
	l, err := net.Listen("unix", f.resolve(f.saved.Vsock))
	if err != nil {
		return err
	}
	f.vsock = l
	f.state = "Running"
	fmt.Println("fake-firecracker: guest booted")
	go serveFakeVsock(l)
	return nil
}

// serveFakeVsock plays firecracker's hybrid vsock with an echoing agent on
// port 1024 that greets first, in the same write as firecracker's OK.
func serveFakeVsock(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			br := bufio.NewReader(c)
			line, err := br.ReadString('\n')
			if err != nil || line != "CONNECT 1024\n" {
				return // firecracker closes when nothing listens on the port
			}
			io.WriteString(c, "OK 1073741824\nhello from guest\n")
			io.Copy(c, br)
		}()
	}
}

func (f *fakeVM) create(statePath, memPath string) (int, []byte, bool) {
	if f.state != "Paused" {
		return 400, fault("Cannot create snapshot: the microVM is not paused"), false
	}
	b, _ := json.Marshal(f.saved)
	if err := os.WriteFile(f.resolve(statePath), b, 0o600); err != nil {
		return 400, fault(err.Error()), false
	}
	if err := os.WriteFile(f.resolve(memPath), []byte("guest memory"), 0o600); err != nil {
		return 400, fault(err.Error()), false
	}
	return 204, nil, false
}

func (f *fakeVM) load(m map[string]any) (int, []byte, bool) {
	if f.booted || f.state != "Not started" {
		return 400, fault("Loading a microVM snapshot not allowed after configuring boot-specific resources"), false
	}
	b, err := os.ReadFile(f.resolve(m["snapshot_path"].(string)))
	if err != nil {
		return 400, fault(err.Error()), false
	}
	json.Unmarshal(b, &f.saved)
	mem, _ := m["mem_backend"].(map[string]any)
	if status, reply, _ := f.needFile(fmt.Sprint(mem["backend_path"])); status != 204 {
		return status, reply, false
	}
	// Firecracker reopens each drive at the path the snapshot recorded.
	for id, p := range f.saved.Drives {
		if status, reply, _ := f.needFile(p); status != 204 {
			return status, fault(fmt.Sprintf("drive %s: %s", id, reply)), false
		}
	}
	if o, ok := m["vsock_override"].(map[string]any); ok {
		f.saved.Vsock = o["uds_path"].(string)
	}
	overrides, _ := m["network_overrides"].([]any)
	for _, o := range overrides {
		id := o.(map[string]any)["iface_id"]
		if !strings.Contains(strings.Join(f.saved.Ifaces, " "), fmt.Sprint(id)) {
			return 400, fault(fmt.Sprintf("no interface %v in the snapshot", id)), false
		}
	}
	if err := f.startGuest(); err != nil {
		return 400, fault(err.Error()), false
	}
	if resume, _ := m["resume_vm"].(bool); !resume {
		f.state = "Paused"
	}
	return 204, nil, false
}
