package agent

import (
	"bytes"
	"strings"
	"testing"
)

func TestRingKeepsTheTailAndCountsDrops(t *testing.T) {
	tests := []struct {
		name    string
		size    int
		writes  []string
		from    int64
		want    string
		dropped int64
	}{
		{"fits", 16, []string{"abc", "def"}, 0, "abcdef", 0},
		{"from an offset", 16, []string{"abc", "def"}, 2, "cdef", 0},
		{"wraps", 8, []string{"0123456", "789ab"}, 0, "456789ab", 4},
		{"one write larger than the ring", 4, []string{"0123456789"}, 0, "6789", 6},
		{"grows past its first size", 1 << 20, []string{strings.Repeat("x", 10000), "end"}, 9998, "xxend", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRing(tt.size)
			for _, w := range tt.writes {
				r.Write([]byte(w))
			}
			r.close()
			var got bytes.Buffer
			var dropped int64
			off := tt.from
			buf := make([]byte, 3)
			for {
				n, next, d, eof, _ := r.readAt(off, buf)
				got.Write(buf[:n])
				off, dropped = next, dropped+d
				if eof {
					break
				}
			}
			if got.String() != tt.want || dropped != tt.dropped {
				t.Fatalf("got %q dropped %d; want %q dropped %d", got.String(), dropped, tt.want, tt.dropped)
			}
		})
	}
}
