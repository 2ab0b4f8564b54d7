package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/mdlayher/vsock"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/channel"
)

// Limits of the log ring: what a host that connects late still sees.
const (
	ringLines = 4096
	ringBytes = 512 << 10
)

// Agent is one running agent: its ttRPC server, log ring and state.
type Agent struct {
	// initMode is true when the agent is PID 1 of a VM: only then does it
	// touch the clock, signal every process and power off.
	initMode  bool
	transport channel.Transport
	ring      *logRing
	reaper    *reaper
	// streams parks the stdio channels until a process claims them.
	streams    *streamTable
	containers *containerService
	// debugShell is the shell System.DebugConsole runs; empty when the
	// debug console is off (the default). Set before serving begins.
	debugShell string
	// consoles are the running debug consoles.
	consoles *consoleSet

	rpc         *ttrpc.Server
	rpcListener *connListener

	// shutdown receives the grace of the first Shutdown request.
	shutdown chan time.Duration
	// serving is closed once every module is loaded (status SERVING).
	serving     chan struct{}
	servingOnce sync.Once
	// storageReady is closed once the modules of the storage features
	// (virtio-fs, overlay) are loaded, which the sandbox's mounts need;
	// they load first among the modules that come after serving began.
	storageReady     chan struct{}
	storageReadyOnce sync.Once
	stopping         atomic.Bool
	// tracing records spans for the host; nil when off. Set before the
	// agent serves.
	tracing *guestTracing

	mu sync.Mutex
	// status of Health. Guarded by mu.
	status api.HealthResponse_Status
	// modules loaded, in load order. Guarded by mu.
	modules []string
	// features available. Guarded by mu.
	features []string
	// warnings met while starting. Guarded by mu.
	warnings []string
	// Guest clock readings of the boot's milestones (GuestDetails): main
	// began, the transport opened, the first call was answered. Guarded by mu.
	agentStart, bootToServe, firstAnswer time.Duration
}

func newAgent(initMode bool, t channel.Transport, ring *logRing) (*Agent, error) {
	a := &Agent{
		initMode:     initMode,
		transport:    t,
		ring:         ring,
		reaper:       newReaper("/proc"),
		streams:      newStreamTable(streamParkTTL),
		consoles:     newConsoleSet(),
		rpcListener:  newConnListener(),
		shutdown:     make(chan time.Duration, 1),
		serving:      make(chan struct{}),
		storageReady: make(chan struct{}),
		status:       api.HealthResponse_STATUS_STARTING,
	}
	// The span, outermost, sees the calls' errors as ttRPC statuses, and
	// the trace ID reaches every log line of the call.
	interceptors := []ttrpc.UnaryServerInterceptor{a.traceIntercept, a.intercept}
	if testHooks.interceptor != nil {
		interceptors = append(interceptors, testHooks.interceptor)
	}
	rpc, err := ttrpc.NewServer(ttrpc.WithChainUnaryServerInterceptor(interceptors...))
	if err != nil {
		return nil, fmt.Errorf("creating ttrpc server: %w", err)
	}
	api.RegisterSystemService(rpc, &systemService{a: a})
	a.containers = newContainerService(a, guestDirs)
	api.RegisterContainersService(rpc, a.containers)
	api.RegisterNetworkService(rpc, newNetworkService(initMode))
	api.RegisterTracingService(rpc, &tracingService{a: a})
	a.rpc = rpc
	return a, nil
}

// intercept is the one place every call passes through: it logs the call,
// turns a panic into an internal error, and translates errdefs classes to
// ttRPC status codes.
func (a *Agent) intercept(ctx context.Context, u ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, m ttrpc.Method) (resp any, err error) {
	start := time.Now()
	defer func() {
		if r := recover(); r != nil {
			log.G(ctx).WithField("method", info.FullMethod).Errorf("panic: %v\n%s", r, debug.Stack())
			err = fmt.Errorf("agent panic in %s: %v: %w", info.FullMethod, r, errdefs.ErrInternal)
		}
		e := log.G(ctx).WithFields(log.Fields{"method": info.FullMethod, "took": time.Since(start)})
		if err != nil {
			e.WithError(err).Debug("call failed")
			err = errgrpc.ToGRPC(err)
		} else {
			a.markAnswered()
			e.Debug("call")
		}
	}()
	return m(ctx, u)
}

