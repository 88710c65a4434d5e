package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/agentproto"
	"github.com/smolvm/smolvm/internal/network"
)

// identity changes the machine-wide state a restore must refresh. Tests
// replace its functions; the zero value is not usable, see hostIdentity.
type identity struct {
	setClock    func(time.Time) error
	addEntropy  func([]byte) error
	setHostname func(string) error
	renumber    func(network.GuestNet, net.HardwareAddr) (nic string, err error)
	setResolver func(netip.Addr) error
}

// hostIdentity changes the real machine: only PID 1 of a guest uses it.
func hostIdentity() identity {
	return identity{setClock: setClock, addEntropy: addEntropy, setHostname: setHostname,
		renumber:    renumber,
		setResolver: guestResolvConf().set}
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
	if err := applyRestored(hostIdentity(), r, s.log); err != nil {
		replyError(c, err)
		return
	}
	s.log.Info("restored from a snapshot", "hostname", r.Hostname, "clock", time.Unix(0, r.UnixNano).UTC(), "renumbered", r.Net != nil)
	c.WriteJSON(agentproto.FrameResponse, agentproto.Response{})
}

// applyRestored checks r and then sets the clock, mixes in the seed,
// renames the machine and renumbers its network, in that order. A
// resolv.conf that cannot be written is logged, not fatal (as at boot:
// the network still works by address).
func applyRestored(id identity, r agentproto.Restored, log *slog.Logger) error {
	if r.UnixNano <= 0 {
		return fmt.Errorf("restored: clock %d is not a time", r.UnixNano)
	}
	if len(r.Seed) == 0 || len(r.Seed) > agentproto.MaxRestoredSeed {
		return fmt.Errorf("restored: seed of %d bytes, want 1 to %d", len(r.Seed), agentproto.MaxRestoredSeed)
	}
	if len(r.Hostname) > 64 {
		return fmt.Errorf("restored: hostname of %d bytes, want at most 64", len(r.Hostname))
	}
	var gn network.GuestNet
	var mac net.HardwareAddr
	if r.Net != nil {
		var err error
		if gn, mac, err = parseRestoredNet(*r.Net); err != nil {
			return fmt.Errorf("restored: %w", err)
		}
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
	if r.Net == nil {
		return nil
	}
	nic, err := id.renumber(gn, mac)
	if err != nil {
		return fmt.Errorf("renumbering the network as %s (%s): %w", gn.IP, mac, err)
	}
	log.Info("network renumbered", "nic", nic, "ip", gn.IP, "mac", mac, "gateway", gn.Gateway)
	if err := id.setResolver(gn.DNS); err != nil {
		log.Warn("writing /etc/resolv.conf", "err", err)
	}
	return nil
}

// parseRestoredNet checks a restored network identity: IPv4 addresses and
// a unicast Ethernet MAC.
func parseRestoredNet(n agentproto.RestoredNet) (network.GuestNet, net.HardwareAddr, error) {
	var gn network.GuestNet
	var err error
	if gn.IP, err = netip.ParsePrefix(n.IP); err != nil || !gn.IP.Addr().Is4() {
		return gn, nil, fmt.Errorf("network address %q: want an IPv4 address/prefix", n.IP)
	}
	for _, f := range []struct {
		name, text string
		dst        *netip.Addr
	}{{"gateway", n.Gateway, &gn.Gateway}, {"resolver", n.DNS, &gn.DNS}} {
		if *f.dst, err = netip.ParseAddr(f.text); err != nil || !f.dst.Is4() {
			return gn, nil, fmt.Errorf("%s %q: want an IPv4 address", f.name, f.text)
		}
	}
	mac, err := net.ParseMAC(n.MAC)
	if err != nil || len(mac) != 6 || mac[0]&1 != 0 {
		return gn, nil, fmt.Errorf("MAC %q: want a unicast Ethernet address", n.MAC)
	}
	return gn, mac, nil
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
