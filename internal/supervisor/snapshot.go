package supervisor

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smolvm/smolvm/internal/agentproto"
	"github.com/smolvm/smolvm/internal/store"
	"github.com/smolvm/smolvm/internal/vmm"
)

// Pause, resume and snapshot control operations.
const (
	opPause    = "pause"    // stop the guest's vCPUs; the row becomes paused
	opResume   = "resume"   // restart them; the row becomes running again
	opSnapshot = "snapshot" // pause, save the VMM's state and copy disks, resume
)

// RestorePlan makes a supervisor resume a snapshot instead of booting.
// Plan.VMM must then be the snapshotted VM's spec with this VM's run
// directory, disks and console.
type RestorePlan struct {
	Snapshot string `json:"snapshot"` // the backend's snapshot directory (vmm.Restorer)
	Hostname string `json:"hostname"` // the clone's hostname, sent to the guest
}

// SnapshotRequest are the arguments of opSnapshot.
type SnapshotRequest struct {
	Dir   string     `json:"dir"`             // where the backend writes its snapshot (created)
	Disks []DiskCopy `json:"disks,omitempty"` // disks copied while the guest is paused
}

// DiskCopy is one disk file to copy; Dst must not exist.
type DiskCopy struct {
	Src string `json:"src"`
	Dst string `json:"dst"`
}

// snapshotTimeout bounds one snapshot operation (a large guest's RAM is
// written at disk speed).
const snapshotTimeout = 10 * time.Minute

// Pause stops the VM's vCPUs.
func Pause(ctx context.Context, dir string) error { return simpleCall(ctx, dir, request{Op: opPause}) }

// Resume restarts a paused VM's vCPUs.
func Resume(ctx context.Context, dir string) error {
	return simpleCall(ctx, dir, request{Op: opResume})
}

// Snapshot asks the supervisor to snapshot its VM as req says. The guest
// is paused for the duration and resumed after, unless it was paused
// before. On error the caller removes what req named.
func Snapshot(ctx context.Context, dir string, req SnapshotRequest) error {
	return simpleCall(ctx, dir, request{Op: opSnapshot, Snapshot: &req})
}

func simpleCall(ctx context.Context, dir string, req request) error {
	_, c, _, err := call(ctx, dir, req)
	if err != nil {
		return err
	}
	return c.Close()
}

// startVMM launches the VMM, or restores it when the plan says so.
func (s *supervisor) startVMM(ctx context.Context, backend vmm.Backend) (vmm.Instance, error) {
	if s.plan.Restore == nil {
		return backend.Launch(ctx, s.plan.VMM)
	}
	r, ok := backend.(vmm.Restorer)
	if !ok {
		return nil, fmt.Errorf("the %s backend cannot restore snapshots: %w", backend.Name(), errors.ErrUnsupported)
	}
	s.log.Info("restoring", "snapshot", s.plan.Restore.Snapshot)
	return r.Restore(ctx, s.plan.VMM, s.plan.Restore.Snapshot)
}

// resync ends a session the guest may still hold from before a restore
// (see agentproto.SyncLine). The line goes twice: a session whose host had
// not yet sent anything (a snapshot right after boot) takes the first as
// its own start-of-session sync line and drops it, so only the second ends
// it; a session past its start ends at the first, and the fresh session
// drops the second. A write error shows up in the hello read.
func (s *supervisor) resync(conn net.Conn) {
	if s.plan.Restore != nil {
		io.WriteString(conn, agentproto.SyncLine+agentproto.SyncLine)
	}
}

// errRestoreTransport marks a restored op that failed in transit (the
// session or stream broke), not one the guest refused.
var errRestoreTransport = errors.New("telling the guest it was restored")