// setServing records that every module is loaded.
func (a *Agent) setServing() {
	a.setStorageReady()
	a.servingOnce.Do(func() { close(a.serving) })
}

// setStorageReady records that the storage features' modules are loaded.
func (a *Agent) setStorageReady() { a.storageReadyOnce.Do(func() { close(a.storageReady) }) }

// waitStorageReady waits until the storage features' modules are loaded, at
// most limit.
func (a *Agent) waitStorageReady(ctx context.Context, limit time.Duration) error {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-a.storageReady:
		return nil
	case <-t.C:
		return fmt.Errorf("storage kernel modules still loading after %s: %w", limit, errdefs.ErrUnavailable)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (a *Agent) shuttingDown() bool { return a.stopping.Load() }

// requestShutdown records a Shutdown request; only the first one counts.
func (a *Agent) requestShutdown(grace time.Duration) {
	if a.stopping.CompareAndSwap(false, true) {
		a.shutdown <- grace
	}
}

func (a *Agent) addWarning(ctx context.Context, w string) {
	log.G(ctx).Warn(w)
	a.mu.Lock()
	a.warnings = append(a.warnings, w)
	a.mu.Unlock()
}

// servingLogDelay is how long after serving began the agent logs that it
// did. The first log line formats a timestamp and runs the logging code for
// the first time, 20-40 ms under TCG; by the delay the host's first call has
// been answered.
const servingLogDelay = time.Second

// markServing records the time from kernel start to serving, and logs it
// once the first answer is out of the way.
func (a *Agent) markServing(ctx context.Context) {
	up := uptime()
	a.mu.Lock()
	first := a.bootToServe == 0
	if first {
		a.bootToServe = up
	}
	a.mu.Unlock()
	if first {
		time.AfterFunc(servingLogDelay, func() {
			log.G(ctx).WithFields(log.Fields{"transport": a.transport.String(), "boot_to_serve": up}).Info("agent serving")
		})
	}
}

// markAnswered records the guest clock of the first call answered.
func (a *Agent) markAnswered() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.firstAnswer == 0 {
		a.firstAnswer = uptime()
	}
}

// recoverPanic keeps a panic in a helper goroutine from killing PID 1 (and
// with it the kernel). Deferred at the top of every goroutine the agent starts.
func (a *Agent) recoverPanic(ctx context.Context, what string) {
	if r := recover(); r != nil {
		log.G(ctx).Errorf("panic in %s: %v\n%s", what, r, debug.Stack())
	}
}

// uptime is the time since the kernel booted (CLOCK_BOOTTIME, the clock of
// /proc/uptime).
func uptime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// ServeOptions configure Serve.
type ServeOptions struct {
	// Listen is "unix:<path>", where every connection is a yamux session
	// as on the virtio-serial port, "vsock:<port>", or "vsock-unix:<dir>",
	// where every connection to the socket channel.VsockUnixSocket(dir,
	// channel.DefaultVsockPort) is one channel, as on vsock (the same
	// channel server, reached over unix sockets on hosts without vsock).
	Listen string
	// LogLevel is a logrus level name; empty means info.
	LogLevel string
	// Console receives the text log at info level and above.
	Console io.Writer
	// DebugConsole lets the agent serve System.DebugConsole, which in a VM
	// the kernel command line enables (hull.debug_console=1).
	DebugConsole bool
	// DebugShell is the shell DebugConsole runs; empty means
	// channel.DebugShellPath.
	DebugShell string
	// Tracing records the spans of calls that carry a sampled trace
	// context, for Tracing.ReadSpans (in a VM: hull.tracing=1).
	Tracing bool
}

