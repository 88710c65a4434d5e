package network

import (
	"fmt"
	"net/netip"
)

// In user mode QEMU's own network stack (slirp) forwards host ports into the
// guest; the supervisor sends these lines through QMP's
// human-monitor-command ("command-line" argument).

// HostFwdAdd is the monitor command that forwards TCP addr:hostPort on the
// host to guestPort on the guest's slirp address (10.0.2.15 by default),
// for the user-mode netdev netdevID. addr "" means 127.0.0.1.
func HostFwdAdd(netdevID, addr string, hostPort, guestPort int) (string, error) {
	rule, err := hostFwdRule(addr, hostPort)
	if err != nil {
		return "", err
	}
	if err := checkPort(guestPort); err != nil {
		return "", err
	}
	return fmt.Sprintf("hostfwd_add %s %s-:%d", netdevID, rule, guestPort), nil
}

// HostFwdRemove is the monitor command that undoes HostFwdAdd.
func HostFwdRemove(netdevID, addr string, hostPort int) (string, error) {
	rule, err := hostFwdRule(addr, hostPort)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("hostfwd_remove %s %s", netdevID, rule), nil
}

func hostFwdRule(addr string, hostPort int) (string, error) {
	if addr == "" {
		addr = "127.0.0.1"
	}
	a, err := netip.ParseAddr(addr)
	if err != nil || !a.Is4() {
		return "", fmt.Errorf("%w: address %q: want an IPv4 address", ErrInvalid, addr)
	}
	if err := checkPort(hostPort); err != nil {
		return "", err
	}
	return fmt.Sprintf("tcp:%s:%d", a, hostPort), nil
}

func checkPort(p int) error {
	if p < 1 || p > 65535 {
		return fmt.Errorf("%w: port %d out of 1-65535", ErrInvalid, p)
	}
	return nil
}
