package ocispec

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func writeScript(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "hook.sh")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil { //nolint:gosec // test script
		t.Fatal(err)
	}
	return p
}

func TestRunHooks(t *testing.T) {
	st := specs.State{Version: specs.Version, ID: "c1", Status: "creating", Pid: 4242, Bundle: "/b"}
	t.Run("state on stdin, args and env", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "out")
		hook := writeScript(t, `cat > `+out+`; echo "$0 $1 $FOO" >> `+out)
		err := RunHooks(context.Background(), "prestart", []specs.Hook{{Path: hook, Args: []string{"myhook", "arg1"}, Env: []string{"FOO=bar"}}}, st)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		var got specs.State
		dec := json.NewDecoder(bytes.NewReader(b))
		if err := dec.Decode(&got); err != nil {
			t.Fatalf("state %q: %v", b, err)
		}
		rest, _ := io.ReadAll(dec.Buffered())
		if got.Pid != 4242 || got.ID != "c1" || got.Bundle != "/b" || got.Status != "creating" {
			t.Errorf("state %+v", got)
		}
		if !strings.Contains(string(rest), "arg1 bar") {
			t.Errorf("args and env: %q", rest)
		}
	})
	t.Run("failure stops the list", func(t *testing.T) {
		marker := filepath.Join(t.TempDir(), "ran")
		bad := writeScript(t, "echo nope >&2; exit 3")
		good := writeScript(t, "touch "+marker)
		err := RunHooks(context.Background(), "createRuntime", []specs.Hook{{Path: bad}, {Path: good}}, st)
		if err == nil || !strings.Contains(err.Error(), "nope") || !strings.Contains(err.Error(), "createRuntime") {
			t.Fatalf("err %v, want the failure with the hook's output", err)
		}
		if _, err := os.Stat(marker); err == nil {
			t.Error("a hook after the failing one ran")
		}
	})
	t.Run("timeout kills", func(t *testing.T) {
		one := 1
		hook := writeScript(t, "exec sleep 30")
		start := time.Now()
		err := RunHooks(context.Background(), "prestart", []specs.Hook{{Path: hook, Timeout: &one}}, st)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err %v, want a deadline", err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("took %s", d)
		}
	})
	t.Run("no timeout is bounded", func(t *testing.T) {
		defer func(d time.Duration) { defaultHookTimeout = d }(defaultHookTimeout)
		defaultHookTimeout = 200 * time.Millisecond
		hook := writeScript(t, "exec sleep 5")
		err := RunHooks(context.Background(), "poststop", []specs.Hook{{Path: hook}}, st)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err %v, want a deadline", err)
		}
	})
}

func TestSplitHooks(t *testing.T) {
	zero := 0
	for _, tc := range []struct {
		name      string
		hooks     *specs.Hooks
		wantErr   error
		wantGuest *specs.Hooks
		wantHost  int
	}{
		{"none", nil, nil, nil, 0},
		{"host only", &specs.Hooks{Prestart: []specs.Hook{{Path: "/a"}}, Poststop: []specs.Hook{{Path: "/b"}}}, nil, nil, 2}, //nolint:staticcheck // prestart
		{"startContainer stays", &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/a"}}, StartContainer: []specs.Hook{{Path: "/in-guest"}}},
			nil, &specs.Hooks{StartContainer: []specs.Hook{{Path: "/in-guest"}}}, 1},
		{"relative path", &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "a"}}}, errdefs.ErrInvalidArgument, nil, 0},
		{"zero timeout", &specs.Hooks{Poststart: []specs.Hook{{Path: "/a", Timeout: &zero}}}, errdefs.ErrInvalidArgument, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := &specs.Spec{Hooks: tc.hooks}
			h, err := SplitHooks(spec)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			n := len(h.Prestart) + len(h.CreateRuntime) + len(h.CreateContainer) + len(h.Poststart) + len(h.Poststop)
			if n != tc.wantHost {
				t.Errorf("%d host hooks, want %d", n, tc.wantHost)
			}
			g, _ := json.Marshal(spec.Hooks)
			w, _ := json.Marshal(tc.wantGuest)
			if !bytes.Equal(g, w) {
				t.Errorf("guest hooks %s, want %s", g, w)
			}
		})
	}
}