// Serve runs the agent's serving code outside a VM: no mounts, no modules,
// no clock changes, no power off. It returns when ctx is done or a Shutdown
// request was served.
func Serve(ctx context.Context, o ServeOptions) error {
	start := uptime()
	level := logrus.InfoLevel
	if o.LogLevel != "" {
		l, err := logrus.ParseLevel(o.LogLevel)
		if err != nil {
			return fmt.Errorf("log level %q: %w", o.LogLevel, errdefs.ErrInvalidArgument)
		}
		level = l
	}
	if o.Console == nil {
		o.Console = io.Discard
	}
	ring := newLogRing(ringLines, ringBytes)
	ctx = log.WithLogger(ctx, logrus.NewEntry(newLogger(o.Console, ring, level)))

	kind, addr, _ := strings.Cut(o.Listen, ":")
	var (
		l     net.Listener
		t     channel.Transport
		serve func(*Agent, context.Context, net.Listener) error
	)
	switch kind {
	case "unix":
		if addr == "" {
			return fmt.Errorf("listen %q: empty path: %w", o.Listen, errdefs.ErrInvalidArgument)
		}
		if err := os.Remove(addr); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing stale socket: %w", err)
		}
		ul, err := net.Listen("unix", addr)
		if err != nil {
			return fmt.Errorf("listening: %w", err)
		}
		l, t, serve = ul, channel.Transport{Kind: "unix", PortName: addr}, (*Agent).serveSessions
	case channel.TransportVsock:
		vt, err := channel.ParseTransport(o.Listen)
		if err != nil {
			return err
		}
		vl, err := vsock.Listen(vt.Port, nil)
		if err != nil {
			return fmt.Errorf("listening: %w", err)
		}
		l, t, serve = vl, vt, (*Agent).serveChannels
	case channel.TransportVsockUnix:
		if addr == "" {
			return fmt.Errorf("listen %q: empty directory: %w", o.Listen, errdefs.ErrInvalidArgument)
		}
		sock := channel.VsockUnixSocket(addr, channel.DefaultVsockPort)
		if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing stale socket: %w", err)
		}
		ul, err := net.Listen("unix", sock)
		if err != nil {
			return fmt.Errorf("listening: %w", err)
		}
		l, t, serve = ul, channel.Transport{Kind: kind, PortName: addr}, (*Agent).serveChannels
	default:
		return fmt.Errorf("listen %q: want unix:<path>, vsock:<port> or vsock-unix:<dir>: %w", o.Listen, errdefs.ErrInvalidArgument)
	}
	defer func() { _ = l.Close() }()

	a, err := newAgent(false, t, ring)
	if err != nil {
		return err
	}
	a.agentStart = start
	if o.Tracing {
		a.tracing = newGuestTracing()
	}
	if o.DebugConsole {
		a.debugShell = o.DebugShell
		if a.debugShell == "" {
			a.debugShell = channel.DebugShellPath
		}
	}
	// Last out: the consoles' shells are children of this process.
	defer a.consoles.endAll(ctx, consoleKillDelay+time.Second)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go a.reaper.run(ctx)
	go func() { _ = a.rpc.Serve(ctx, a.rpcListener) }()
	defer func() { _ = a.rpc.Close() }()
	a.mu.Lock()
	a.status = api.HealthResponse_STATUS_SERVING
	a.mu.Unlock()
	a.setServing()
	a.markServing(ctx)

	errc := make(chan error, 1)
	go func() { errc <- serve(a, ctx, l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return nil
	case <-a.shutdown:
		log.G(ctx).Info("shutdown requested")
		// Let the reply leave before the sessions close.
		time.Sleep(100 * time.Millisecond)
		return nil
	}
}
