package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/agent"
)

// serveAgent serves the agent in-process on a unix socket, as
// `hull-agent --listen unix:PATH` does, and returns its --addr.
func serveAgent(t *testing.T) string {
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
	t.Cleanup(func() {
		cancel()
		<-done
	})
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			return "unix:" + sock
		}
		if time.Now().After(deadline) {
			t.Fatal("agent socket did not appear")
		}
	}
}

// runHull runs the hull command line in-process with stdin and returns its
// standard output.
func runHull(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetArgs(args)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

func TestAgentCall(t *testing.T) {
	addr := serveAgent(t)
	t.Run("health", func(t *testing.T) {
		out, err := runHull(t, "", "agent", "call", "--addr", addr, "System.Health")
		if err != nil {
			t.Fatal(err)
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("output is not one JSON object: %v\n%s", err, out)
		}
		if v["status"] != "STATUS_SERVING" || v["agent_version"] == nil {
			t.Fatalf("answer %v, want STATUS_SERVING with agent_version", v)
		}
	})
	t.Run("script from stdin", func(t *testing.T) {
		script := "# two calls\nSystem.Health\n/hull.agent.v1.System/GuestDetails {}\n"
		out, err := runHull(t, script, "agent", "call", "--addr", addr, "-f", "-")
		if err != nil {
			t.Fatal(err)
		}
		h, g := strings.Index(out, "# System.Health\n"), strings.Index(out, "# System.GuestDetails\n")
		if h != 0 || g < h || !strings.Contains(out[g:], `"transport": "`+addr) {
			t.Fatalf("output:\n%s", out)
		}
	})
	t.Run("agent error", func(t *testing.T) {
		_, err := runHull(t, "", "agent", "call", "--addr", addr, "Containers.RemoveContainer", `{"container_id": "x"}`)
		if !errdefs.IsNotFound(err) || err.Error() != `Containers.RemoveContainer: not found: container "x"` {
			t.Fatalf("error = %v, want the agent's not found", err)
		}
	})
	t.Run("unknown method", func(t *testing.T) {
		_, err := runHull(t, "", "agent", "call", "--addr", addr, "System.Healt")
		if err == nil || !strings.Contains(err.Error(), "did you mean System.Health?") {
			t.Fatalf("error = %v, want a suggestion", err)
		}
	})
	t.Run("one target", func(t *testing.T) {
		for _, args := range [][]string{
			{"agent", "call", "System.Health"},
			// A missing configuration keeps a broken check from booting.
			{"agent", "call", "--config", "/nonexistent/hull.toml", "--addr", addr, "--boot", "System.Health"},
		} {
			if _, err := runHull(t, "", args...); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "exactly one of --addr and --boot") {
				t.Errorf("%v: error = %v, want invalid argument asking for one target", args, err)
			}
		}
	})
}

// TestAgentCallBlocking checks that --timeout bounds ordinary calls but not
// the ones that wait by design: the command's context alone ends those.
func TestAgentCallBlocking(t *testing.T) {
	addr := serveAgent(t)
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetArgs([]string{"agent", "call", "--addr", addr, "--timeout", "500ms", "Containers.WaitOOM"})
	cmd.SetIn(strings.NewReader(""))
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	err := cmd.ExecuteContext(ctx)
	if took := time.Since(start); took < 1500*time.Millisecond || err == nil {
		t.Fatalf("WaitOOM ended after %v with %v: the call timeout cut a call that waits by design", took, err)
	}
	// An ordinary call to a missing socket still fails at once.
	if _, err := runHull(t, "", "agent", "call", "--addr", "unix:/nonexistent/agent.sock", "--timeout", "500ms", "System.Health"); err == nil {
		t.Error("a call to a missing agent succeeded")
	}
}

func TestAgentList(t *testing.T) {
	out, err := runHull(t, "", "agent", "list")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if f := strings.Fields(lines[0]); strings.Join(f, " ") != "METHOD REQUEST RESPONSE" {
		t.Fatalf("header %q", lines[0])
	}
	rows := map[string]string{}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) != 3 {
			t.Fatalf("row %q", l)
		}
		rows[f[0]] = f[1] + " " + f[2]
	}
	for m, want := range map[string]string{
		"System.Health":            "HealthRequest HealthResponse",
		"Containers.WaitProcess":   "WaitProcessRequest WaitProcessResponse",
		"Network.ConfigureNetwork": "ConfigureNetworkRequest ConfigureNetworkResponse",
	} {
		if rows[m] != want {
			t.Errorf("%s: %q, want %q", m, rows[m], want)
		}
	}
}
