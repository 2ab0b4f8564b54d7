package shim

import (
	"context"
	"testing"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

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
