package network

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// BenchmarkTeardownSteps times Teardown's kernel steps one by one, each
// against a fully set-up VM (setup is not timed; the step-ms/op metric is
// the step alone), to show where teardown time goes:
//
//   - nft-batch/kept-socket: the VM's nftables objects listed and deleted in
//     one batch on the Manager's socket (what Teardown does);
//   - nft-batch/socket-per-batch: the same on a fresh socket, closed after
//     the batch (what Teardown did before nftSession; the close waits for
//     the kernel's deferred destroy work, one RCU grace period);
//   - link-delete/persistent-tap: RTM_DELLINK of the VM's tap (what
//     Teardown does);
//   - link-delete/tap-fd-close: closing the only fd of a non-persistent tap
//     (the alternative of letting the link go with its last fd).
//
// Needs SMOLVM_VM_TESTS=1 (root, a fresh namespace).
func BenchmarkTeardownSteps(b *testing.B) {
	p, err := ParsePolicy(EgressAllowlist, []string{"10.0.0.0/8", "pypi.org"})
	if err != nil {
		b.Fatal(err)
	}
	opts := VMOptions{RateMbps: 100, Egress: p}
	deleteObjects := func(m *Manager, id string) func(c *nftables.Conn) error {
		return func(c *nftables.Conn) error {
			_, err := m.delVM(c, map[string]bool{id: true})
			return err
		}
	}
	steps := []struct {
		name string
		step func(m *Manager, id string) error
	}{
		{"nft-batch/kept-socket", func(m *Manager, id string) error {
			return m.flush(deleteObjects(m, id))
		}},
		{"nft-batch/socket-per-batch", func(m *Manager, id string) error {
			s := nftSession{ns: m.ns}
			if err := s.batch(deleteObjects(m, id)); err != nil {
				return err
			}
			return s.close()
		}},
		{"link-delete/persistent-tap", func(m *Manager, id string) error {
			return m.deleteLink(TapName(id))
		}},
	}
	for _, s := range steps {
		b.Run(s.name, func(b *testing.B) {
			m := newTopo(b).manager(context.Background())
			var total time.Duration
			n := 0
			for i := 0; b.Loop(); i++ {
				id := fmt.Sprintf("step-%d", i)
				if _, err := m.Setup(context.Background(), id, opts); err != nil {
					b.Fatal(err)
				}
				t0 := time.Now()
				if err := s.step(m, id); err != nil {
					b.Fatal(err)
				}
				total += time.Since(t0)
				n++
				if err := m.Teardown(context.Background(), id); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(ms(total, n), "step-ms/op")
		})
	}
	b.Run("link-delete/tap-fd-close", func(b *testing.B) {
		m := newTopo(b).manager(context.Background())
		var total time.Duration
		n := 0
		for b.Loop() {
			fd, err := openTapFd(m, "smolvm-fdbench")
			if err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			if err := unix.Close(fd); err != nil {
				b.Fatal(err)
			}
			total += time.Since(t0)
			n++
			if _, err := m.nl.LinkByName("smolvm-fdbench"); err == nil {
				b.Fatal("non-persistent tap still there after its fd closed")
			}
		}
		b.ReportMetric(ms(total, n), "step-ms/op")
	})
}

// openTapFd makes a non-persistent tap in m's namespace: it lives as long
// as the returned fd.
func openTapFd(m *Manager, name string) (int, error) {
	fd := -1
	err := m.ns.do(func() error {
		var err error
		if fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0); err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
		return unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	})
	if err != nil && fd >= 0 {
		unix.Close(fd)
	}
	return fd, err
}
