package agent

import (
	"errors"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Reaper owns every wait4 in the process: children are started through
// Start, which registers their pid before they can be reaped, and one
// goroutine, woken by SIGCHLD, collects exit statuses and hands each to its
// registered waiter. As PID 1 (orphans true) it also reaps children nobody
// registered, such as daemons re-parented to init. Nothing else in the
// process may call wait4 or os/exec's Wait while a Reaper runs.
//
// A Reaper is safe for concurrent use.
type Reaper struct {
	orphans bool
	sigs    chan os.Signal
	stop    chan struct{}
	done    chan struct{}

	mu      sync.Mutex                   // guards waiters
	waiters map[int]chan unix.WaitStatus // registered pid → its waiter (buffered, 1)
}

// NewReaper starts a reaper. With orphans set it reaps every child of the
// process (wait4(-1)), which PID 1 must do; otherwise only the pids it
// started, so that tests can run it inside a normal process.
func NewReaper(orphans bool) *Reaper {
	r := &Reaper{
		orphans: orphans,
		sigs:    make(chan os.Signal, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		waiters: map[int]chan unix.WaitStatus{},
	}
	signal.Notify(r.sigs, syscall.SIGCHLD)
	go r.loop()
	return r
}

// Close stops the reaper. Waiters of children still running never fire.
func (r *Reaper) Close() {
	signal.Stop(r.sigs)
	close(r.stop)
	<-r.done
}

// Start runs start (which forks a child and returns its pid) with the
// registry locked, and returns a channel that receives the child's wait
// status once. A child that exits before it is registered is not missed:
// its SIGCHLD wakes the loop, whose reaping waits for this lock (reapAll
// delivers under it, reapRegistered scans under it), so the loop sees the
// registration. No extra pass is needed, which matters under emulation,
// where one costs the child ~0.15 ms of the only CPU.
func (r *Reaper) Start(start func() (int, error)) (int, <-chan unix.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := start()
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	r.waiters[pid] = ch
	return pid, ch, nil
}

func (r *Reaper) loop() {
	defer close(r.done)
	for {
		select {
		case <-r.stop:
			return
		case <-r.sigs:
			if r.orphans {
				r.reapAll()
			} else {
				r.reapRegistered()
			}
		}
	}
}

// reapAll collects every exited child of the process.
func (r *Reaper) reapAll() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		r.deliver(pid, ws)
	}
}

// reapRegistered collects the registered children that have exited.
func (r *Reaper) reapRegistered() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for pid, ch := range r.waiters {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if got == pid && err == nil {
			ch <- ws
			delete(r.waiters, pid)
		}
	}
}

func (r *Reaper) deliver(pid int, ws unix.WaitStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ch, ok := r.waiters[pid]; ok {
		ch <- ws
		delete(r.waiters, pid)
	}
}
