package agent

import (
	"context"
	"testing"

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
