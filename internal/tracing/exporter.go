package tracing

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"time"

	"github.com/containerd/errdefs"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/version"
)

// Resource attribute keys hull sets.
const (
	// AttrSandboxID names the sandbox (its host-side ID) a span belongs
	// to; the host sets it on every guest span.
	AttrSandboxID = "hull.sandbox.id"
	// GuestServiceName is the service.name of the agent's spans.
	GuestServiceName = "hull-agent"
)

// exportTimeout bounds one upload to the collector.
const exportTimeout = 10 * time.Second

// Propagator is how trace context travels in ttRPC metadata: W3C trace
// context, as containerd sends it to shims.
var Propagator propagation.TextMapPropagator = propagation.TraceContext{}

// Exporter records spans and sends them to the configured collector. Its
// zero value is not usable; a nil *Exporter means tracing is off.
type Exporter struct {
	tp     *sdktrace.TracerProvider
	client otlptrace.Client
}

// New makes an Exporter for cfg, which must be enabled, naming the process
// as service. It does not wait for the collector: spans that cannot be
// sent are dropped and the SDK logs why.
func New(ctx context.Context, cfg config.Tracing, service string) (*Exporter, error) {
	if !cfg.Enabled {
		return nil, fmt.Errorf("tracing is disabled: %w", errdefs.ErrFailedPrecondition)
	}
	var client otlptrace.Client
	switch cfg.Protocol {
	case "grpc":
		client = otlptracegrpc.NewClient(otlptracegrpc.WithEndpointURL(cfg.Endpoint), otlptracegrpc.WithTimeout(exportTimeout))
	case "http":
		endpoint, err := url.Parse(cfg.Endpoint)
		if err != nil {
			return nil, fmt.Errorf("tracing endpoint %q: %w: %w", cfg.Endpoint, err, errdefs.ErrInvalidArgument)
		}
		if endpoint.Path == "" || endpoint.Path == "/" {
			endpoint.Path = "/v1/traces"
		}
		client = otlptracehttp.NewClient(otlptracehttp.WithEndpointURL(endpoint.String()), otlptracehttp.WithTimeout(exportTimeout))
	default:
		return nil, fmt.Errorf("tracing protocol %q: %w", cfg.Protocol, errdefs.ErrInvalidArgument)
	}
	exp, err := otlptrace.New(ctx, client)
	if err != nil {
		return nil, fmt.Errorf("starting the OTLP exporter: %w", err)
	}
	res := resource.NewSchemaless(
		attribute.String("service.name", service),
		attribute.String("service.version", version.Version),
		attribute.Int("process.pid", os.Getpid()),
	)
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(time.Second)),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.SamplingRatio))),
	)
	return &Exporter{tp: tp, client: client}, nil
}

// TracerProvider is where hull's spans are made.
func (e *Exporter) TracerProvider() trace.TracerProvider { return e.tp }

// Shutdown sends the spans still buffered and stops the exporter.
func (e *Exporter) Shutdown(ctx context.Context) error {
	return e.tp.Shutdown(ctx)
}

// export sends spans checked by a Guest, as a resource of their own.
func (e *Exporter) export(ctx context.Context, res *resourcepb.Resource, spans []*tracepb.Span) error {
	ctx, cancel := context.WithTimeout(ctx, exportTimeout)
	defer cancel()
	return e.client.UploadTraces(ctx, []*tracepb.ResourceSpans{{
		Resource: res,
		ScopeSpans: []*tracepb.ScopeSpans{{
			Scope: &commonpb.InstrumentationScope{Name: GuestServiceName},
			Spans: spans,
		}},
	}})
}
