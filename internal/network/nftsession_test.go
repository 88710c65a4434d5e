package network

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/nftables"
)

// A batch that fails, in Go or in the kernel, applies nothing and leaves
// nothing queued or unread on the kept socket for the next batch.
func TestNftSessionFailedBatchLeavesNothing(t *testing.T) {
	tp := newTopo(t)
	m := tp.manager(context.Background())
	if err := m.flush(func(c *nftables.Conn) error { m.addSkeleton(c); return nil }); err != nil {
		t.Fatal(err)
	}
	errQueue := errors.New("stop while queuing")
	tests := []struct {
		name string
		fn   func(c *nftables.Conn) error
	}{
		{"go error after queuing", func(c *nftables.Conn) error {
			m.add(c, baseInput.name, "smolvm:bad-go", drop())
			return errQueue
		}},
		{"kernel refuses one message", func(c *nftables.Conn) error {
			m.add(c, baseInput.name, "smolvm:bad-kernel", drop())
			m.add(c, "no-such-chain", "smolvm:bad-kernel", drop())
			return nil
		}},
		{"kernel refuses the first message", func(c *nftables.Conn) error {
			m.add(c, "no-such-chain", "smolvm:bad-first", drop())
			m.add(c, baseInput.name, "smolvm:bad-first", drop())
			return nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := m.flush(tt.fn); err == nil {
				t.Fatal("batch succeeded, want an error")
			}
			good := "smolvm:good-" + strings.ReplaceAll(tt.name, " ", "-")
			err := m.flush(func(c *nftables.Conn) error {
				if _, err := c.GetRules(m.table, m.chain(baseInput.name)); err != nil {
					return err // a read on the socket, too, must see only its own replies
				}
				m.add(c, baseInput.name, good, accept())
				return nil
			})
			if err != nil {
				t.Fatalf("next batch: %v", err)
			}
			listing := tp.nft("list", "chain", "inet", "smolvm", baseInput.name)
			if !strings.Contains(listing, good) || strings.Contains(listing, "smolvm:bad-") {
				t.Fatalf("input chain after a failed and a good batch:\n%s", listing)
			}
		})
	}
}
