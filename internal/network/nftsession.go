package network

import (
	"errors"
	"fmt"
	"sync"

	"github.com/google/nftables"
)

// nftSession is the Manager's netfilter netlink socket: opened on first
// use, kept for the Manager's life, used by one batch at a time, and
// replaced after any error so nothing of a failed batch (queued messages,
// unread replies) reaches the next one.
//
// Why one kept socket and not one per batch: the kernel frees deleted
// nftables objects (rules, chains, sets, elements) after an RCU grace
// period, in a work item it schedules at commit; the objects are out of the
// ruleset when the commit returns. But closing any netfilter netlink socket
// while that work is pending waits for it (netlink_release ->
// nft_rcv_nl_event -> flush_work), one grace period, 11-14 ms here; the
// commit itself takes ~0.1 ms. A socket per batch made every batch that
// deletes (Teardown, SetPolicy, ClosePort) pay that wait on close.
type nftSession struct {
	mu   sync.Mutex
	ns   nsRunner
	conn *nftables.Conn // nil until first use and after an error
}

// batch runs fn to queue one batch and sends it: the kernel applies all of
// it or none. Reads fn makes go through the same socket.
func (s *nftSession) batch(fn func(c *nftables.Conn) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		c, err := s.open()
		if err != nil {
			return err
		}
		s.conn = c
	}
	err := fn(s.conn)
	if err == nil {
		err = s.conn.Flush()
	}
	if err != nil {
		return errors.Join(err, s.resetLocked())
	}
	return nil
}

func (s *nftSession) open() (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.AsLasting()}
	if s.ns.set {
		opts = append(opts, nftables.WithNetNSFd(int(s.ns.handle)))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables: %w", err)
	}
	return c, nil
}

// resetLocked closes the socket; the next batch opens a new one.
func (s *nftSession) resetLocked() error {
	if s.conn == nil {
		return nil
	}
	err := s.conn.CloseLasting()
	s.conn = nil
	if err != nil {
		return fmt.Errorf("close nftables socket: %w", err)
	}
	return nil
}

// close releases the socket.
func (s *nftSession) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resetLocked()
}
