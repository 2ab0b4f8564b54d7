package shim

import (
	"context"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/log"
	"github.com/containerd/otelttrpc"
	"github.com/containerd/ttrpc"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/tracing"
)

func TestInterceptLogFields(t *testing.T) {
	payload, err := proto.Marshal(&taskapi.KillRequest{ID: "c1", ExecID: "e1", Signal: 9})
	if err != nil {
		t.Fatal(err)
	}
	unmarshal := func(v any) error { return proto.Unmarshal(payload, v.(proto.Message)) }
	traced := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{0xab, 1}, SpanID: trace.SpanID{1}, TraceFlags: trace.FlagsSampled,
	}))
	for _, tc := range []struct {
		name    string
		ctx     context.Context
		sandbox string
		want    map[string]string
	}{
		{"untraced, before the sandbox", context.Background(), "", map[string]string{tracing.LogContainer: "c1"}},
		{"traced, with the sandbox", traced, "pod", map[string]string{
			tracing.LogContainer: "c1", tracing.LogSandbox: "pod", tracing.LogTraceID: trace.TraceID{0xab, 1}.String(),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &service{sandboxID: tc.sandbox}
			var got log.Fields
			var req taskapi.KillRequest
			_, err := s.intercept(tc.ctx, unmarshal, &ttrpc.UnaryServerInfo{FullMethod: "/containerd.task.v2.Task/Kill"},
				func(ctx context.Context, u func(any) error) (any, error) {
					got = log.G(ctx).Data
					return nil, u(&req)
				})
			if err != nil {
				t.Fatal(err)
			}
			if req.ExecID != "e1" || req.Signal != 9 {
				t.Errorf("the method got %v, want the whole request", &req)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("log field %s = %v, want %s (fields %v)", k, got[k], v, got)
				}
			}
			if _, ok := got[tracing.LogTraceID]; ok && tc.want[tracing.LogTraceID] == "" {
				t.Errorf("an untraced call logs trace_id %v", got[tracing.LogTraceID])
			}
		})
	}
}

// BenchmarkIntercept is what the task API interceptor costs a call, with
// tracing off and on (spans batched for a collector that is not there).
func BenchmarkIntercept(b *testing.B) {
	payload, err := proto.Marshal(&taskapi.KillRequest{ID: "c1", Signal: 9})
	if err != nil {
		b.Fatal(err)
	}
	unmarshal := func(v any) error { return proto.Unmarshal(payload, v.(proto.Message)) }
	info := &ttrpc.UnaryServerInfo{FullMethod: "/containerd.task.v2.Task/Kill"}
	method := func(ctx context.Context, u func(any) error) (any, error) {
		var r taskapi.KillRequest
		return nil, u(&r)
	}
	on := &service{sandboxID: "pod"}
	e, err := tracing.New(context.Background(), config.Tracing{Enabled: true, Endpoint: "http://127.0.0.1:1", Protocol: "grpc", SamplingRatio: 1}, "bench")
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		// Nothing listens: give up the last batch at once.
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_ = e.Shutdown(ctx)
	}()
	on.tracing.exporter = e
	on.tracing.spans = otelttrpc.UnaryServerInterceptor(otelttrpc.WithTracerProvider(e.TracerProvider()), otelttrpc.WithPropagators(tracing.Propagator))
	for _, c := range []struct {
		name string
		s    *service
	}{{"off", &service{sandboxID: "pod"}}, {"on", on}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.s.intercept(context.Background(), unmarshal, info, method); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
