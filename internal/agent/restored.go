package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/agentproto"
)

// identity changes the machine-wide state a restore must refresh. Tests
// replace its functions; the zero value is not usable, see hostIdentity.
type identity struct {
	setClock    func(time.Time) error
	addEntropy  func([]byte) error
	setHostname func(string) error
}

// hostIdentity changes the real machine: only PID 1 of a guest uses it.
func hostIdentity() identity {
	return identity{setClock: setClock, addEntropy: addEntropy, setHostname: setHostname}
}

// restored serves OpRestored: it reads the Restored frame, applies it and
// replies.
func (s *server) restored(c *agentproto.Conn) {
	var r agentproto.Restored
	if err := c.ReadJSON(agentproto.FrameRequest, &r); err != nil {
		replyError(c, fmt.Errorf("reading restore details: %w", err))
		return
	}
	if os.Getpid() != 1 {
		replyError(c, errors.New("restored: the agent is not the guest's init; refusing to change this machine"))
		return
	}
	if err := applyRestored(hostIdentity(), r); err != nil {
		replyError(c, err)
		return
	}
	s.log.Info("restored from a snapshot", "hostname", r.Hostname, "clock", time.Unix(0, r.UnixNano).UTC())
	c.WriteJSON(agentproto.FrameResponse, agentproto.Response{})
}

// applyRestored checks r and then sets the clock, mixes in the seed and
// renames the machine, in that order.
func applyRestored(id identity, r agentproto.Restored) error {
	if r.UnixNano <= 0 {
		return fmt.Errorf("restored: clock %d is not a time", r.UnixNano)
	}
	if len(r.Seed) == 0 || len(r.Seed) > agentproto.MaxRestoredSeed {
		return fmt.Errorf("restored: seed of %d bytes, want 1 to %d", len(r.Seed), agentproto.MaxRestoredSeed)
	}
	if len(r.Hostname) > 64 {
		return fmt.Errorf("restored: hostname of %d bytes, want at most 64", len(r.Hostname))
	}
	if err := id.setClock(time.Unix(0, r.UnixNano)); err != nil {
		return fmt.Errorf("setting the clock: %w", err)
	}
	if err := id.addEntropy(r.Seed); err != nil {
		return fmt.Errorf("seeding the random pool: %w", err)
	}
	if r.Hostname != "" {
		if err := id.setHostname(r.Hostname); err != nil {
			return fmt.Errorf("setting hostname: %w", err)
		}
	}
	return nil
}

func setClock(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
}

func setHostname(name string) error { return unix.Sethostname([]byte(name)) }

// addEntropy mixes seed into the kernel's pool and credits it
// (RNDADDENTROPY), so that clones of one snapshot diverge at once.
func addEntropy(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+(len(seed)+3)/4*4)
	binary.NativeEndian.PutUint32(info[0:], uint32(len(seed)*8))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(seed)))
	copy(info[8:], seed)
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ioErr error
	err = rc.Control(func(fd uintptr) {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0])))
		if e != 0 {
			ioErr = e
		}
	})
	runtime.KeepAlive(info)
	if err != nil {
		return err
	}
	if ioErr != nil {
		// Without the privilege to credit it, still mix it in.
		_, err := f.Write(seed)
		return err
	}
	return nil
}

// hostname is what processes get in HOSTNAME: in a guest the kernel's
// current name (a restore may have renamed the machine since Serve began),
// elsewhere Config.Hostname.
func (s *server) hostname() string {
	if os.Getpid() == 1 {
		if h, err := os.Hostname(); err == nil {
			return h
		}
	}
	return s.cfg.Hostname
}
