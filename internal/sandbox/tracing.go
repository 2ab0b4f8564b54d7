package sandbox

import (
	"context"
	"time"

	"github.com/containerd/log"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/tracing"
)

// spanReadInterval is how often a traced sandbox fetches its guest's spans.
const spanReadInterval = time.Second

// spanWarnInterval spaces the warnings about dropped guest spans;
// finalSpanTimeout bounds the last read and export of them at Stop.
const (
	spanWarnInterval = time.Minute
	finalSpanTimeout = 3 * time.Second
)

// tracerName names the sandbox's spans' instrumentation scope.
const tracerName = "github.com/hull-runtime/hull/internal/sandbox"

// tracer returns the tracer of the sandbox's spans: a no-op one without
// tracing.
func tracer(e *tracing.Exporter) trace.Tracer {
	if e == nil {
		return noop.NewTracerProvider().Tracer(tracerName)
	}
	return e.TracerProvider().Tracer(tracerName)
}

// endSpan records err on span and ends it.
func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// sandboxAttr tags a span with the sandbox's ID.
func sandboxAttr(id string) attribute.KeyValue { return attribute.String(tracing.AttrSandboxID, id) }

// relaySpans fetches the guest's spans every spanReadInterval until ctx
// ends, and exports them through g.
func (s *Sandbox) relaySpans(ctx context.Context, g *tracing.Guest) {
	t := time.NewTicker(spanReadInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.shipSpans(ctx, g)
	}
}

// shipSpans reads one batch of the guest's spans and exports it.
func (s *Sandbox) shipSpans(ctx context.Context, g *tracing.Guest) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := s.client.Tracing().ReadSpans(rctx, &agent.ReadSpansRequest{MaxSpans: tracing.MaxGuestSpansPerRead})
	if err != nil {
		log.G(ctx).WithError(err).WithField("sandbox", s.id).Debug("reading the guest's spans")
		return
	}
	// Spans read out of the guest are exported even when the relay stops
	// meanwhile: they exist nowhere else (the export has its own bound).
	// Only the stop's last batch is bounded by its caller's deadline.
	ectx := context.WithoutCancel(ctx)
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ectx, cancel = context.WithDeadline(ectx, dl)
		defer cancel()
	}
	r, err := g.Export(ectx, resp.GetSpans())
	s.spanDrops.Malformed += r.Malformed
	s.spanDrops.Unknown += r.Unknown
	s.spanDrops.Limited += r.Limited
	// What the guest sends decides how often this would log: at most a
	// line a minute, with the totals so far.
	if (err == nil && r.Malformed+r.Unknown+r.Limited == 0) || time.Since(s.spanWarned) < spanWarnInterval {
		return
	}
	s.spanWarned = time.Now()
	e := log.G(ctx).WithFields(log.Fields{
		"sandbox": s.id, "malformed_total": s.spanDrops.Malformed, "unknown_trace_total": s.spanDrops.Unknown, "limited_total": s.spanDrops.Limited,
	})
	if err != nil {
		e.WithError(err).Warn("exporting the guest's spans")
	} else {
		e.Warn("dropped guest spans")
	}
}

// startRelay starts the loop that exports the guest's spans.
func (s *Sandbox) startRelay(e *tracing.Exporter) {
	s.guestSpans = e.Guest(s.id, s.client.KnownTrace)
	ctx, cancel := context.WithCancel(s.bg)
	s.stopRelay, s.relayDone = cancel, make(chan struct{})
	go func() {
		defer close(s.relayDone)
		s.relaySpans(ctx, s.guestSpans)
	}()
}

// endRelay stops the relay loop, if it runs, and waits for it.
func (s *Sandbox) endRelay() {
	if s.stopRelay == nil {
		return
	}
	s.stopRelay()
	<-s.relayDone
}
