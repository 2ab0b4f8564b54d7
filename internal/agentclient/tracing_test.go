package agentclient

import (
	"context"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/agent"
)

func TestTraceContextReachesAgent(t *testing.T) {
	ep, _, _ := startAgentWith(t, testTransports[0], 0, agent.ServeOptions{Tracing: true})
	host := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(host))
	ctx := context.Background()
	c, err := Dial(ctx, ep, Options{DialTimeout: 10 * time.Second, CallTimeout: 5 * time.Second, TracerProvider: tp, NoLogStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	pctx, parent := tp.Tracer("test").Start(ctx, "pod start")
	if _, err := c.System().Health(pctx, &api.HealthRequest{}); err != nil {
		t.Fatal(err)
	}
	parent.End()
	// A call in an unsampled trace leaves no span in the guest.
	unsampled := trace.ContextWithSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1},
	}))
	if _, err := c.System().Health(unsampled, &api.HealthRequest{}); err != nil {
		t.Fatal(err)
	}
	// Nor does a call outside any trace, on either side.
	if _, err := c.System().Health(ctx, &api.HealthRequest{}); err != nil {
		t.Fatal(err)
	}

	resp, err := c.Tracing().ReadSpans(ctx, &api.ReadSpansRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var client sdktrace.ReadOnlySpan
	for _, s := range host.GetSpans().Snapshots() {
		if s.Name() == "hull.agent.v1.System/Health" && s.Parent().SpanID() == parent.SpanContext().SpanID() {
			client = s
		}
		if s.Name() == "hull.agent.v1.Tracing/ReadSpans" {
			t.Errorf("reading the guest's spans made a span on the host")
		}
		if !s.Parent().IsValid() && s.Name() != "pod start" {
			t.Errorf("a call outside any trace made the root span %s on the host", s.Name())
		}
	}
	if client == nil {
		t.Fatalf("no client span of Health under the parent on the host: %v", host.GetSpans())
	}
	if len(resp.GetSpans()) != 1 {
		t.Fatalf("guest spans = %v, want the one of the sampled Health call", resp.GetSpans())
	}
	g := resp.GetSpans()[0]
	tid, csid := parent.SpanContext().TraceID(), client.SpanContext().SpanID()
	if trace.TraceID(g.GetTraceId()) != tid || trace.SpanID(g.GetParentSpanId()) != csid ||
		g.GetName() != "hull.agent.v1.System/Health" || g.GetKind() != uint32(trace.SpanKindServer) ||
		g.GetEndUnixNano() < g.GetStartUnixNano() {
		t.Fatalf("guest span %v: want trace %s, parent %s (the host's client span), server kind", g, tid, csid)
	}
	if !c.KnownTrace(tid) {
		t.Errorf("the client does not know the trace it carried into the agent")
	}
	if c.KnownTrace(trace.TraceID{1}) || c.KnownTrace(trace.TraceID{2}) {
		t.Errorf("the client knows a trace it did not sample")
	}
}

func TestReadSpansWithoutTracing(t *testing.T) {
	ep, _, _ := startAgent(t, testTransports[0], 0)
	ctx := context.Background()
	c, err := Dial(ctx, ep, Options{DialTimeout: 10 * time.Second, CallTimeout: 5 * time.Second, NoLogStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if _, err := c.Tracing().ReadSpans(ctx, &api.ReadSpansRequest{}); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("ReadSpans error = %v, want failed precondition", err)
	}
}

func TestTraceSetForgetsOldest(t *testing.T) {
	s := newTraceSet(2)
	a, b, c := trace.TraceID{1}, trace.TraceID{2}, trace.TraceID{3}
	s.add(a)
	s.add(b)
	s.add(b)
	s.add(c)
	if s.has(a) || !s.has(b) || !s.has(c) {
		t.Fatalf("after a, b, c in a set of 2: has a %v, b %v, c %v; want false, true, true", s.has(a), s.has(b), s.has(c))
	}
}
