package agentctl

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/agent"
	"github.com/hull-runtime/hull/internal/agentclient"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// startAgent serves the agent in-process on a unix socket, as
// `hull-agent --listen unix:PATH` does, and returns a Caller connected to
// it.
func startAgent(t *testing.T, timeout time.Duration) *Caller {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := agent.Serve(ctx, agent.ServeOptions{Listen: "unix:" + sock}); err != nil {
			t.Errorf("agent: %v", err)
		}
	}()
	c, err := agentclient.Dial(ctx, hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial, SocketPath: sock},
		agentclient.Options{DialTimeout: 10 * time.Second, NoLogStream: true})
	if err != nil {
		cancel()
		<-done
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Close()
		cancel()
		<-done
	})
	return NewCaller(c, timeout)
}

// callJSON looks name up, calls it with the request js, and decodes the
// formatted answer.
func callJSON(t *testing.T, c *Caller, name, js string) (map[string]any, error) {
	t.Helper()
	m, err := Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	req, err := m.NewRequest(js)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Call(context.Background(), m, req)
	if err != nil {
		return nil, err
	}
	out, err := Format(resp)
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("answer is not JSON: %v\n%s", err, out)
	}
	return v, nil
}

func TestNewRequest(t *testing.T) {
	for _, tc := range []struct {
		name   string
		method string
		js     string
		want   string // the request in the text format; empty: an error
		field  string // what the error must name
	}{
		{name: "absent", method: "System.Health", js: "", want: "{}"},
		{name: "proto names", method: "Containers.RemoveContainer", js: `{"container_id": "c1", "force": true}`, want: `{"container_id":"c1","force":true}`},
		{name: "json names", method: "Containers.RemoveContainer", js: `{"containerId": "c1"}`, want: `{"container_id":"c1"}`},
		{name: "nested", method: "Containers.ResizeTTY", js: `{"container_id": "c1", "width": 80}`, want: `{"container_id":"c1","width":80}`},
		{name: "unknown field", method: "Containers.RemoveContainer", js: `{"container_id": "c1", "forse": true}`, field: `"forse"`},
		{name: "wrong type", method: "Containers.RemoveContainer", js: `{"force": "yes"}`, field: "force"},
		{name: "malformed", method: "Containers.RemoveContainer", js: `{"container_id": "c1",`, field: "unexpected"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Lookup(tc.method)
			if err != nil {
				t.Fatal(err)
			}
			req, err := m.NewRequest(tc.js)
			if tc.want == "" {
				if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.field) || !strings.Contains(err.Error(), tc.method) {
					t.Fatalf("NewRequest(%s) error = %v, want invalid argument naming %s and %s", tc.js, err, tc.field, tc.method)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			out, err := Format(req)
			if err != nil {
				t.Fatal(err)
			}
			var got, want any
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(tc.want), &want); err != nil {
				t.Fatal(err)
			}
			if g, w := mustJSON(t, got), mustJSON(t, want); g != w {
				t.Fatalf("request = %s, want %s", g, w)
			}
		})
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestCallAgent calls a real agent served in-process by method name.
func TestCallAgent(t *testing.T) {
	c := startAgent(t, 5*time.Second)
	t.Run("guest details", func(t *testing.T) {
		v, err := callJSON(t, c, "System.GuestDetails", "")
		if err != nil {
			t.Fatal(err)
		}
		if tr, _ := v["transport"].(string); !strings.HasPrefix(tr, "unix:") {
			t.Fatalf("transport = %v, want unix:...; answer %v", v["transport"], v)
		}
		// Proto field names, not their JSON names.
		if _, ok := v["kernel_release"]; !ok {
			t.Fatalf("answer has no kernel_release: %v", v)
		}
	})
	t.Run("health by full name", func(t *testing.T) {
		v, err := callJSON(t, c, "/hull.agent.v1.System/Health", "{}")
		if err != nil {
			t.Fatal(err)
		}
		if v["status"] != "STATUS_SERVING" {
			t.Fatalf("status = %v, want STATUS_SERVING", v["status"])
		}
	})
	t.Run("agent error keeps its class", func(t *testing.T) {
		_, err := callJSON(t, c, "Containers.RemoveContainer", `{"container_id": "nosuch"}`)
		var ce *CallError
		if !errdefs.IsNotFound(err) || !errors.As(err, &ce) {
			t.Fatalf("error = %v, want a not found CallError", err)
		}
		if want := `Containers.RemoveContainer: not found: container "nosuch"`; err.Error() != want {
			t.Fatalf("error %q, want %q", err, want)
		}
	})
	t.Run("precondition", func(t *testing.T) {
		_, err := callJSON(t, c, "System.SetTime", `{"time": "2024-01-01T00:00:00Z"}`)
		if !errdefs.IsFailedPrecondition(err) || !strings.HasPrefix(err.Error(), "System.SetTime: failed precondition: ") {
			t.Fatalf("error = %v, want failed precondition first", err)
		}
	})
}

// TestCallTimeout: the Caller's timeout ends a call that blocks by design
// and the error says so.
func TestCallTimeout(t *testing.T) {
	c := startAgent(t, 300*time.Millisecond)
	m, err := Lookup("Containers.WaitOOM")
	if err != nil {
		t.Fatal(err)
	}
	req, err := m.NewRequest("")
	if err != nil {
		t.Fatal(err)
	}
	// WaitOOM blocks until an OOM kill, which never comes here; the outer
	// bound keeps a Caller that ignores its timeout from hanging the test.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	_, err = c.Call(ctx, m, req)
	if took := time.Since(start); took < 300*time.Millisecond || took > 5*time.Second {
		t.Errorf("call took %s, want about 300ms", took)
	}
	if !errdefs.IsDeadlineExceeded(err) || !strings.Contains(err.Error(), "no answer within 300ms") {
		t.Fatalf("error = %v, want deadline exceeded naming the timeout", err)
	}
}
