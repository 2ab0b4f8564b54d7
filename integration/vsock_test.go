package integration

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/agentclient"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// hostShell is the debug shell the agent binary runs on the host.
const hostShell = "/bin/busybox"

// startAgentBinary runs bin/hull-agent on the host with --listen
// vsock-unix:<dir>: the vsock channel server (one connection per channel)
// over unix sockets, since this host has no vhost-vsock. It returns the
// endpoint and the agent's process.
func startAgentBinary(t *testing.T) (hypervisor.AgentEndpoint, *exec.Cmd, *e2e.SyncBuffer) {
	t.Helper()
	if _, err := os.Stat(hostShell); err != nil {
		t.Fatalf("the agent's debug console runs %s on the host; install busybox-static: %v", hostShell, err)
	}
	dir := t.TempDir()
	cmd := exec.Command(filepath.Join(env.binDir, "hull-agent"), "--listen", "vsock-unix:"+dir, "--debug-shell", hostShell, "--log-level", "debug")
	var stderr e2e.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if t.Failed() {
			t.Logf("agent's log:\n%s", stderr.String())
		}
	})
	return hypervisor.AgentEndpoint{Transport: hypervisor.TransportVsock, Port: agentclient.DefaultVsockPort, VsockUnixDir: dir}, cmd, &stderr
}

// hostConsole is a debug console of the host-run agent, read to its end in
// the background.
type hostConsole struct {
	s   agentclient.Stream
	pid uint32

	mu  sync.Mutex
	out bytes.Buffer // guarded by mu
	// ended is closed when the reader has met err.
	ended chan struct{}
	err   error
}

