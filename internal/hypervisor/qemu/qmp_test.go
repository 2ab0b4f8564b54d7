package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

// fakeQMP serves one connection: a greeting, then replies from answer,
// which gets each command and returns the lines to send.
func fakeQMP(t *testing.T, answer func(cmd, id string) []string) string {
	t.Helper()
	return fakeQMPArgs(t, func(cmd string, _ json.RawMessage, id string) []string { return answer(cmd, id) })
}

// fakeQMPArgs is fakeQMP with each command's arguments.
func fakeQMPArgs(t *testing.T, answer func(cmd string, args json.RawMessage, id string) []string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer func() { _ = c.Close() }()
		if _, err := c.Write([]byte(`{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}` + "\n")); err != nil {
			return // the client hung up
		}
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			var m struct {
				Execute   string          `json:"execute"`
				Arguments json.RawMessage `json:"arguments"`
				ID        string          `json:"id"`
			}
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				return
			}
			lines := answer(m.Execute, m.Arguments, m.ID)
			if lines == nil {
				return // hang up
			}
			for _, line := range lines {
				if _, err := c.Write([]byte(line + "\n")); err != nil {
					return // the client hung up
				}
			}
		}
	}()
	return path
}

func TestQMP(t *testing.T) {
	var events []string
	path := fakeQMP(t, func(cmd, id string) []string {
		switch cmd {
		case "qmp_capabilities", "cont":
			return []string{`{"event": "RESUME", "data": {}}`, `{"return": {}, "id": "` + id + `"}`}
		case "query-status":
			return []string{`{"return": {"status": "running"}, "id": "` + id + `"}`}
		case "device_del":
			return []string{`{"error": {"class": "DeviceNotFound", "desc": "Device 'x' not found"}, "id": "` + id + `"}`}
		case "quit":
			return nil
		default:
			return []string{`{"error": {"class": "CommandNotFound", "desc": "The command ` + cmd + ` has not been found"}, "id": "` + id + `"}`}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q, err := dialQMP(ctx, path, func() bool { return true }, func(name string, _ json.RawMessage) { events = append(events, name) })
	if err != nil {
		t.Fatal(err)
	}
	defer q.close()

	tests := []struct {
		cmd   string
		want  string
		class error
	}{
		{"query-status", `{"status": "running"}`, nil},
		{"cont", `{}`, nil},
		{"device_del", "", errdefs.ErrNotFound},
		{"x-nope", "", errdefs.ErrNotImplemented},
		{"quit", "", hypervisor.ErrVMExited},
		{"cont", "", hypervisor.ErrVMExited},
	}
	for _, tc := range tests {
		t.Run(tc.cmd, func(t *testing.T) {
			r, err := q.execute(ctx, tc.cmd, nil)
			if tc.class != nil {
				if !errors.Is(err, tc.class) {
					t.Errorf("got %v, want class %v", err, tc.class)
				}
				return
			}
			if err != nil || string(r) != tc.want {
				t.Errorf("got %s %v, want %s", r, err, tc.want)
			}
		})
	}
	if strings.Join(events, ",") != "RESUME,RESUME" {
		t.Errorf("events %v", events)
	}
}

func TestQMPDialGivesUp(t *testing.T) {
	tests := []struct {
		name  string
		alive bool
		want  error
	}{
		{"process exited", false, hypervisor.ErrVMExited},
		{"deadline", true, context.DeadlineExceeded},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			_, err := dialQMP(ctx, filepath.Join(t.TempDir(), "none.sock"), func() bool { return tc.alive }, nil)
			if !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestQMPNoGreeting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	go func() {
		if c, err := l.Accept(); err == nil {
			_, _ = c.Write([]byte(`{"hello": 1}` + "\n")) // the test checks what the client makes of it
			_ = c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := dialQMP(ctx, path, func() bool { return true }, nil); err == nil || !strings.Contains(err.Error(), "no greeting") {
		t.Errorf("got %v", err)
	}
}
