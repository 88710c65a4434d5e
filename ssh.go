package smolvm

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/smolvm/smolvm/internal/store"
	"github.com/smolvm/smolvm/internal/supervisor"
)

// SSHInfo says how to reach a running VM with OpenSSH (ssh, scp, sftp).
// The guest agent serves SSH itself; the image needs no sshd.
type SSHInfo struct {
	Host    string `json:"host"`
	Port    int    `json:"port"`
	User    string `json:"user"`
	KeyPath string `json:"key_path"` // the private key to present
	// KnownHostsFile holds the VM's host key for Host and Port, in
	// known_hosts format: the key stays the same across restarts.
	KnownHostsFile string   `json:"known_hosts_file"`
	Command        []string `json:"command"` // a ready ssh command line, checking the host key
}

// SSHOptions tune SSH.
type SSHOptions struct {
	// KeyPath is the private key to use (its public half is read from
	// KeyPath.pub, or derived from the key when it has no passphrase).
	// Default: an ed25519 key smolvm makes on first use in the data dir.
	KeyPath string
	// User is the guest user to log in as (default root).
	User string
}

// sshKeyName is the default key's file name under the data dir's ssh/.
const sshKeyName = "id_ed25519"

// SSH makes sure the VM accepts the key and returns how to connect. The
// VM must be running; its port comes from the pool 2200-2999 and stays
// with it across restarts. The VM's host key is made on first use and
// kept in its directory; the command line checks it, from KnownHostsFile.
func (vm *VM) SSH(ctx context.Context, opts SSHOptions) (SSHInfo, error) {
	info, err := vm.ssh(ctx, opts)
	if err != nil {
		return info, fmt.Errorf("ssh access to vm %s: %w", vm.id, err)
	}
	return info, nil
}

func (vm *VM) ssh(ctx context.Context, opts SSHOptions) (SSHInfo, error) {
	r, err := vm.h.get(ctx, vm.id)
	if err != nil {
		return SSHInfo{}, err
	}
	if r.Status != store.StatusRunning {
		return SSHInfo{}, fmt.Errorf("%w: vm %s is %s, not running", ErrState, vm.id, r.Status)
	}
	port, err := supervisor.SSHPort(ctx, vm.h.store, vm.id)
	if err != nil {
		return SSHInfo{}, err
	}
	if port == 0 {
		return SSHInfo{}, errors.New("the supervisor has no ssh port (see its log)")
	}
	keyPath, pub, err := vm.h.sshKey(opts.KeyPath)
	if err != nil {
		return SSHInfo{}, err
	}
	if err := authorizeKey(filepath.Join(r.Dir, supervisor.AuthorizedKeysFile), pub); err != nil {
		return SSHInfo{}, err
	}
	user := opts.User
	if user == "" {
		user = "root"
	}
	info := SSHInfo{Host: supervisor.SSHListenHost, Port: port, User: user, KeyPath: keyPath,
		KnownHostsFile: filepath.Join(r.Dir, supervisor.KnownHostsFile)}
	if err := knowHostKey(r.Dir, info.KnownHostsFile, info.Host, port); err != nil {
		return SSHInfo{}, fmt.Errorf("ssh host key: %w", err)
	}
	info.Command = []string{"ssh", "-i", keyPath, "-p", strconv.Itoa(port),
		"-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + info.KnownHostsFile,
		"-o", "LogLevel=ERROR", user + "@" + info.Host}
	return info, nil
}

// knowHostKey makes the VM's host key in dir unless it exists, and writes
// known, a known_hosts file naming it for host:port.
func knowHostKey(dir, known, host string, port int) error {
	pub, err := ensureSSHKey(filepath.Join(dir, supervisor.HostKeyFile))
	if err != nil {
		return err
	}
	line := fmt.Sprintf("[%s]:%d %s\n", host, port, pub)
	if have, err := os.ReadFile(known); err == nil && string(have) == line {
		return nil
	}
	return writeFileAtomic(known, []byte(line), 0o644)
}

// sshLine is the ssh command line for Info, or "" when there is none.
func (vm *VM) sshLine(ctx context.Context) string {
	info, err := vm.ssh(ctx, SSHOptions{})
	if err != nil {
		return ""
	}
	return strings.Join(info.Command, " ")
}

// sshKey returns a private key path and its public key line: keyPath's,
// or the data dir's default key, made on first use.
func (h *host) sshKey(keyPath string) (string, string, error) {
	if keyPath != "" {
		pub, err := publicKeyOf(keyPath)
		return keyPath, pub, err
	}
	keyPath = h.path("ssh", sshKeyName)
	pub, err := ensureSSHKey(keyPath)
	if err != nil {
		return "", "", err
	}
	return keyPath, pub, nil
}

// ensureSSHKey returns the public key line of the ed25519 key at path,
// making the key first when there is none.
func ensureSSHKey(path string) (string, error) {
	if pub, err := os.ReadFile(path + ".pub"); err == nil {
		return strings.TrimSpace(string(pub)), nil
	}
	if err := makeSSHKey(path); err != nil {
		return "", fmt.Errorf("making ssh key %s: %w", path, err)
	}
	pub, err := os.ReadFile(path + ".pub")
	return strings.TrimSpace(string(pub)), err
}

// publicKeyOf reads a private key's public half from path.pub, or derives
// it from the key.
func publicKeyOf(path string) (string, error) {
	if b, err := os.ReadFile(path + ".pub"); err == nil {
		if _, _, _, _, err := ssh.ParseAuthorizedKey(b); err != nil {
			return "", fmt.Errorf("%s.pub: %w", path, err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%w ssh key: %w", ErrInvalid, err)
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return "", fmt.Errorf("%w ssh key %s: %v (a key with a passphrase needs its .pub beside it)", ErrInvalid, path, err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))), nil
}

// makeSSHKey writes a new ed25519 key pair (OpenSSH format, 0600) at
// path and path.pub. Another process making one at the same moment is
// fine: the first link wins and both use it.
func makeSSHKey(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	block, err := ssh.MarshalPrivateKey(priv, "smolvm")
	if err != nil {
		return err
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return err
	}
	pubLine := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + " smolvm\n"
	tmp, err := os.CreateTemp(filepath.Dir(path), ".key-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(pem.EncodeToMemory(block)); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Link(tmp.Name(), path); errors.Is(err, fs.ErrExist) {
		return waitForPub(path)
	} else if err != nil {
		return err
	}
	return writeFileAtomic(path+".pub", []byte(pubLine), 0o644)
}

// waitForPub is for the loser of a key race: the winner writes the .pub
// right after the key.
func waitForPub(path string) error {
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(path + ".pub"); err == nil {
			return nil
		}
		if i == 99 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	pub, err := publicKeyOf(path)
	if err != nil {
		return err
	}
	return writeFileAtomic(path+".pub", []byte(pub+"\n"), 0o644)
}

// authorizeKey adds the public key line to an authorized_keys file unless
// it is there.
func authorizeKey(file, pub string) error {
	key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(pub))
	if err != nil {
		return fmt.Errorf("%w public key: %v", ErrInvalid, err)
	}
	have, err := os.ReadFile(file)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for _, line := range strings.Split(string(have), "\n") {
		if k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line)); err == nil && string(k.Marshal()) == string(key.Marshal()) {
			return nil
		}
	}
	return writeFileAtomic(file, append(have, []byte(pub+"\n")...), 0o600)
}

func writeFileAtomic(path string, data []byte, perm fs.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
