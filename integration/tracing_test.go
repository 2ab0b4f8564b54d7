package integration

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/sandbox"
	"github.com/hull-runtime/hull/internal/tracing"
)

// TestSandboxTracing boots a sandbox with tracing on, exporting over
// OTLP/HTTP to a real OpenTelemetry Collector, inside a trace of the test's
// own, and checks what the collector got: the boot steps under the
// sandbox's span, and the agent's spans from the guest under the host's
// calls that carried them, stopping included (the last spans are shipped
// before the guest shuts down).
func TestSandboxTracing(t *testing.T) {
	col := e2e.StartCollector(t)
	exp, err := tracing.New(context.Background(), config.Tracing{Enabled: true, Endpoint: col.HTTP, Protocol: "http", SamplingRatio: 1}, "hull-it")
	if err != nil {
		t.Fatal(err)
	}
	c := testConfig(t)
	sc, err := launch.SandboxConfig(c, "traced")
	if err != nil {
		t.Fatal(err)
	}
	sc.Tracing = exp
	ctx, root := exp.TracerProvider().Tracer("test").Start(withTimeout(t, 3*time.Minute), "test")
	sb, err := sandbox.Start(ctx, sc)
	if err != nil {
		t.Fatalf("starting sandbox: %v", err)
	}
	if err := sb.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	root.End()
	if err := exp.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	tid := root.SpanContext().TraceID()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err = checkSandboxTrace(col.Spans(t), tid, root.SpanContext().SpanID())
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		for _, s := range col.Spans(t) {
			t.Logf("%s %s trace %s span %s parent %s", s.Service, s.Name, s.TraceID, s.SpanID, s.ParentID)
		}
		t.Fatal(err)
	}
}

func checkSandboxTrace(spans []e2e.Span, tid trace.TraceID, root trace.SpanID) error {
	byID := map[string]e2e.Span{}
	for _, s := range spans {
		if s.TraceID == tid.String() {
			byID[s.SpanID] = s
		}
	}
	find := func(service, name, parent string) (e2e.Span, error) {
		for _, s := range byID {
			if s.Service == service && s.Name == name && s.ParentID == parent {
				return s, nil
			}
		}
		return e2e.Span{}, fmt.Errorf("no %s span %q under span %s in trace %s", service, name, parent, tid)
	}
	start, err := find("hull-it", "sandbox start", root.String())
	if err != nil {
		return err
	}
	// guestUnder checks that the guest served method under the host's
	// client span of it, which parent made.
	guestUnder := func(method, parent string) error {
		client, err := find("hull-it", method, parent)
		if err != nil {
			return err
		}
		g, err := find(tracing.GuestServiceName, method, client.SpanID)
		if err != nil {
			return err
		}
		if g.Resource[tracing.AttrSandboxID] != "traced" {
			return fmt.Errorf("guest span %s has resource %v, want sandbox traced", method, g.Resource)
		}
		return nil
	}
	var errs []error
	for _, step := range []struct{ name, guest string }{
		{"create vm", ""},
		{"start vm", ""},
		{"connect to agent", "hull.agent.v1.System/Health"},
		{"set guest time", "hull.agent.v1.System/SetTime"},
		{"create guest sandbox", "hull.agent.v1.Containers/CreateSandbox"},
	} {
		s, err := find("hull-it", step.name, start.SpanID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if step.guest != "" {
			errs = append(errs, guestUnder(step.guest, s.SpanID))
		}
	}
	// Stop's last call before the shutdown, shipped by its final read.
	errs = append(errs, guestUnder("hull.agent.v1.Containers/DestroySandbox", root.String()))
	// The sandbox's background waits join no trace.
	for _, s := range byID {
		if s.Name == "hull.agent.v1.Containers/WaitOOM" {
			errs = append(errs, fmt.Errorf("the background wait %s joined the start's trace", s.Name))
		}
	}
	return errors.Join(errs...)
}