// sendRestored tells a restored guest its new clock, randomness and name.
func (s *supervisor) sendRestored(ctx context.Context) error {
	if s.plan.Restore == nil {
		return nil
	}
	msg, err := s.restoredMessage()
	if err != nil {
		return err
	}
	stream, err := s.session.OpenStream()
	if err != nil {
		return fmt.Errorf("%w: %w", errRestoreTransport, err)
	}
	defer stream.Close()
	dl := time.Now().Add(30 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	stream.SetDeadline(dl)
	c := agentproto.NewConn(stream)
	if err := c.WriteJSON(agentproto.FrameRequest, agentproto.Request{Op: agentproto.OpRestored}); err != nil {
		return fmt.Errorf("%w: %w", errRestoreTransport, err)
	}
	msg.UnixNano = time.Now().UnixNano() // as late as possible
	if err := c.WriteJSON(agentproto.FrameRequest, msg); err != nil {
		return fmt.Errorf("%w: %w", errRestoreTransport, err)
	}
	t, p, err := c.ReadFrame(make([]byte, agentproto.MaxFrame))
	if err != nil {
		return fmt.Errorf("%w: %w", errRestoreTransport, err)
	}
	if t == agentproto.FrameError {
		return fmt.Errorf("the guest could not apply the restore: %s", p)
	}
	return nil
}

// restoredMessage is the identity a clone gets: a fresh seed, its name
// and, on a tap network, the address, gateway, resolver and MAC its own
// setupNet leased (user-mode addresses are private to each VMM and stay).
func (s *supervisor) restoredMessage() (agentproto.Restored, error) {
	seed := make([]byte, 64)
	if _, err := rand.Read(seed); err != nil {
		return agentproto.Restored{}, err
	}
	return agentproto.Restored{Seed: seed, Hostname: s.plan.Restore.Hostname, Net: s.net.restoredNet()}, nil
}

// handleSnapshot answers pause, resume and snapshot, one at a time.
func (s *supervisor) handleSnapshot(c net.Conn, req request) {
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), snapshotTimeout)
	defer cancel()
	s.ctlMu.Lock()
	defer s.ctlMu.Unlock()
	var err error
	switch req.Op {
	case opPause:
		err = s.pause(ctx)
	case opResume:
		err = s.resume(ctx)
	case opSnapshot:
		if req.Snapshot == nil {
			err = errors.New("snapshot request without arguments")
			break
		}
		err = s.snapshot(ctx, *req.Snapshot)
	}
	if err != nil {
		s.log.Error(req.Op, "err", err)
		writeLine(c, reply{Error: err.Error()})
		return
	}
	writeLine(c, reply{OK: true})
}

func (s *supervisor) pauser() (vmm.Pauser, error) {
	p, ok := s.inst.(vmm.Pauser)
	if !ok {
		return nil, fmt.Errorf("the %s backend cannot pause a vm: %w", s.plan.Backend, errors.ErrUnsupported)
	}
	return p, nil
}

func (s *supervisor) pause(ctx context.Context) error {
	p, err := s.pauser()
	if err != nil {
		return err
	}
	if err := p.Pause(ctx); err != nil {
		return err
	}
	return s.setStatus(ctx, store.StatusRunning, store.StatusPaused)
}

func (s *supervisor) resume(ctx context.Context) error {
	p, err := s.pauser()
	if err != nil {
		return err
	}
	if err := p.Resume(ctx); err != nil {
		return err
	}
	return s.setStatus(ctx, store.StatusPaused, store.StatusRunning)
}

// setStatus moves the row from one status to another; a row in any other
// status (being stopped) is left alone.
func (s *supervisor) setStatus(ctx context.Context, from, to store.Status) error {
	_, err := s.opts.Store.UpdateVM(ctx, s.vm.ID, func(v *store.VM) error {
		if v.Status == from {
			v.Status = to
		}
		return nil
	})
	return err
}

// snapshot pauses the guest (unless it is paused already), has the VMM
// write its state, copies the disks, and resumes the guest.
func (s *supervisor) snapshot(ctx context.Context, req SnapshotRequest) (err error) {
	p, err := s.pauser()
	if err != nil {
		return err
	}
	sn, ok := s.inst.(vmm.Snapshotter)
	if !ok {
		return fmt.Errorf("the %s backend cannot snapshot a vm: %w", s.plan.Backend, errors.ErrUnsupported)
	}
	row, err := s.opts.Store.GetVM(ctx, s.vm.ID)
	if err != nil {
		return err
	}
	if row.Status != store.StatusPaused {
		if err := p.Pause(ctx); err != nil {
			return err
		}
		defer func() {
			if rerr := p.Resume(context.WithoutCancel(ctx)); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}()
	}
	t0 := time.Now()
	if err := sn.Snapshot(ctx, req.Dir); err != nil {
		return err
	}
	for _, d := range req.Disks {
		if err := copyFile(d.Src, d.Dst); err != nil {
			return fmt.Errorf("copying disk %s: %w", d.Src, err)
		}
	}
	s.log.Info("snapshot written", "dir", req.Dir, "paused_ms", time.Since(t0).Milliseconds())
	return nil
}

// copyFile makes dst (which must not exist) a copy of src: a reflink where
// the filesystem shares blocks, else a copy that skips holes. On error dst
// is removed.
func copyFile(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		return nil
	}
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	var off int64
	for off < fi.Size() {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break // ENXIO: only a hole remains
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		if _, err := io.CopyBuffer(io.NewOffsetWriter(out, data), io.NewSectionReader(in, data, hole-data), buf); err != nil {
			return err
		}
		off = hole
	}
	if err := out.Truncate(fi.Size()); err != nil {
		return err
	}
	return out.Sync()
}