func openHostConsole(t *testing.T, c *agentclient.Client) *hostConsole {
	t.Helper()
	ctx := withTimeout(t, 30*time.Second)
	id := c.NewStreamID()
	s, err := c.OpenStream(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.System().DebugConsole(ctx, &api.DebugConsoleRequest{StreamId: id})
	if err != nil {
		_ = s.Close()
		t.Fatal(err)
	}
	hc := &hostConsole{s: s, pid: r.GetPid(), ended: make(chan struct{})}
	t.Cleanup(func() {
		_ = s.Close()
		_ = syscall.Kill(int(hc.pid), syscall.SIGKILL) // no-op unless the test failed half-way
	})
	go func() {
		defer close(hc.ended)
		buf := make([]byte, 4096)
		for {
			n, err := s.Read(buf)
			hc.mu.Lock()
			hc.out.Write(buf[:n])
			hc.mu.Unlock()
			if err != nil {
				hc.err = err
				return
			}
		}
	}()
	return hc
}

func (hc *hostConsole) waitOutput(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		hc.mu.Lock()
		got := hc.out.String()
		hc.mu.Unlock()
		if strings.Contains(got, want) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %q in the console's output", want)
}

func (hc *hostConsole) waitEnded(t *testing.T) error {
	t.Helper()
	select {
	case <-hc.ended:
		return hc.err
	case <-time.After(20 * time.Second):
		t.Fatal("console stream still open 20 s later")
		return nil
	}
}

// TestAgentBinaryOverVsock runs the agent binary's vsock channel server
// (--listen vsock-unix:<dir>) and drives it through the host's vsock
// transport: the ttRPC and log channels, stdio streams with half-close,
// Client.Close with streams open, and the agent's death with streams open.
// No VM: this host has no vhost-vsock, and the channel server and the
// host's per-channel dialing are the same code over either address family.
func TestAgentBinaryOverVsock(t *testing.T) {
	ep, cmd, _ := startAgentBinary(t)
	dial := func(t *testing.T) *agentclient.Client {
		t.Helper()
		c, err := agentclient.Dial(context.Background(), ep, agentclient.Options{DialTimeout: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	c := dial(t)

	t.Run("calls", func(t *testing.T) {
		d, err := c.System().GuestDetails(withTimeout(t, 30*time.Second), &api.GuestDetailsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(d.GetTransport(), "vsock-unix:") {
			t.Errorf("agent transport %q, want vsock-unix:", d.GetTransport())
		}
	})
	t.Run("stdio half-close", func(t *testing.T) {
		hc := openHostConsole(t, c)
		if _, err := hc.s.Write([]byte("echo vsock-$((6*7))\n")); err != nil {
			t.Fatal(err)
		}
		hc.waitOutput(t, "vsock-42")
		// The host's input ends; the shell's output still reaches the
		// host, to its end.
		if err := hc.s.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		r, err := c.System().WaitDebugConsole(withTimeout(t, 30*time.Second), &api.WaitDebugConsoleRequest{Pid: hc.pid})
		if err != nil || r.GetExitStatus() != 129 {
			t.Errorf("WaitDebugConsole after the half-close = %v, %v; want 129 (hangup)", r, err)
		}
		if err := hc.waitEnded(t); !errors.Is(err, io.EOF) {
			t.Errorf("host read ended with %v, want EOF", err)
		}
	})
	t.Run("client close ends open streams", func(t *testing.T) {
		c2 := dial(t)
		hc := openHostConsole(t, c2)
		hc.waitOutput(t, "hull-debug# ")
		if err := c2.Close(); err != nil {
			t.Logf("close: %v", err)
		}
		if err := hc.waitEnded(t); err == nil || errors.Is(err, io.EOF) {
			t.Errorf("host read after Client.Close ended with %v, want the closed connection's error", err)
		}
		// The host's close hung the shell up.
		r, err := c.System().WaitDebugConsole(withTimeout(t, 30*time.Second), &api.WaitDebugConsoleRequest{Pid: hc.pid})
		if err != nil || r.GetExitStatus() != 129 {
			t.Errorf("WaitDebugConsole after Client.Close = %v, %v; want 129 (hangup)", r, err)
		}
	})
	t.Run("agent dies with streams open", func(t *testing.T) {
		hc := openHostConsole(t, c)
		hc.waitOutput(t, "hull-debug# ")
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Wait()
		// The connection ends (reset or EOF) without the host closing it.
		if err := hc.waitEnded(t); err == nil {
			t.Error("host read ended without an error")
		}
		if _, err := c.System().Health(withTimeout(t, 30*time.Second), &api.HealthRequest{}); err == nil {
			t.Error("Health answered by a killed agent")
		}
	})
}

// TestVsockUnavailableAtStart boots real QEMU with a vsock agent endpoint
// on this host, which has no /dev/vhost-vsock, so QEMU fails to set up the
// device: with the fallback ("auto" chose vsock) the sandbox starts over
// serial and its agent answers; without it ("vsock" configured) the start
// fails at once with ErrVsockUnavailable and QEMU's reason, leaving nothing
// behind (testConfig's leak check).
func TestVsockUnavailableAtStart(t *testing.T) {
	if _, err := os.Stat("/dev/vhost-vsock"); err == nil {
		// On a KVM host QEMU opens the device and the failure cannot be
		// provoked this way; TestVsockTransport boots over vsock there.
		t.Skip("this host has /dev/vhost-vsock: QEMU does not fail to open it; TestVsockTransport covers vsock here")
	}
	for _, tc := range []struct {
		name     string
		fallback bool
	}{
		{"auto falls back to serial", true},
		{"configured vsock fails clearly", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig(t)
			sc, err := launch.SandboxConfig(c, "vsock-fallback")
			if err != nil {
				t.Fatal(err)
			}
			// As launch sets them where /dev/vhost-vsock opens.
			sc.Transport, sc.VsockFallback = hypervisor.TransportVsock, tc.fallback
			start := time.Now()
			sb, err := sandbox.Start(withTimeout(t, 2*time.Minute), sc)
			if !tc.fallback {
				if err == nil {
					_ = sb.Stop(context.Background())
					t.Fatal("the sandbox started over vsock without vhost-vsock")
				}
				if !errors.Is(err, hypervisor.ErrVsockUnavailable) || !strings.Contains(err.Error(), "vhost-vsock") {
					t.Errorf("start error = %v, want ErrVsockUnavailable with QEMU's reason", err)
				}
				t.Logf("failed in %s: %v", time.Since(start).Round(time.Millisecond), err)
				return
			}
			if err != nil {
				t.Fatalf("starting sandbox: %v", err)
			}
			defer func() { _ = sb.Stop(context.Background()) }()
			if ep := sb.VM().Agent(); ep.Transport != hypervisor.TransportSerial {
				t.Errorf("agent endpoint %+v, want the serial fallback", ep)
			}
			d, err := sb.System().GuestDetails(withTimeout(t, time.Minute), &api.GuestDetailsRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(d.GetTransport(), "serial:") {
				t.Errorf("guest agent serves %q, want serial", d.GetTransport())
			}
		})
	}
}
