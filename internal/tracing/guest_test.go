package tracing

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	api "github.com/hull-runtime/hull/api/agent/v1"
)

// uploads is an otlptrace.Client that keeps what it is sent.
type uploads struct {
	mu  sync.Mutex
	got []*tracepb.ResourceSpans
}

func (u *uploads) Start(context.Context) error { return nil }
func (u *uploads) Stop(context.Context) error  { return nil }
func (u *uploads) UploadTraces(_ context.Context, rs []*tracepb.ResourceSpans) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.got = append(u.got, rs...)
	return nil
}

var (
	knownTrace   = trace.TraceID{0xaa, 1}
	unknownTrace = trace.TraceID{0xbb, 1}
)

func goodSpan(name string) *api.Span {
	now := uint64(time.Now().UnixNano()) //nolint:gosec // G115: after 1970
	return &api.Span{
		TraceId: knownTrace[:], SpanId: []byte{1, 2, 3, 4, 5, 6, 7, 8}, ParentSpanId: []byte{8, 7, 6, 5, 4, 3, 2, 1},
		Name: name, Kind: 2, StartUnixNano: now, EndUnixNano: now + 1000,
		Attributes: []*api.Attribute{{Key: "rpc.method", Value: "CreateSandbox"}},
	}
}

func newTestGuest() (*Guest, *uploads) {
	u := &uploads{}
	e := &Exporter{client: u}
	return e.Guest("pod-1@k8s.io", func(id trace.TraceID) bool { return id == knownTrace }), u
}

func TestGuestExportChecksSpans(t *testing.T) {
	mutate := func(f func(*api.Span)) *api.Span { s := goodSpan("x"); f(s); return s }
	for _, tc := range []struct {
		name string
		span *api.Span
		want GuestResult
	}{
		{name: "good", span: goodSpan("hull.agent.v1.Containers/CreateSandbox"), want: GuestResult{Exported: 1}},
		{name: "root span", span: mutate(func(s *api.Span) { s.ParentSpanId = nil }), want: GuestResult{Exported: 1}},
		{name: "unknown trace", span: mutate(func(s *api.Span) { s.TraceId = unknownTrace[:] }), want: GuestResult{Unknown: 1}},
		{name: "short trace id", span: mutate(func(s *api.Span) { s.TraceId = knownTrace[:8] }), want: GuestResult{Malformed: 1}},
		{name: "zero span id", span: mutate(func(s *api.Span) { s.SpanId = make([]byte, 8) }), want: GuestResult{Malformed: 1}},
		{name: "long parent id", span: mutate(func(s *api.Span) { s.ParentSpanId = make([]byte, 9) }), want: GuestResult{Malformed: 1}},
		{name: "empty name", span: mutate(func(s *api.Span) { s.Name = "" }), want: GuestResult{Malformed: 1}},
		{name: "long name", span: mutate(func(s *api.Span) { s.Name = strings.Repeat("n", maxNameLen+1) }), want: GuestResult{Malformed: 1}},
		{name: "bad kind", span: mutate(func(s *api.Span) { s.Kind = 9 }), want: GuestResult{Malformed: 1}},
		{name: "ends before it starts", span: mutate(func(s *api.Span) { s.EndUnixNano = s.StartUnixNano - 1 }), want: GuestResult{Malformed: 1}},
		{name: "lasts too long", span: mutate(func(s *api.Span) { s.EndUnixNano = s.StartUnixNano + uint64(2*time.Hour) }), want: GuestResult{Malformed: 1}},
		{name: "bad status", span: mutate(func(s *api.Span) { s.StatusCode = 3 }), want: GuestResult{Malformed: 1}},
		{name: "too many attributes", span: mutate(func(s *api.Span) {
			for range maxAttributes {
				s.Attributes = append(s.Attributes, &api.Attribute{Key: "k", Value: "v"})
			}
		}), want: GuestResult{Malformed: 1}},
		{name: "long attribute value", span: mutate(func(s *api.Span) {
			s.Attributes = []*api.Attribute{{Key: "k", Value: strings.Repeat("v", maxValueLen+1)}}
		}), want: GuestResult{Malformed: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, u := newTestGuest()
			r, err := g.Export(context.Background(), []*api.Span{tc.span})
			if err != nil {
				t.Fatal(err)
			}
			if r != tc.want {
				t.Fatalf("result %+v, want %+v", r, tc.want)
			}
			if tc.want.Exported == 0 && len(u.got) != 0 {
				t.Fatalf("uploaded %v", u.got)
			}
		})
	}
}

