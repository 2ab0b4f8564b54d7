package agentclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/channel"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// Defaults of Options.
const (
	DefaultDialTimeout = 30 * time.Second
	DefaultCallTimeout = 30 * time.Second
)

// Options tune Dial and the calls of the returned Client.
type Options struct {
	// DialTimeout bounds Dial: connecting and the first Health answer.
	// Zero means DefaultDialTimeout.
	DialTimeout time.Duration
	// CallTimeout bounds every call whose context has no earlier
	// deadline. Zero means DefaultCallTimeout.
	CallTimeout time.Duration
	// Abort is closed when the VM has died; Dial then returns at once.
	Abort <-chan struct{}
	// Log receives the agent's log lines, with source=agent and the
	// agent's fields as guest.<key> (see relogEntry), rate-limited. Nil
	// means the logger of Dial's context.
	Log *log.Entry
	// NoLogStream leaves the agent's log where it is.
	NoLogStream bool
	// MaxStreams bounds the channels open to the agent at a time (the
	// ttRPC connection, the log stream and every stdio stream); an open
	// beyond it waits for one to close until its context ends. Each
	// channel may buffer at most one receive window of guest data (256
	// KiB on the virtio-serial transport). Zero means DefaultMaxStreams.
	MaxStreams int
	// ObserveRPC, when set, is told the method, duration and outcome of
	// every unary call (for the shim's latency histograms).
	ObserveRPC func(method string, took time.Duration, err error)
	// TracerProvider, when not nil, makes a span of every call (but the
	// reads of the guest's spans) and carries its trace context to the
	// agent in the call's metadata. Nil: no tracing.
	TracerProvider trace.TracerProvider
}

// Client is a connection to one agent. Its service clients share one ttRPC
// connection and may be used concurrently.
type Client struct {
	endpoint    string
	callTimeout time.Duration
	observe     func(method string, took time.Duration, err error)
	tr          transport
	rpc         *ttrpc.Client
	system      api.SystemService
	containers  api.ContainersService
	network     api.NetworkService
	tracing     api.TracingService
	// traces are the traces carried into the agent; nil without tracing.
	traces *traceSet

	// nextStream is the last stdio stream id handed out.
	nextStream atomic.Uint64

	// logConn is the log channel, nil without one; logs relays it.
	logConn net.Conn
	logDone chan struct{}
	logs    *logRelay

	closeOnce sync.Once
	closeErr  error
}

// Dial connects to the agent at ep and returns once the agent has answered
// a Health call. It fails with a deadline-exceeded error when the agent does
// not answer within o.DialTimeout, and with hypervisor.ErrVMExited when
// o.Abort is closed first. On error nothing is left open.
func Dial(ctx context.Context, ep hypervisor.AgentEndpoint, o Options) (_ *Client, retErr error) {
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = DefaultCallTimeout
	}
	if o.Log == nil {
		o.Log = log.G(ctx)
	}
	name := endpointString(ep)
	errTimeout := fmt.Errorf("agent at %s did not answer within %s: %w", name, o.DialTimeout, context.DeadlineExceeded)
	errAbort := fmt.Errorf("agent at %s: %w", name, hypervisor.ErrVMExited)

	dctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	dctx, cancelTimeout := context.WithTimeoutCause(dctx, o.DialTimeout, errTimeout)
	defer cancelTimeout()
	if o.Abort != nil {
		go func() {
			select {
			case <-o.Abort:
				cancel(errAbort)
			case <-dctx.Done():
			}
		}()
	}
	// failed explains a dial error: the cause of dctx when it ended,
	// with the last error met as detail.
	failed := func(last error) error {
		if dctx.Err() == nil || ctx.Err() != nil {
			return fmt.Errorf("dialing agent at %s: %w", name, last)
		}
		cause := context.Cause(dctx)
		if last == nil || errors.Is(last, cause) {
			return cause
		}
		return fmt.Errorf("%w (last error: %v)", cause, last) //nolint:errorlint // cause classifies the failure; the last dial error is detail, kept out of errors.Is
	}

	// A stream open the agent does not acknowledge within the dial
	// timeout ends the session.
	tr, err := newTransport(dctx, ep, limits{maxStreams: o.MaxStreams, openTimeout: o.DialTimeout})
	if err != nil {
		return nil, failed(err)
	}
	defer func() {
		if retErr != nil {
			tr.close()
		}
	}()
	conn, err := openChannel(dctx, tr, channel.Header{Kind: channel.KindRPC})
	if err != nil {
		return nil, failed(err)
	}
	c := &Client{endpoint: name, callTimeout: o.CallTimeout, tr: tr, observe: o.ObserveRPC}
	// The span, outermost, sees the call's errors as errdefs classes.
	var interceptors []ttrpc.UnaryClientInterceptor
	if o.TracerProvider != nil {
		c.traces = newTraceSet(maxKnownTraces)
		interceptors = append(interceptors, tracingInterceptor(o.TracerProvider, propagation.TraceContext{}, c.traces))
	}
	interceptors = append(interceptors, c.intercept)
	c.rpc = ttrpc.NewClient(conn, ttrpc.WithChainUnaryClientInterceptor(interceptors...))
	c.system = api.NewSystemClient(c.rpc)
	c.tracing = api.NewTracingClient(c.rpc)
	c.containers = api.NewContainersClient(c.rpc)
	c.network = api.NewNetworkClient(c.rpc)
	defer func() {
		if retErr != nil {
			_ = c.rpc.Close()
		}
	}()
	if err := c.waitHealth(dctx); err != nil {
		return nil, failed(err)
	}
	if !o.NoLogStream {
		lc, err := openChannel(dctx, tr, channel.Header{Kind: channel.KindLog})
		if err != nil {
			// The agent serves without its log reaching the host.
			log.G(ctx).WithError(err).WithField("agent", name).Warn("cannot stream the agent's log")
		} else {
			c.logConn, c.logDone, c.logs = lc, make(chan struct{}), newLogRelay(o.Log)
			go func() {
				defer close(c.logDone)
				c.logs.forward(lc)
			}()
		}
	}
	return c, nil
}

