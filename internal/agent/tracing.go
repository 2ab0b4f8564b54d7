package agent

import (
	"context"
	"fmt"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/otelttrpc"
	"github.com/containerd/ttrpc"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	api "github.com/hull-runtime/hull/api/agent/v1"
)

// Bounds of the guest's span buffer.
const (
	// spanRingSize is how many finished spans wait for the host; beyond
	// it the oldest go.
	spanRingSize = 1024
	// maxSpansPerRead is ReadSpans' bound when the request names none.
	maxSpansPerRead = 256
	// maxSpanAttributes bounds the attributes kept per span.
	maxSpanAttributes = 32
)

// guestTracing records the spans of the calls that come with a sampled
// trace context, and keeps them for the host in a bounded ring.
type guestTracing struct {
	tp    *sdktrace.TracerProvider
	ring  *spanRing
	spans ttrpc.UnaryServerInterceptor
}

// newGuestTracing starts recording. Calls without a trace context, or
// with one the host did not sample, make no span: the host decides.
func newGuestTracing() *guestTracing {
	ring := newSpanRing(spanRingSize)
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSyncer(ring),
		sdktrace.WithResource(resource.Empty()),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.NeverSample())),
	)
	return &guestTracing{
		tp:    tp,
		ring:  ring,
		spans: otelttrpc.UnaryServerInterceptor(otelttrpc.WithTracerProvider(tp), otelttrpc.WithPropagators(propagation.TraceContext{})),
	}
}

// traceIntercept makes the call's span when tracing is on, and names the
// call's trace in its log lines.
func (a *Agent) traceIntercept(ctx context.Context, u ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, m ttrpc.Method) (any, error) {
	if a.tracing == nil {
		return m(ctx, u)
	}
	return a.tracing.spans(ctx, u, info, func(ctx context.Context, u func(any) error) (any, error) {
		if sc := trace.SpanContextFromContext(ctx); sc.IsSampled() {
			ctx = log.WithLogger(ctx, log.G(ctx).WithField("trace_id", sc.TraceID().String()))
		}
		return m(ctx, u)
	})
}

// spanRing is a span exporter that keeps the newest n finished spans.
type spanRing struct {
	mu sync.Mutex
	// spans is the ring's content, oldest first; dropped counts the spans
	// pushed out. Guarded by mu.
	spans   []*api.Span
	max     int
	dropped uint64
}

var _ sdktrace.SpanExporter = (*spanRing)(nil)

func newSpanRing(n int) *spanRing { return &spanRing{max: n} }

// ExportSpans keeps spans, pushing out the oldest beyond the bound.
func (r *spanRing) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	converted := make([]*api.Span, 0, len(spans))
	for _, s := range spans {
		converted = append(converted, toAPISpan(s))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.spans = append(r.spans, converted...)
	if over := len(r.spans) - r.max; over > 0 {
		r.dropped += uint64(over)
		r.spans = append(r.spans[:0:0], r.spans[over:]...)
	}
	return nil
}

// Shutdown is a no-op: the spans stay for the host.
func (r *spanRing) Shutdown(context.Context) error { return nil }

// take removes and returns up to n spans, oldest first.
func (r *spanRing) take(n int) ([]*api.Span, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n = min(n, len(r.spans))
	out := r.spans[:n:n]
	r.spans = r.spans[n:]
	return out, r.dropped
}

// otlpStatus is the OTLP status code (0 unset, 1 ok, 2 error: Span's
// status_code) of an OpenTelemetry status code, which numbers ok and error
// the other way round.
func otlpStatus(c codes.Code) uint32 {
	switch c {
	case codes.Ok:
		return 1
	case codes.Error:
		return 2
	}
	return 0
}

func toAPISpan(s sdktrace.ReadOnlySpan) *api.Span {
	sc, parent := s.SpanContext(), s.Parent()
	tid, sid := sc.TraceID(), sc.SpanID()
	out := &api.Span{
		TraceId:       tid[:],
		SpanId:        sid[:],
		Name:          s.Name(),
		Kind:          uint32(s.SpanKind()),
		StartUnixNano: uint64(s.StartTime().UnixNano()), //nolint:gosec // G115: the guest clock is after 1970
		EndUnixNano:   uint64(s.EndTime().UnixNano()),   //nolint:gosec // G115: as above
		StatusCode:    otlpStatus(s.Status().Code),
		StatusMessage: s.Status().Description,
	}
	if parent.SpanID().IsValid() {
		pid := parent.SpanID()
		out.ParentSpanId = pid[:]
	}
	for i, kv := range s.Attributes() {
		if i == maxSpanAttributes {
			break
		}
		out.Attributes = append(out.Attributes, &api.Attribute{Key: string(kv.Key), Value: kv.Value.String()})
	}
	return out
}

// tracingService serves the recorded spans to the host.
type tracingService struct{ a *Agent }

var _ api.TracingService = (*tracingService)(nil)

// ReadSpans hands the oldest spans over.
func (t *tracingService) ReadSpans(_ context.Context, r *api.ReadSpansRequest) (*api.ReadSpansResponse, error) {
	if t.a.tracing == nil {
		return nil, fmt.Errorf("tracing is off (the kernel command line has no hull.tracing=1): %w", errdefs.ErrFailedPrecondition)
	}
	n := int(r.GetMaxSpans())
	if n == 0 || n > maxSpansPerRead {
		n = maxSpansPerRead
	}
	spans, dropped := t.a.tracing.ring.take(n)
	return &api.ReadSpansResponse{Spans: spans, Dropped: dropped}, nil
}
