package agentclient

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/mdlayher/vsock"
	"github.com/sirupsen/logrus"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/agent"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// captureLog is a logger whose entries the test can inspect.
type captureLog struct {
	mu      sync.Mutex
	entries []*logrus.Entry
}

func (c *captureLog) Levels() []logrus.Level { return logrus.AllLevels }
func (c *captureLog) Fire(e *logrus.Entry) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries = append(c.entries, e)
	return nil
}

func (c *captureLog) entry() *log.Entry {
	l := logrus.New()
	l.Out = io.Discard
	l.Level = logrus.TraceLevel
	l.AddHook(c)
	return logrus.NewEntry(l)
}

// find waits for an entry whose message contains msg.
func (c *captureLog) find(t *testing.T, msg string) *logrus.Entry {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		for _, e := range c.entries {
			if strings.Contains(e.Message, msg) {
				c.mu.Unlock()
				return e
			}
		}
		c.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no log entry %q", msg)
	return nil
}

// testTransport reaches an agent serving outside a VM over unix sockets,
// through the host and agent code of one of a VM's transports: only the
// address family differs.
type testTransport struct {
	name string
	// listen returns the agent's listen address in dir and the endpoint
	// that reaches it.
	listen func(dir string) (string, hypervisor.AgentEndpoint)
	// detail is the prefix of the transport the agent reports in
	// GuestDetails.
	detail string
}

// testTransports are both transports: serial (one yamux session on one
// connection, as on the virtio-serial port) and vsock (one connection per
// channel, to the socket standing for the agent's vsock port).
var testTransports = []testTransport{
	{
		name: "serial",
		listen: func(dir string) (string, hypervisor.AgentEndpoint) {
			sock := filepath.Join(dir, "agent.sock")
			return "unix:" + sock, hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial, SocketPath: sock}
		},
		detail: "unix:",
	},
	{
		name: "vsock",
		listen: func(dir string) (string, hypervisor.AgentEndpoint) {
			return "vsock-unix:" + dir, hypervisor.AgentEndpoint{Transport: hypervisor.TransportVsock, Port: DefaultVsockPort, VsockUnixDir: dir}
		},
		detail: "vsock-unix:",
	},
}

// startAgent runs the agent's serving code on tr, and returns the endpoint
// and a channel that receives Serve's result.
func startAgent(t *testing.T, tr testTransport, delay time.Duration) (hypervisor.AgentEndpoint, <-chan struct{}, *error) {
	t.Helper()
	return startAgentWith(t, tr, delay, agent.ServeOptions{LogLevel: "debug"})
}

// startAgentWith is startAgent with o (its Listen is set here).
func startAgentWith(t *testing.T, tr testTransport, delay time.Duration, o agent.ServeOptions) (hypervisor.AgentEndpoint, <-chan struct{}, *error) {
	t.Helper()
	listen, ep := tr.listen(t.TempDir())
	o.Listen = listen
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var serveErr error
	go func() {
		defer close(done)
		time.Sleep(delay)
		serveErr = agent.Serve(ctx, o)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("agent did not stop")
		}
	})
	return ep, done, &serveErr
}

func TestAgentOverTransports(t *testing.T) {
	for _, tr := range testTransports {
		t.Run(tr.name, func(t *testing.T) { testAgentOver(t, tr) })
	}
}

