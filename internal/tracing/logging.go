package tracing

import (
	"context"

	"github.com/containerd/log"
	"go.opentelemetry.io/otel/trace"
)

// Log fields that tie a log line to a request.
const (
	LogTraceID   = "trace_id"
	LogContainer = "container"
	LogSandbox   = "sandbox"
)

// requestFields are the fields of one request that WithRequestLog adds and
// WithoutRequestLog removes.
var requestFields = []string{LogTraceID, LogContainer}

// WithRequestLog returns ctx with a logger that names the request's
// container (when not empty) and the trace of ctx's span (when it has one).
func WithRequestLog(ctx context.Context, container string) context.Context {
	fields := log.Fields{}
	if container != "" {
		fields[LogContainer] = container
	}
	if sc := trace.SpanContextFromContext(ctx); sc.HasTraceID() {
		fields[LogTraceID] = sc.TraceID().String()
	}
	if len(fields) == 0 {
		return ctx
	}
	return log.WithLogger(ctx, log.G(ctx).WithFields(fields))
}

// WithoutRequestLog returns ctx with its logger stripped of the fields
// WithRequestLog adds: for work that outlives the request.
func WithoutRequestLog(ctx context.Context) context.Context {
	e := log.G(ctx)
	drop := false
	for _, f := range requestFields {
		if _, ok := e.Data[f]; ok {
			drop = true
		}
	}
	if !drop {
		return ctx
	}
	e = e.Dup()
	for _, f := range requestFields {
		delete(e.Data, f)
	}
	return log.WithLogger(ctx, e)
}
