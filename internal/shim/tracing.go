package shim

import (
	"context"
	"sync"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/log"
	"github.com/containerd/otelttrpc"
	"github.com/containerd/ttrpc"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/hull-runtime/hull/internal/tracing"
)

// serviceName is the service.name of the shim's spans.
const serviceName = "containerd-shim-hull-v2"

// createMethod is the call whose runtime options name the configuration.
const createMethod = "/containerd.task.v2.Task/Create"

// flushTimeout bounds the export of the last spans when the shim exits.
const flushTimeout = 5 * time.Second

// shimTracing is the shim's tracing, set up from the configuration of its
// first create.
type shimTracing struct {
	mu sync.Mutex
	// decided is set once a create's configuration was read; exporter and
	// spans (the interceptor that makes a span of each call) are nil when
	// it turned tracing off. Guarded by mu.
	decided  bool
	exporter *tracing.Exporter
	spans    ttrpc.UnaryServerInterceptor
}

// intercept makes a span of each task API call when tracing is on (joining
// the trace containerd sent in the call's metadata), and gives the call's
// logger the sandbox, the container and the trace ID.
func (s *service) intercept(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (any, error) {
	// Every task API request carries the container's ID as field 1.
	var idOnly taskapi.PidsRequest
	_ = unmarshal(&idOnly)
	if info.FullMethod == createMethod {
		s.setupTracing(unmarshal)
	}
	inner := func(ctx context.Context, u func(any) error) (any, error) {
		if idOnly.ID != "" {
			trace.SpanFromContext(ctx).SetAttributes(attribute.String("hull.container.id", idOnly.ID))
		}
		ctx = tracing.WithRequestLog(ctx, idOnly.ID)
		s.mu.Lock()
		sb := s.sandboxID
		s.mu.Unlock()
		if sb != "" {
			ctx = log.WithLogger(ctx, log.G(ctx).WithField(tracing.LogSandbox, sb))
		}
		return method(ctx, u)
	}
	s.tracing.mu.Lock()
	spans := s.tracing.spans
	s.tracing.mu.Unlock()
	if spans == nil {
		return inner(ctx, unmarshal)
	}
	return spans(ctx, unmarshal, info, inner)
}

// setupTracing reads the configuration a create's runtime options name and
// starts the exporter when it turns tracing on. It decides once per shim
// (each shim serves one pod); a create whose configuration does not load
// fails on its own and leaves the decision to the next.
func (s *service) setupTracing(unmarshal ttrpc.Unmarshaler) {
	t := &s.tracing
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.decided {
		return
	}
	var r taskapi.CreateTaskRequest
	if err := unmarshal(&r); err != nil {
		return
	}
	cfg, err := loadConfig(r.Options)
	if err != nil {
		return
	}
	t.decided = true
	if !cfg.Tracing.Enabled {
		return
	}
	e, err := tracing.New(s.bg, cfg.Tracing, serviceName)
	if err != nil {
		log.G(s.bg).WithError(err).Warn("tracing stays off")
		return
	}
	t.exporter = e
	t.spans = otelttrpc.UnaryServerInterceptor(otelttrpc.WithTracerProvider(e.TracerProvider()), otelttrpc.WithPropagators(tracing.Propagator))
	s.shutdown.RegisterCallback(func(ctx context.Context) error {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), flushTimeout)
		defer cancel()
		return e.Shutdown(fctx)
	})
}

// tracingExporter is the shim's exporter, nil when tracing is off.
func (s *service) tracingExporter() *tracing.Exporter {
	s.tracing.mu.Lock()
	defer s.tracing.mu.Unlock()
	return s.tracing.exporter
}