// SetLog sends the agent's log lines to e from now on (Options.Log): a
// sandbox that changes hands (a VM factory's warm VM adopted by a pod)
// relabels them. Without a log stream it does nothing.
func (c *Client) SetLog(e *log.Entry) {
	if c.logs != nil && e != nil {
		c.logs.to.Store(e)
	}
}

// DroppedLogLines is how many lines of the agent's log the host dropped
// because the agent logged faster than the relay's rate limit (a few
// hundred lines a second, with a burst of a thousand). Zero without a log
// stream.
func (c *Client) DroppedLogLines() uint64 {
	if c.logs == nil {
		return 0
	}
	return c.logs.Dropped()
}

// waitHealth calls Health until it answers or ctx is done.
func (c *Client) waitHealth(ctx context.Context) error {
	delay := 10 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := c.system.Health(actx, &api.HealthRequest{})
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay = min(2*delay, 200*time.Millisecond)
	}
}

// blockingMethods block until something happens in the guest: a process
// exits, a container runs out of memory. They get no CallTimeout; only
// their context ends them.
var blockingMethods = map[string]bool{
	"/hull.agent.v1.Containers/WaitProcess":  true,
	"/hull.agent.v1.Containers/WaitOOM":      true,
	"/hull.agent.v1.System/WaitDebugConsole": true,
}

// intercept gives every call but the blockingMethods the client's timeout
// unless its context ends earlier (and tells the agent the deadline), and
// turns ttRPC status errors back into errdefs classes.
func (c *Client) intercept(ctx context.Context, req *ttrpc.Request, resp *ttrpc.Response, info *ttrpc.UnaryClientInfo, invoke ttrpc.Invoker) (retErr error) {
	if c.observe != nil {
		start := time.Now()
		defer func() { c.observe(info.FullMethod, time.Since(start), retErr) }()
	}
	cctx, cancel := ctx, context.CancelFunc(func() {})
	// own: the call timeout, not the caller's deadline, bounds this call.
	own := false
	if !blockingMethods[info.FullMethod] {
		callerDL, hasCallerDL := ctx.Deadline()
		own = !hasCallerDL || time.Until(callerDL) > c.callTimeout
		cctx, cancel = context.WithTimeout(ctx, c.callTimeout)
	}
	defer cancel()
	dl, hasDL := cctx.Deadline()
	if hasDL {
		req.TimeoutNano = time.Until(dl).Nanoseconds()
	}
	err := invoke(cctx, req, resp)
	if st := resp.Status; err == nil && st != nil && st.GetCode() != int32(codes.OK) {
		err = errgrpc.ToNative(status.ErrorProto(st))
	}
	switch {
	case err == nil:
		return nil
	case own && (cctx.Err() != nil || (errdefs.IsDeadlineExceeded(err) && !time.Now().Before(dl))):
		// Our call timeout passed: the client gave up, or the agent
		// answered with the same deadline expired on its side (an agent
		// error of that class before the deadline keeps its own message).
		return fmt.Errorf("agent at %s did not answer %s within %s: %w", c.endpoint, info.FullMethod, c.callTimeout, context.DeadlineExceeded)
	case errors.Is(err, ttrpc.ErrClosed):
		return fmt.Errorf("calling %s: agent connection closed: %w", info.FullMethod, errdefs.ErrUnavailable)
	}
	return err
}

// Invoke calls method of service (its full name, "hull.agent.v1.System")
// with req and decodes the answer into resp. It is the raw call under the
// typed service clients, for tools that pick the method at run time: it
// gets the same call timeout and errdefs classes as every typed call.
func (c *Client) Invoke(ctx context.Context, service, method string, req, resp proto.Message) error {
	return c.rpc.Call(ctx, service, method, req, resp)
}

// Network is the agent's Network service.
func (c *Client) Network() api.NetworkService { return c.network }

// Tracing is the agent's Tracing service.
func (c *Client) Tracing() api.TracingService { return c.tracing }

// System is the agent's System service.
func (c *Client) System() api.SystemService { return c.system }

// Close ends the connection to the agent. It is safe to call more than once.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.closeErr = c.rpc.Close()
		if c.logConn != nil {
			_ = c.logConn.Close()
		}
		// Closing a yamux stream only half-closes it: the log reader would
		// wait for the agent's side, which a frozen guest never sends.
		// Ending the transport ends every stream at once: the yamux
		// session, or every connection of a per-channel transport (stdio
		// streams still open included).
		c.tr.close()
		if c.logConn != nil {
			<-c.logDone
		}
	})
	return c.closeErr
}

func endpointString(ep hypervisor.AgentEndpoint) string {
	switch ep.Transport {
	case hypervisor.TransportVsock:
		if ep.VsockUnixDir != "" {
			return fmt.Sprintf("vsock-unix:%s:%d", ep.VsockUnixDir, ep.Port)
		}
		return fmt.Sprintf("vsock:%d:%d", ep.CID, ep.Port)
	case hypervisor.TransportSerial:
		return "serial:" + ep.SocketPath
	}
	return string(ep.Transport)
}