func TestGuestResourceIsTheHosts(t *testing.T) {
	g, u := newTestGuest()
	s := goodSpan("x")
	// A guest naming another service or sandbox in its attributes changes
	// nothing in the resource.
	s.Attributes = append(s.Attributes, &api.Attribute{Key: "service.name", Value: "containerd"}, &api.Attribute{Key: AttrSandboxID, Value: "other"})
	if _, err := g.Export(context.Background(), []*api.Span{s}); err != nil {
		t.Fatal(err)
	}
	if len(u.got) != 1 {
		t.Fatalf("uploads = %v, want one resource", u.got)
	}
	attrs := map[string]string{}
	for _, kv := range u.got[0].GetResource().GetAttributes() {
		attrs[kv.GetKey()] = kv.GetValue().GetStringValue()
	}
	if attrs["service.name"] != GuestServiceName || attrs[AttrSandboxID] != "pod-1@k8s.io" || len(attrs) != 2 {
		t.Fatalf("resource = %v, want service.name %s and %s pod-1@k8s.io only", attrs, GuestServiceName, AttrSandboxID)
	}
}

func TestGuestRateLimit(t *testing.T) {
	g, _ := newTestGuest()
	now := time.Unix(1000, 0)
	g.now = func() time.Time { return now }
	batch := make([]*api.Span, MaxGuestSpansPerRead+10)
	for i := range batch {
		batch[i] = goodSpan("x")
	}
	total := GuestResult{}
	for range GuestSpanBurst/MaxGuestSpansPerRead + 1 {
		r, err := g.Export(context.Background(), batch)
		if err != nil {
			t.Fatal(err)
		}
		total.Exported += r.Exported
		total.Limited += r.Limited
	}
	if total.Exported != GuestSpanBurst {
		t.Fatalf("exported %d at one instant, want the burst %d", total.Exported, GuestSpanBurst)
	}
	now = now.Add(time.Second)
	r, err := g.Export(context.Background(), batch)
	if err != nil {
		t.Fatal(err)
	}
	if r.Exported != GuestSpansPerSecond || r.Limited != len(batch)-GuestSpansPerSecond {
		t.Fatalf("a second later: %+v, want %d exported and the rest limited", r, GuestSpansPerSecond)
	}
}

// TestGuestByteLimit: large spans are limited by their bytes, not only by
// their number.
func TestGuestByteLimit(t *testing.T) {
	g, u := newTestGuest()
	now := time.Unix(1000, 0)
	g.now = func() time.Time { return now }
	big := func() *api.Span {
		s := goodSpan("big")
		s.Attributes = nil
		for i := range maxAttributes {
			s.Attributes = append(s.Attributes, &api.Attribute{Key: strings.Repeat("k", maxKeyLen-3) + string(rune('a'+i%26)) + "xy", Value: strings.Repeat("v", maxValueLen)})
		}
		return s
	}
	batch := make([]*api.Span, 100)
	for i := range batch {
		batch[i] = big()
	}
	sent := func() int {
		u.mu.Lock()
		defer u.mu.Unlock()
		n := 0
		for _, rs := range u.got {
			n += proto.Size(rs)
		}
		u.got = nil
		return n
	}
	r, err := g.Export(context.Background(), batch)
	if err != nil {
		t.Fatal(err)
	}
	if r.Exported == 0 || r.Limited == 0 || sent() > GuestBytesBurst+4096 {
		t.Fatalf("at one instant: %+v; want some exported, the rest limited, at most the byte burst sent", r)
	}
	now = now.Add(time.Second)
	if r, err = g.Export(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	if n := sent(); r.Exported == 0 || n > GuestBytesPerSecond+4096 {
		t.Fatalf("a second later: %+v, %d bytes sent; want at most %d", r, n, GuestBytesPerSecond)
	}
}
