package agentclient

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// stubSystem answers Health after delay, or with err.
type stubSystem struct {
	api.SystemService
	delay time.Duration
	err   error
}

func (s stubSystem) Health(ctx context.Context, _ *api.HealthRequest) (*api.HealthResponse, error) {
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if s.err != nil {
		return nil, errgrpc.ToGRPC(s.err)
	}
	return &api.HealthResponse{Status: api.HealthResponse_STATUS_SERVING}, nil
}

// stubClient connects a Client to a ttRPC server serving svc over a pipe.
func stubClient(t *testing.T, svc api.SystemService, callTimeout time.Duration) *Client {
	t.Helper()
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	api.RegisterSystemService(srv, svc)
	hostEnd, agentEnd := net.Pipe()
	l := &oneConnListener{c: make(chan net.Conn, 1)}
	l.c <- agentEnd
	go func() { _ = srv.Serve(context.Background(), l) }()
	t.Cleanup(func() { _ = srv.Close() })
	c := &Client{endpoint: "stub", callTimeout: callTimeout}
	c.rpc = ttrpc.NewClient(hostEnd, ttrpc.WithUnaryClientInterceptor(c.intercept))
	c.system = api.NewSystemClient(c.rpc)
	t.Cleanup(func() { _ = c.rpc.Close() })
	return c
}

type oneConnListener struct{ c chan net.Conn }

func (l *oneConnListener) Accept() (net.Conn, error) {
	c, ok := <-l.c
	if !ok {
		return nil, net.ErrClosed
	}
	return c, nil
}
func (l *oneConnListener) Close() error   { return nil }
func (l *oneConnListener) Addr() net.Addr { return &net.UnixAddr{Name: "stub"} }

func TestCallTimeout(t *testing.T) {
	for _, tc := range []struct {
		name        string
		svc         stubSystem
		callTimeout time.Duration
		ctxTimeout  time.Duration // 0: no deadline
		within      time.Duration
		check       func(error) bool
		message     string
	}{
		{
			name: "answers in time", svc: stubSystem{}, callTimeout: time.Second,
			within: time.Second, check: func(err error) bool { return err == nil },
		},
		{
			name: "client timeout applies", svc: stubSystem{delay: time.Hour}, callTimeout: 100 * time.Millisecond,
			within: time.Second, check: errdefs.IsDeadlineExceeded, message: "did not answer /hull.agent.v1.System/Health within 100ms",
		},
		{
			name: "earlier context deadline wins", svc: stubSystem{delay: time.Hour}, callTimeout: time.Hour, ctxTimeout: 100 * time.Millisecond,
			within: time.Second, check: errdefs.IsDeadlineExceeded, message: "context deadline exceeded",
		},
		{
			name: "error classes survive", svc: stubSystem{err: errdefs.ErrNotFound}, callTimeout: time.Second,
			within: time.Second, check: errdefs.IsNotFound,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := stubClient(t, tc.svc, tc.callTimeout)
			ctx := context.Background()
			if tc.ctxTimeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.ctxTimeout)
				defer cancel()
			}
			start := time.Now()
			_, err := c.System().Health(ctx, &api.HealthRequest{})
			if d := time.Since(start); d > tc.within {
				t.Errorf("call took %s", d)
			}
			if !tc.check(err) {
				t.Fatalf("error = %v", err)
			}
			if tc.message != "" && (err == nil || !strings.Contains(err.Error(), tc.message)) {
				t.Fatalf("error %q does not say %q", err, tc.message)
			}
		})
	}
}

func TestClosedConnection(t *testing.T) {
	c := stubClient(t, stubSystem{}, time.Second)
	_ = c.rpc.Close()
	_, err := c.System().Health(context.Background(), &api.HealthRequest{})
	if !errdefs.IsUnavailable(err) {
		t.Fatalf("error = %v, want unavailable", err)
	}
}

// TestInvoke: a raw call by name decodes the answer into the given message
// and goes through the client's interceptor like a typed call: the call
// timeout bounds it and agent errors come back as errdefs classes.
func TestInvoke(t *testing.T) {
	for _, tc := range []struct {
		name     string
		svc      stubSystem
		service  string
		method   string
		check    func(error) bool
		message  string
		wantResp bool
	}{
		{
			name: "answer decoded", service: "hull.agent.v1.System", method: "Health",
			check: func(err error) bool { return err == nil }, wantResp: true,
		},
		{
			name: "call timeout applies", svc: stubSystem{delay: time.Hour}, service: "hull.agent.v1.System", method: "Health",
			check: errdefs.IsDeadlineExceeded, message: "did not answer /hull.agent.v1.System/Health within 100ms",
		},
		{
			name: "agent error keeps its class", svc: stubSystem{err: errdefs.ErrNotFound}, service: "hull.agent.v1.System", method: "Health",
			check: errdefs.IsNotFound,
		},
		{
			name: "unknown method", service: "hull.agent.v1.System", method: "Nope",
			check: errdefs.IsNotImplemented, message: "Nope",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := stubClient(t, tc.svc, 100*time.Millisecond)
			resp := &api.HealthResponse{}
			// The outer bound only keeps a call that ignores the client's
			// timeout from hanging the test.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			start := time.Now()
			err := c.Invoke(ctx, tc.service, tc.method, &api.HealthRequest{}, resp)
			if d := time.Since(start); d > time.Second {
				t.Errorf("call took %s", d)
			}
			if !tc.check(err) {
				t.Fatalf("error = %v", err)
			}
			if tc.message != "" && (err == nil || !strings.Contains(err.Error(), tc.message)) {
				t.Fatalf("error %q does not say %q", err, tc.message)
			}
			if got := resp.GetStatus() == api.HealthResponse_STATUS_SERVING; got != tc.wantResp {
				t.Fatalf("response = %v, want decoded answer: %v", resp, tc.wantResp)
			}
		})
	}
}

func TestKernelParams(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ep    hypervisor.AgentEndpoint
		level string
		want  []string
	}{
		{"serial default name", hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial}, "", []string{"hull.transport=serial:agent.0"}},
		{"serial named", hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial, PortName: "agent.1"}, "debug", []string{"hull.transport=serial:agent.1", "hull.log=debug"}},
		{"vsock default port", hypervisor.AgentEndpoint{Transport: hypervisor.TransportVsock, CID: 3}, "", []string{"hull.transport=vsock:1024"}},
		{"vsock port", hypervisor.AgentEndpoint{Transport: hypervisor.TransportVsock, CID: 3, Port: 2000}, "warn", []string{"hull.transport=vsock:2000", "hull.log=warn"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := KernelParams(tc.ep, tc.level); !slices.Equal(got, tc.want) {
				t.Fatalf("KernelParams = %q, want %q", got, tc.want)
			}
		})
	}
}
