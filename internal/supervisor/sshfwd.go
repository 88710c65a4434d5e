package supervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/smolvm/smolvm/internal/agentproto"
	"github.com/smolvm/smolvm/internal/store"
)

// SSH access: the supervisor leases a port from the pool, listens on it
// on 127.0.0.1 and joins each TCP connection to a new agent stream on
// which the agent serves SSH (no guest network is involved).
const (
	SSHLeaseKind  = "ssh-port" // the lease kind in the store; the lease goes with the VM's row
	SSHPortFirst  = 2200
	SSHPortLast   = 2999
	SSHListenHost = "127.0.0.1"
	// AuthorizedKeysFile, in the VM's directory, holds the public keys the
	// guest accepts, in authorized_keys format; it is read for each
	// connection, so keys added to it work at once.
	AuthorizedKeysFile = "ssh_authorized_keys"
	// HostKeyFile, in the VM's directory, is the private host key the
	// guest's SSH server presents (read for each connection); the same
	// key across restarts, so clients can check it against
	// KnownHostsFile, where the SDK writes it with the VM's port.
	HostKeyFile    = "ssh_host_ed25519_key"
	KnownHostsFile = "ssh_known_hosts"
)

// SSHPort returns the port leased to vmID for SSH, or 0 when it has none.
func SSHPort(ctx context.Context, st *store.Store, vmID string) (int, error) {
	leases, err := st.Leases(ctx, vmID)
	if err != nil {
		return 0, err
	}
	for _, l := range leases {
		if l.Kind == SSHLeaseKind {
			return strconv.Atoi(l.Value)
		}
	}
	return 0, nil
}

// listenSSH listens on the VM's leased SSH port, leasing one first when it
// has none (a VM keeps its port across restarts). A port some other
// program holds is given back and the next free one tried.
func (s *supervisor) listenSSH(ctx context.Context) (net.Listener, int, error) {
	st := s.opts.Store
	var tried []string
	for {
		port, err := SSHPort(ctx, st, s.vm.ID)
		if err != nil {
			return nil, 0, err
		}
		if port == 0 {
			var candidates []string
			for p := SSHPortFirst; p <= SSHPortLast; p++ {
				if v := strconv.Itoa(p); !slices.Contains(tried, v) {
					candidates = append(candidates, v)
				}
			}
			v, err := st.AcquireLease(ctx, SSHLeaseKind, s.vm.ID, candidates)
			if err != nil {
				return nil, 0, err
			}
			port, _ = strconv.Atoi(v)
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(SSHListenHost, strconv.Itoa(port)))
		if err == nil {
			return ln, port, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return nil, 0, err
		}
		s.log.Warn("ssh port in use by another program; leasing another", "port", port)
		tried = append(tried, strconv.Itoa(port))
		if err := st.ReleaseLeases(ctx, s.vm.ID, SSHLeaseKind); err != nil {
			return nil, 0, err
		}
	}
}

// startSSH starts forwarding SSH connections; a failure is logged, not
// fatal (the VM works without it). The returned stop closes the listener.
func (s *supervisor) startSSH(ctx context.Context) (stop func()) {
	ln, port, err := s.listenSSH(ctx)
	if err != nil {
		s.log.Warn("no ssh access", "err", err)
		return func() {}
	}
	s.log.Info("ssh forwarding", "addr", ln.Addr().String(), "port", port)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.forwardSSH(c)
		}
	}()
	return func() { ln.Close() }
}

// forwardSSH joins one TCP connection to a new agent stream that the
// agent serves as SSH, for the keys in the VM's AuthorizedKeysFile.
func (s *supervisor) forwardSSH(c net.Conn) {
	defer c.Close()
	if err := s.sshStream(c); err != nil {
		s.log.Warn("ssh connection", "remote", c.RemoteAddr().String(), "err", err)
	}
}

func (s *supervisor) sshStream(c net.Conn) error {
	keys, err := readAuthorizedKeys(filepath.Join(s.vm.Dir, AuthorizedKeysFile))
	if err != nil {
		return err
	}
	hostKey, err := os.ReadFile(filepath.Join(s.vm.Dir, HostKeyFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("reading ssh host key: %w", err)
	}
	sess := s.session
	if sess == nil {
		return errors.New("no agent session")
	}
	stream, err := sess.OpenStream()
	if err != nil {
		return fmt.Errorf("opening agent stream: %w", err)
	}
	defer stream.Close()
	ac := agentproto.NewConn(stream)
	stream.SetDeadline(time.Now().Add(30 * time.Second))
	if err := ac.WriteJSON(agentproto.FrameRequest, agentproto.Request{Op: agentproto.OpSSH,
		SSH: &agentproto.SSHRequest{AuthorizedKeys: keys, BaseEnv: baseEnv(s.vm.Config), HostKey: string(hostKey)}}); err != nil {
		return err
	}
	var resp agentproto.Response
	if err := ac.ReadJSON(agentproto.FrameResponse, &resp); err != nil {
		return err
	}
	stream.SetDeadline(time.Time{})
	done := make(chan struct{}, 2)
	go func() {
		io.Copy(stream, c)
		stream.Close()
		done <- struct{}{}
	}()
	go func() {
		io.Copy(c, ac.Reader())
		c.Close()
		done <- struct{}{}
	}()
	<-done
	stream.Close()
	c.Close()
	<-done
	return nil
}

// baseEnv reads the image's and the VM's configured environment from the
// SDK's record of the VM (only these two fields of it), in the order an
// exec gets them: image first, then config.
func baseEnv(record []byte) []string {
	var rec struct {
		Config struct {
			Env map[string]string `json:"env"`
		} `json:"config"`
		ImageConfig *struct {
			Env []string `json:"env"`
		} `json:"image_config"`
	}
	if json.Unmarshal(record, &rec) != nil {
		return nil
	}
	var env []string
	if rec.ImageConfig != nil {
		env = append(env, rec.ImageConfig.Env...)
	}
	for _, k := range slices.Sorted(maps.Keys(rec.Config.Env)) {
		env = append(env, k+"="+rec.Config.Env[k])
	}
	return env
}

// readAuthorizedKeys returns the key lines of an authorized_keys file.
func readAuthorizedKeys(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading authorized keys: %w", err)
	}
	defer f.Close()
	var keys []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" && !strings.HasPrefix(line, "#") {
			keys = append(keys, line)
		}
	}
	return keys, sc.Err()
}
