package agent

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func TestSpanRingKeepsNewest(t *testing.T) {
	r := newSpanRing(3)
	var spans []sdktrace.ReadOnlySpan
	for _, name := range []string{"a", "b", "c", "d", "e"} {
		spans = append(spans, tracetest.SpanStub{Name: name}.Snapshot())
	}
	if err := r.ExportSpans(context.Background(), spans[:2]); err != nil {
		t.Fatal(err)
	}
	if err := r.ExportSpans(context.Background(), spans[2:]); err != nil {
		t.Fatal(err)
	}
	got, dropped := r.take(2)
	if len(got) != 2 || got[0].GetName() != "c" || got[1].GetName() != "d" || dropped != 2 {
		t.Fatalf("take(2) = %v, dropped %d; want c, d and 2 dropped", got, dropped)
	}
	got, _ = r.take(10)
	if len(got) != 1 || got[0].GetName() != "e" {
		t.Fatalf("take(10) = %v, want e", got)
	}
	if got, _ = r.take(10); len(got) != 0 {
		t.Fatalf("empty ring gave %v", got)
	}
}

// TestSpanStatusIsOTLP: a failed call's span reaches the host as an OTLP
// error (2), an ok one as ok (1), whatever OpenTelemetry's own numbering.
func TestSpanStatusIsOTLP(t *testing.T) {
	for code, want := range map[codes.Code]uint32{codes.Unset: 0, codes.Ok: 1, codes.Error: 2} {
		got := toAPISpan(tracetest.SpanStub{Name: "x", Status: sdktrace.Status{Code: code}}.Snapshot())
		if got.GetStatusCode() != want {
			t.Errorf("status %v: OTLP code %d, want %d", code, got.GetStatusCode(), want)
		}
	}
}