func testAgentOver(t *testing.T, tr testTransport) {
	ep, done, serveErr := startAgent(t, tr, 200*time.Millisecond) // Dial has to wait for the socket
	ctx := context.Background()
	var logs captureLog
	c, err := Dial(ctx, ep, Options{DialTimeout: 10 * time.Second, CallTimeout: 5 * time.Second, Log: logs.entry()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()

	t.Run("health", func(t *testing.T) {
		h, err := c.System().Health(ctx, &api.HealthRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if h.GetStatus() != api.HealthResponse_STATUS_SERVING || h.GetAgentVersion() == "" || h.GetUptime().AsDuration() <= 0 {
			t.Fatalf("health = %v", h)
		}
	})
	t.Run("guest details", func(t *testing.T) {
		d, err := c.System().GuestDetails(ctx, &api.GuestDetailsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if d.GetKernelRelease() == "" || d.GetCpus() == 0 || d.GetMemoryTotalBytes() == 0 ||
			!strings.HasPrefix(d.GetTransport(), tr.detail) || d.GetBootToServe().AsDuration() <= 0 {
			t.Fatalf("details = %v", d)
		}
		// Dial's health check was the first answer, after main and serving.
		if st, sv, fa := d.GetAgentStart().AsDuration(), d.GetBootToServe().AsDuration(), d.GetFirstAnswer().AsDuration(); st <= 0 || sv < st || fa < sv {
			t.Fatalf("agent main %v, serving %v, first answer %v: want 0 < main <= serving <= first answer", st, sv, fa)
		}
	})
	t.Run("set time refused outside a VM", func(t *testing.T) {
		_, err := c.System().SetTime(ctx, &api.SetTimeRequest{Time: timestamppb.Now()})
		if !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("SetTime error = %v, want failed precondition", err)
		}
	})
	t.Run("log lines arrive", func(t *testing.T) {
		e := logs.find(t, "agent serving")
		if e.Data["source"] != "agent" || e.Level != logrus.InfoLevel || e.Data["guest.transport"] == nil || e.Data["agent_time"] == nil {
			t.Fatalf("entry = %v %v", e.Level, e.Data)
		}
		// Debug lines of the calls above come through with their fields.
		e = logs.find(t, "call failed")
		if e.Level != logrus.DebugLevel || e.Data["guest.method"] != "/hull.agent.v1.System/SetTime" {
			t.Fatalf("entry = %v %v", e.Level, e.Data)
		}
	})
	t.Run("second client", func(t *testing.T) {
		c2, err := Dial(ctx, ep, Options{DialTimeout: 5 * time.Second, NoLogStream: true})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c2.Close() }()
		if _, err := c2.System().Health(ctx, &api.HealthRequest{}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("shutdown", func(t *testing.T) {
		if _, err := c.System().Shutdown(ctx, &api.ShutdownRequest{Grace: durationpb.New(0)}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done:
			if *serveErr != nil {
				t.Fatalf("Serve = %v", *serveErr)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("agent still serving after Shutdown")
		}
	})
	if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Logf("close: %v", err)
	}
}

// silentAgent accepts connections and reads them without ever answering.
func silentAgent(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "silent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c) }()
		}
	}()
	return sock
}

func TestDialFailures(t *testing.T) {
	aborted := make(chan struct{})
	close(aborted)
	for _, tc := range []struct {
		name    string
		ep      hypervisor.AgentEndpoint
		opts    Options
		within  time.Duration
		check   func(error) bool
		message string
	}{
		{
			name:    "agent never answers",
			ep:      hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial, SocketPath: silentAgent(t)},
			opts:    Options{DialTimeout: 300 * time.Millisecond},
			within:  time.Second,
			check:   errdefs.IsDeadlineExceeded,
			message: "did not answer within 300ms",
		},
		{
			name:    "no socket",
			ep:      hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial, SocketPath: filepath.Join(t.TempDir(), "none.sock")},
			opts:    Options{DialTimeout: 200 * time.Millisecond},
			within:  time.Second,
			check:   errdefs.IsDeadlineExceeded,
			message: "no such file",
		},
		{
			name:    "vm died",
			ep:      hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial, SocketPath: silentAgent(t)},
			opts:    Options{DialTimeout: time.Minute, Abort: aborted},
			within:  time.Second,
			check:   func(err error) bool { return errors.Is(err, hypervisor.ErrVMExited) },
			message: "vm exited",
		},
		{
			name:   "unknown transport",
			ep:     hypervisor.AgentEndpoint{Transport: "tcp"},
			within: time.Second,
			check:  errdefs.IsInvalidArgument,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			c, err := Dial(context.Background(), tc.ep, tc.opts)
			if err == nil {
				_ = c.Close()
				t.Fatal("Dial succeeded")
			}
			if d := time.Since(start); d > tc.within {
				t.Errorf("Dial took %s", d)
			}
			if !tc.check(err) || !strings.Contains(err.Error(), tc.message) {
				t.Fatalf("Dial error = %v", err)
			}
		})
	}
}

// vsockLoopback reports whether AF_VSOCK loopback (vsock_loopback) works
// here, and why not.
func vsockLoopback() (bool, string) {
	l, err := vsock.Listen(0, nil)
	if err != nil {
		return false, "AF_VSOCK listen: " + err.Error()
	}
	defer func() { _ = l.Close() }()
	port := l.Addr().(*vsock.Addr).Port
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := vsock.DialContext(ctx, 1, port, nil)
	if err != nil {
		return false, "dialing VMADDR_CID_LOCAL: " + err.Error()
	}
	_ = c.Close()
	return true, ""
}

func TestAgentOverVsockLoopback(t *testing.T) {
	if ok, why := vsockLoopback(); !ok {
		t.Skipf("no AF_VSOCK loopback on this host (load vsock_loopback): %s", why)
	}
	const port = 10240
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agent.Serve(ctx, agent.ServeOptions{Listen: "vsock:10240"}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Logf("agent: %v", err)
		}
	}()
	c, err := Dial(context.Background(), hypervisor.AgentEndpoint{Transport: hypervisor.TransportVsock, CID: 1, Port: port}, Options{DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if _, err := c.System().GuestDetails(context.Background(), &api.GuestDetailsRequest{}); err != nil {
		t.Fatal(err)
	}
}
