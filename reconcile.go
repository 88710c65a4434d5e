package smolvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/smolvm/smolvm/internal/network"
	"github.com/smolvm/smolvm/internal/store"
	"github.com/smolvm/smolvm/internal/supervisor"
)

// reconcile makes a row agree with the processes that really exist: a VM
// whose supervisor is gone is marked error. It returns the row as it is now.
func (h *host) reconcile(ctx context.Context, r store.VM) store.VM {
	if !h.lost(r) {
		return r
	}
	updated, err := h.store.UpdateVM(ctx, r.ID, func(v *store.VM) error {
		if !h.lost(*v) {
			return errStillAlive
		}
		v.Error = fmt.Sprintf("supervisor (pid %d) is gone; the VM stopped unexpectedly", v.SupervisorPID)
		if v.SupervisorPID == 0 {
			v.Error = "start-up was interrupted"
		}
		v.Status, v.SupervisorPID, v.VMMPID = store.StatusError, 0, 0
		return nil
	})
	if err != nil {
		if r2, err := h.store.GetVM(ctx, r.ID); err == nil {
			return r2
		}
		return r
	}
	h.log.Warn("marked vm error", "vm", r.ID, "reason", updated.Error)
	// Its port forwards died with the supervisor; its address stays leased
	// until delete or cleanup removes its tap.
	h.store.ReleaseLeases(ctx, r.ID, string(network.KindPort))
	return updated
}

var errStillAlive = errors.New("still alive")

// lost reports whether a row says a VM is up while its supervisor is not.
func (h *host) lost(r store.VM) bool {
	switch r.Status {
	case store.StatusRunning, store.StatusStopping, store.StatusPaused:
		return !processIs(r.SupervisorPID, r.ID)
	case store.StatusStarting:
		if r.SupervisorPID != 0 {
			return !processIs(r.SupervisorPID, r.ID)
		}
		// Nobody has claimed it yet: lost only once a start would have timed out.
		return time.Since(r.UpdatedAt) > supervisor.DefaultBootTimeout+time.Minute
	}
	return false
}

// processIs reports whether pid is alive and its command line mentions
// word (guarding against a reused pid).
func processIs(pid int, word string) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	for _, arg := range bytes.Split(cmdline, []byte{0}) {
		if string(arg) == word || bytes.Contains(arg, []byte(word+"/")) {
			return true
		}
	}
	return false
}

// killLeftovers kills a VMM the row names if it still runs (its supervisor
// died without taking it along).
func killLeftovers(r store.VM) {
	for _, pid := range []int{r.VMMPID, r.SupervisorPID} {
		if processIs(pid, r.Dir) || processIs(pid, r.ID) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
