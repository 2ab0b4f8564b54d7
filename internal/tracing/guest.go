package tracing

import (
	"context"
	"fmt"
	"sync"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/trace"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	api "github.com/hull-runtime/hull/api/agent/v1"
)

// Bounds of what a guest's spans may hold.
const (
	// GuestSpanBurst and GuestSpansPerSecond rate-limit each sandbox's
	// guest spans: a burst, refilled at a steady rate; spans beyond it
	// are dropped.
	GuestSpanBurst      = 1024
	GuestSpansPerSecond = 256
	// GuestBytesBurst and GuestBytesPerSecond bound the same in bytes
	// (each span's OTLP encoding): at most 64 KiB a second of guest spans
	// per sandbox reach the collector, whatever their size.
	GuestBytesBurst     = 512 << 10
	GuestBytesPerSecond = 64 << 10
	// MaxGuestSpansPerRead is the most spans taken from one read.
	MaxGuestSpansPerRead = 256
	maxNameLen           = 256
	maxAttributes        = 32
	maxKeyLen            = 128
	maxValueLen          = 1024
	maxStatusLen         = 1024
	// maxSpanDuration bounds a span's length; a longer one is malformed.
	maxSpanDuration = time.Hour
)

// Guest takes the spans the agent of one sandbox recorded and exports them
// with the host's spans. Everything in them is the guest's word, so it
// bounds how many it takes (per read and per second), drops malformed ones,
// accepts only spans of traces that the host carried into that agent
// (known), and sets their resource itself: service.name hull-agent and the
// sandbox's ID, whatever the guest says.
type Guest struct {
	e     *Exporter
	res   *resourcepb.Resource
	known func(trace.TraceID) bool
	now   func() time.Time

	mu sync.Mutex
	// tokens and bytes are the rate limits' buckets, refilled since last;
	// guarded by mu.
	tokens, bytes float64
	last          time.Time
}

// Guest returns the relay of the sandbox sandboxID's guest spans. known
// reports whether the host sent a call of the trace into that sandbox's
// agent.
func (e *Exporter) Guest(sandboxID string, known func(trace.TraceID) bool) *Guest {
	str := func(k, v string) *commonpb.KeyValue {
		return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
	}
	return &Guest{
		e: e,
		res: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{
			str("service.name", GuestServiceName),
			str(AttrSandboxID, sandboxID),
		}},
		known:  known,
		now:    time.Now,
		tokens: GuestSpanBurst,
		bytes:  GuestBytesBurst,
	}
}

// GuestResult says what became of a batch of guest spans.
type GuestResult struct {
	// Exported spans went to the collector (or failed to, with Export's
	// error).
	Exported int
	// Malformed spans broke a bound or the trace model; Unknown ones were
	// of a trace the host did not carry into the guest; Limited ones came
	// beyond the rate limit or the bound of a read.
	Malformed, Unknown, Limited int
}

// Export checks spans and exports those that pass.
func (g *Guest) Export(ctx context.Context, spans []*api.Span) (GuestResult, error) {
	var r GuestResult
	if len(spans) > MaxGuestSpansPerRead {
		r.Limited += len(spans) - MaxGuestSpansPerRead
		spans = spans[:MaxGuestSpansPerRead]
	}
	allowed := g.take(len(spans))
	r.Limited += len(spans) - allowed
	out := make([]*tracepb.Span, 0, allowed)
	for _, s := range spans[:allowed] {
		ps, err := convert(s)
		if err != nil {
			r.Malformed++
			continue
		}
		if !g.known(trace.TraceID(ps.TraceId)) {
			r.Unknown++
			continue
		}
		if !g.takeBytes(proto.Size(ps)) {
			r.Limited++
			continue
		}
		out = append(out, ps)
	}
	r.Exported = len(out)
	if len(out) == 0 {
		return r, nil
	}
	return r, g.e.export(ctx, g.res, out)
}

// take draws up to n tokens from the rate limit and returns how many it got.
func (g *Guest) take(n int) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.refill()
	got := min(n, int(g.tokens))
	g.tokens -= float64(got)
	return got
}

// takeBytes draws n bytes from the byte limit, or nothing when fewer are
// left.
func (g *Guest) takeBytes(n int) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.refill()
	if float64(n) > g.bytes {
		return false
	}
	g.bytes -= float64(n)
	return true
}

// refill adds to both buckets what the time since the last draw earned;
// the caller holds mu.
func (g *Guest) refill() {
	now := g.now()
	if !g.last.IsZero() {
		d := now.Sub(g.last).Seconds()
		g.tokens = min(GuestSpanBurst, g.tokens+d*GuestSpansPerSecond)
		g.bytes = min(GuestBytesBurst, g.bytes+d*GuestBytesPerSecond)
	}
	g.last = now
}

// convert checks one guest span and turns it into OTLP's form.
func convert(s *api.Span) (*tracepb.Span, error) {
	switch {
	case len(s.GetTraceId()) != 16 || !trace.TraceID(s.GetTraceId()).IsValid():
		return nil, fmt.Errorf("bad trace id")
	case len(s.GetSpanId()) != 8 || !trace.SpanID(s.GetSpanId()).IsValid():
		return nil, fmt.Errorf("bad span id")
	case len(s.GetParentSpanId()) != 0 && (len(s.GetParentSpanId()) != 8 || !trace.SpanID(s.GetParentSpanId()).IsValid()):
		return nil, fmt.Errorf("bad parent span id")
	case !text(s.GetName(), maxNameLen) || s.GetName() == "":
		return nil, fmt.Errorf("bad name")
	case s.GetKind() > uint32(tracepb.Span_SPAN_KIND_CONSUMER):
		return nil, fmt.Errorf("bad kind")
	case s.GetStartUnixNano() == 0 || s.GetEndUnixNano() < s.GetStartUnixNano() ||
		s.GetEndUnixNano()-s.GetStartUnixNano() > uint64(maxSpanDuration):
		return nil, fmt.Errorf("bad times")
	case s.GetStatusCode() > uint32(tracepb.Status_STATUS_CODE_ERROR) || !text(s.GetStatusMessage(), maxStatusLen):
		return nil, fmt.Errorf("bad status")
	case len(s.GetAttributes()) > maxAttributes:
		return nil, fmt.Errorf("too many attributes")
	}
	attrs := make([]*commonpb.KeyValue, 0, len(s.GetAttributes()))
	for _, a := range s.GetAttributes() {
		if a.GetKey() == "" || !text(a.GetKey(), maxKeyLen) || !text(a.GetValue(), maxValueLen) {
			return nil, fmt.Errorf("bad attribute")
		}
		attrs = append(attrs, &commonpb.KeyValue{Key: a.GetKey(), Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: a.GetValue()}}})
	}
	return &tracepb.Span{
		TraceId:           s.GetTraceId(),
		SpanId:            s.GetSpanId(),
		ParentSpanId:      s.GetParentSpanId(),
		Name:              s.GetName(),
		Kind:              tracepb.Span_SpanKind(s.GetKind()),
		StartTimeUnixNano: s.GetStartUnixNano(),
		EndTimeUnixNano:   s.GetEndUnixNano(),
		Attributes:        attrs,
		Status:            &tracepb.Status{Code: tracepb.Status_StatusCode(s.GetStatusCode()), Message: s.GetStatusMessage()},
	}, nil
}

// text reports whether s is valid UTF-8 of at most max bytes.
func text(s string, max int) bool { return len(s) <= max && utf8.ValidString(s) }
