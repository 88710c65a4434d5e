package firecracker

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/smolvm/smolvm/internal/agentproto"
	"github.com/smolvm/smolvm/internal/image"
	"github.com/smolvm/smolvm/internal/vmm"
	"github.com/smolvm/smolvm/internal/vmtest"
)

// requireFirecracker skips unless the VM tier is on and this host can run
// Firecracker (KVM and the binary), saying which is missing, and returns
// the binary's path.
func requireFirecracker(t *testing.T) string {
	t.Helper()
	if !vmtest.Enabled() {
		t.Skipf("boots real VMs: set %s=1", vmtest.EnvVar)
	}
	if err := CheckKVM("/dev/kvm"); err != nil {
		t.Skipf("no /dev/kvm: %v", err)
	}
	fc, err := exec.LookPath("firecracker")
	if err != nil {
		t.Skip("firecracker binary not found on PATH")
	}
	return fc
}

// TestRealBootAndPing boots the host's cloud kernel (extracted to an ELF
// vmlinux) with smolvm's initramfs under a real firecracker and pings the
// agent over hybrid vsock; then pause, resume and shutdown.
func TestRealBootAndPing(t *testing.T) {
	fc := requireFirecracker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	k, err := image.FindKernel(ctx, image.KernelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vmlinux := filepath.Join(t.TempDir(), "vmlinux")
	if err := image.ExtractVmlinux(k.Path, vmlinux); err != nil {
		t.Fatal(err)
	}
	initrd, err := image.BuildInitramfs(ctx, vmtest.DataDir(t), vmtest.Binary(t), k)
	if err != nil {
		t.Fatal(err)
	}
	dir := shortDir(t)
	spec := vmm.Spec{
		ID: "fc-real", Dir: dir, Kernel: vmlinux, Initrd: initrd,
		VCPUs: 1, MemoryMiB: 256, ConsoleLog: filepath.Join(dir, "console.log"),
	}
	b := New(Options{Binary: fc})
	vi, err := b.Launch(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	inst := vi.(*Instance)
	defer func() {
		if t.Failed() {
			console, _ := os.ReadFile(spec.ConsoleLog)
			t.Logf("console:\n%s", console)
		}
		inst.Kill()
		<-inst.Done()
	}()

	conn := dialAgentUntilUp(ctx, t, inst)
	defer conn.Close()
	br := bufio.NewReader(conn)
	hello, err := agentproto.ReadHello(br)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("agent: %+v", hello)
	if err := ping(struct {
		io.Reader
		io.WriteCloser
	}{br, conn}); err != nil {
		t.Fatal(err)
	}

	if err := inst.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := inst.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if err := inst.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// dialAgentUntilUp retries DialAgent while the guest boots: until the agent
// listens, the guest refuses and firecracker closes the connection. There
// is no event to wait on from outside the guest.
func dialAgentUntilUp(ctx context.Context, t *testing.T, inst *Instance) net.Conn {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		c, err := inst.DialAgent(ctx)
		if err == nil {
			return c
		}
		select {
		case <-ctx.Done():
			t.Fatalf("agent never answered: %v", err)
		case <-inst.Done():
			t.Fatalf("firecracker exited: %v", inst.Err())
		case <-tick.C:
		}
	}
}

// ping opens one yamux stream and makes an OpPing request.
func ping(rwc io.ReadWriteCloser) error {
	sess, err := yamux.Client(rwc, agentproto.YamuxConfig())
	if err != nil {
		return err
	}
	defer sess.Close()
	s, err := sess.Open()
	if err != nil {
		return err
	}
	c := agentproto.NewConn(s)
	defer c.Close()
	if err := c.WriteJSON(agentproto.FrameRequest, agentproto.Request{Op: agentproto.OpPing}); err != nil {
		return err
	}
	var resp agentproto.Response
	return c.ReadJSON(agentproto.FrameResponse, &resp)
}
