package agentclient

import (
	"context"
	"sync"

	"github.com/containerd/otelttrpc"
	"github.com/containerd/ttrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// readSpansMethod is the call that fetches the guest's spans: never traced
// itself, or each read would leave a span for the next one.
const readSpansMethod = "/hull.agent.v1.Tracing/ReadSpans"

// maxKnownTraces bounds the traces a client remembers having carried into
// the guest: the guest's spans of older ones are refused.
const maxKnownTraces = 1024

// traceSet is a bounded set of trace IDs, the oldest forgotten first.
type traceSet struct {
	mu sync.Mutex
	// ids and order (a ring, next the slot to overwrite) are guarded by mu.
	ids   map[trace.TraceID]struct{}
	order []trace.TraceID
	next  int
}

func newTraceSet(n int) *traceSet {
	return &traceSet{ids: make(map[trace.TraceID]struct{}, n), order: make([]trace.TraceID, 0, n)}
}

func (s *traceSet) add(id trace.TraceID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.ids[id]; ok {
		return
	}
	if len(s.order) < cap(s.order) {
		s.order = append(s.order, id)
	} else {
		delete(s.ids, s.order[s.next])
		s.order[s.next] = id
		s.next = (s.next + 1) % len(s.order)
	}
	s.ids[id] = struct{}{}
}

func (s *traceSet) has(id trace.TraceID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.ids[id]
	return ok
}

// tracingInterceptor makes a client span for every call made within a
// trace (its context has a span) but readSpansMethod, and carries its
// context to the agent in the call's metadata (traceparent); the traces of
// sampled calls are remembered in known. Calls outside any trace (the
// background loops' waits) make no root span.
func tracingInterceptor(tp trace.TracerProvider, prop propagation.TextMapPropagator, known *traceSet) ttrpc.UnaryClientInterceptor {
	otelIntercept := otelttrpc.UnaryClientInterceptor(otelttrpc.WithTracerProvider(tp), otelttrpc.WithPropagators(prop))
	record := func(ctx context.Context, req *ttrpc.Request, resp *ttrpc.Response, info *ttrpc.UnaryClientInfo, invoke ttrpc.Invoker) error {
		if sc := trace.SpanContextFromContext(ctx); sc.IsSampled() {
			known.add(sc.TraceID())
		}
		return invoke(ctx, req, resp)
	}
	return func(ctx context.Context, req *ttrpc.Request, resp *ttrpc.Response, info *ttrpc.UnaryClientInfo, invoke ttrpc.Invoker) error {
		if info.FullMethod == readSpansMethod || !trace.SpanContextFromContext(ctx).IsValid() {
			return invoke(ctx, req, resp)
		}
		return otelIntercept(ctx, req, resp, info, func(ctx context.Context, req *ttrpc.Request, resp *ttrpc.Response) error {
			return record(ctx, req, resp, info, invoke)
		})
	}
}

// KnownTrace reports whether the client carried a sampled call of trace id
// into the agent (among the last maxKnownTraces traces). Always false
// without Options.TracerProvider.
func (c *Client) KnownTrace(id trace.TraceID) bool {
	return c.traces != nil && c.traces.has(id)
}
