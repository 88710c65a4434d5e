package agent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"

	"golang.org/x/crypto/ssh"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// sshHostKey returns the guest's SSH host key, made on first use and kept
// for as long as the guest runs.
func (st *State) sshHostKey() (ssh.Signer, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.hostKey != nil {
		return st.hostKey, nil
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	if st.hostKey, err = ssh.NewSignerFromKey(priv); err != nil {
		return nil, err
	}
	return st.hostKey, nil
}

// hostKey is the host key given in PEM, else the guest's own.
func (s *server) hostKey(pemKey string) (ssh.Signer, error) {
	if pemKey == "" {
		k, err := s.cfg.State.sshHostKey()
		if err != nil {
			return nil, fmt.Errorf("making ssh host key: %w", err)
		}
		return k, nil
	}
	return s.cfg.State.givenHostKey(pemKey)
}

// givenHostKey parses a host key the host gave, once: every connection
// brings the same one.
func (st *State) givenHostKey(pemKey string) (ssh.Signer, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.given.signer != nil && st.given.pem == pemKey {
		return st.given.signer, nil
	}
	k, err := ssh.ParsePrivateKey([]byte(pemKey))
	if err != nil {
		return nil, fmt.Errorf("parsing ssh host key: %w", err)
	}
	st.given.pem, st.given.signer = pemKey, k
	return k, nil
}

// sshServerConfig accepts the clients holding one of the request's
// authorized keys, as any user of the guest's /etc/passwd, and presents
// the request's host key (else the guest's own).
func (s *server) sshServerConfig(req *agentproto.SSHRequest) (*ssh.ServerConfig, error) {
	var keys [][]byte
	for _, line := range req.AuthorizedKeys {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("parsing authorized key: %w", err)
		}
		keys = append(keys, k.Marshal())
	}
	if len(keys) == 0 {
		return nil, errors.New("ssh: no authorized keys")
	}
	hostKey, err := s.hostKey(req.HostKey)
	if err != nil {
		return nil, err
	}
	cfg := &ssh.ServerConfig{
		ServerVersion: "SSH-2.0-smolvm_agent",
		PublicKeyCallback: func(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			for _, k := range keys {
				if bytes.Equal(k, key.Marshal()) {
					if _, err := lookupUser(s.cfg.Root, meta.User()); err != nil {
						return nil, fmt.Errorf("user %q: %w", meta.User(), err)
					}
					return &ssh.Permissions{}, nil
				}
			}
			return nil, errors.New("key not authorized")
		},
	}
	cfg.AddHostKey(hostKey)
	return cfg, nil
}

// serveSSH answers the request, then serves one SSH connection over the
// rest of the stream until it ends.
func (s *server) serveSSH(ctx context.Context, st net.Conn, c *agentproto.Conn, req *agentproto.SSHRequest) {
	if req == nil {
		replyError(c, errors.New("ssh request without ssh field"))
		return
	}
	cfg, err := s.sshServerConfig(req)
	if err != nil {
		replyError(c, err)
		return
	}
	if err := c.WriteJSON(agentproto.FrameResponse, agentproto.Response{}); err != nil {
		return
	}
	conn := &rawConn{Conn: st, r: c.Reader()}
	sc, chans, reqs, err := ssh.NewServerConn(conn, cfg)
	if err != nil {
		s.log.Debug("ssh handshake", "err", err)
		return
	}
	defer sc.Close()
	stop := context.AfterFunc(ctx, func() { sc.Close() })
	defer stop()
	s.log.Debug("ssh connection", "user", sc.User())
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		switch nc.ChannelType() {
		case "session":
			ch, creqs, err := nc.Accept()
			if err != nil {
				continue
			}
			sess := &sshSession{s: s, ch: ch, user: sc.User(), baseEnv: req.BaseEnv}
			go sess.serve(creqs)
		case "direct-tcpip":
			go s.sshDirectTCPIP(nc)
		default:
			nc.Reject(ssh.UnknownChannelType, "unsupported channel type "+nc.ChannelType())
		}
	}
}

// rawConn is a stream read through the buffer that read its request.
type rawConn struct {
	net.Conn
	r io.Reader
}

func (c *rawConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// sshDirectTCPIP serves `ssh -L`: a TCP connection made from inside the
// guest, joined to the channel.
func (s *server) sshDirectTCPIP(nc ssh.NewChannel) {
	var p struct {
		Host       string
		Port       uint32
		OriginHost string
		OriginPort uint32
	}
	if err := ssh.Unmarshal(nc.ExtraData(), &p); err != nil {
		nc.Reject(ssh.ConnectionFailed, "bad direct-tcpip request")
		return
	}
	addr := net.JoinHostPort(p.Host, strconv.Itoa(int(p.Port)))
	tc, err := net.Dial("tcp", addr)
	if err != nil {
		nc.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	defer tc.Close()
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	go ssh.DiscardRequests(reqs)
	done := make(chan struct{}, 2)
	go func() { io.Copy(ch, tc); ch.CloseWrite(); done <- struct{}{} }()
	go func() { io.Copy(tc, ch); tc.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	<-done
	<-done
}
