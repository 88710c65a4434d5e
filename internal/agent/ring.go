package agent

import "sync"

// ring keeps the last size bytes written to it, and counts all of them, so
// that a reader can ask for everything from an offset and learn how much
// of it was dropped. Safe for concurrent use.
type ring struct {
	mu     sync.Mutex
	data   []byte // the byte at offset o lives at data[o%len(data)]; grows to max before it wraps
	max    int
	total  int64 // bytes ever written
	closed bool
	notify chan struct{} // closed (and replaced) on each write and on close
}

func newRing(size int) *ring {
	return &ring{data: make([]byte, min(size, 4<<10)), max: size, notify: make(chan struct{})}
}

// grow makes room for n more bytes while the ring has not wrapped yet,
// so a quiet process costs little memory.
func (r *ring) grow(n int) {
	if len(r.data) >= r.max || r.total+int64(n) <= int64(len(r.data)) {
		return
	}
	size := min(r.max, max(2*len(r.data), int(r.total)+n))
	data := make([]byte, size)
	copy(data, r.data[:r.total])
	r.data = data
}

// Write keeps p (its tail, when p is larger than the ring). It never fails.
func (r *ring) Write(p []byte) (int, error) {
	n := len(p)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.grow(len(p))
	size := int64(len(r.data))
	if int64(len(p)) > size {
		r.total += int64(len(p)) - size
		p = p[int64(len(p))-size:]
	}
	for len(p) > 0 {
		i := r.total % size
		c := copy(r.data[i:], p)
		p = p[c:]
		r.total += int64(c)
	}
	r.wake()
	return n, nil
}

// close marks the end of the stream.
func (r *ring) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	r.wake()
}

func (r *ring) wake() {
	close(r.notify)
	r.notify = make(chan struct{})
}

// readAt copies bytes from offset off into p. It returns how many it
// copied, the offset after them, how many bytes before them were dropped
// (no longer kept), whether the stream has ended there, and a channel
// closed when more may be read.
func (r *ring) readAt(off int64, p []byte) (n int, next, dropped int64, eof bool, more <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	size := int64(len(r.data))
	if oldest := r.total - size; off < oldest {
		dropped, off = oldest-off, oldest
	}
	for n < len(p) && off < r.total {
		i := off % size
		end := min(size, i+(r.total-off))
		c := copy(p[n:], r.data[i:end])
		n += c
		off += int64(c)
	}
	return n, off, dropped, r.closed && off == r.total, r.notify
}

// written returns how many bytes were ever written.
func (r *ring) written() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total
}
