package ociruntime

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/child"
)

func seqpacketPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, err := fileConn(os.NewFile(uintptr(fds[0]), "a"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := fileConn(os.NewFile(uintptr(fds[1]), "b"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	return a, b
}

func TestProtocol(t *testing.T) {
	t.Run("message with descriptors", func(t *testing.T) {
		a, b := seqpacketPair(t)
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = r.Close(); _ = w.Close() }()
		if err := send(a, request{Op: opExec, Process: &specs.Process{Args: []string{"true"}}}, r, w); err != nil {
			t.Fatal(err)
		}
		var req request
		files, err := recv(b, &req)
		if err != nil {
			t.Fatal(err)
		}
		if req.Op != opExec || req.Process == nil || req.Process.Args[0] != "true" || len(files) != 2 {
			t.Fatalf("got %+v with %d files", req, len(files))
		}
		// The received write end reaches the original read end.
		if _, err := files[1].Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1)
		if _, err := r.Read(buf); err != nil || buf[0] != 'x' {
			t.Fatalf("read %q, %v", buf, err)
		}
		for _, f := range files {
			_ = f.Close()
		}
	})
	t.Run("too many descriptors", func(t *testing.T) {
		a, b := seqpacketPair(t)
		fs := make([]*os.File, maxFDs+1)
		for i := range fs {
			f, err := os.Open(os.DevNull)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = f.Close() }()
			fs[i] = f
		}
		if err := send(a, request{Op: opState}, fs...); err != nil {
			t.Fatal(err)
		}
		var req request
		if _, err := recv(b, &req); !errdefs.IsInvalidArgument(err) {
			t.Fatalf("recv: %v, want an invalid argument", err)
		}
	})
	t.Run("error classes cross", func(t *testing.T) {
		for _, class := range []error{errdefs.ErrNotFound, errdefs.ErrFailedPrecondition, errdefs.ErrNotImplemented, errdefs.ErrInvalidArgument} {
			a, b := seqpacketPair(t)
			if err := send(a, response{Error: toWire(errors.Join(errors.New("boom"), class))}); err != nil {
				t.Fatal(err)
			}
			var resp response
			if _, err := recv(b, &resp); err != nil {
				t.Fatal(err)
			}
			got := resp.Error.err()
			if !errors.Is(got, class) || !strings.Contains(got.Error(), "boom") {
				t.Errorf("sent %v, got %v", class, got)
			}
		}
	})
	t.Run("peer closed", func(t *testing.T) {
		a, b := seqpacketPair(t)
		_ = a.Close()
		var r response
		if _, err := recv(b, &r); err == nil {
			t.Fatal("recv after close succeeded")
		}
	})
}

func writeScript(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "hook.sh")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil { //nolint:gosec // test script
		t.Fatal(err)
	}
	return p
}

func TestPlanNetwork(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ns       []specs.LinuxNamespace
		want     netPlan
		wantErr  error
		wantKept int
	}{
		{"new namespace (Docker, nerdctl)", []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}}, netPlan{own: true}, nil, 1},
		{"namespace path (Podman)", []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/run/netns/cni-1"}}, netPlan{path: "/run/netns/cni-1"}, nil, 0},
		{"host network", []specs.LinuxNamespace{{Type: specs.MountNamespace}}, netPlan{}, nil, 1},
		{"another container's ipc", []specs.LinuxNamespace{{Type: specs.IPCNamespace, Path: "/proc/1/ns/ipc"}}, netPlan{}, errdefs.ErrNotImplemented, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := &specs.Spec{Linux: &specs.Linux{Namespaces: tc.ns}}
			got, err := planNetwork(spec)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if err == nil && (got != tc.want || len(spec.Linux.Namespaces) != tc.wantKept) {
				t.Errorf("plan %+v with %d namespaces kept, want %+v and %d", got, len(spec.Linux.Namespaces), tc.want, tc.wantKept)
			}
		})
	}
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]syscall.Signal{"9": syscall.SIGKILL, "KILL": syscall.SIGKILL, "SIGTERM": syscall.SIGTERM, "term": syscall.SIGTERM} {
		if got, err := parseSignal(in); err != nil || got != want {
			t.Errorf("%q: %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"0", "65", "NOPE", ""} {
		if _, err := parseSignal(in); err == nil {
			t.Errorf("%q parsed", in)
		}
	}
}

// run runs hull-runtime's command line and returns its status, stdout and
// the log.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "log.json")
	stdout := os.Stdout
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	os.Stdout = w
	code := Main(append([]string{"--log", logPath, "--log-format", "json"}, args...))
	os.Stdout = stdout
	_ = w.Close()
	var out bytes.Buffer
	_, _ = out.ReadFrom(r)
	_ = r.Close()
	b, _ := os.ReadFile(logPath)
	return code, out.String(), string(b)
}

// TestUnknownContainer checks the answers container managers rely on for
// an ID the runtime does not know: runc's statuses, and "does not exist"
// in the log's last error (containerd's runc shim matches it).
func TestUnknownContainer(t *testing.T) {
	root := t.TempDir()
	for _, tc := range []struct {
		args     []string
		wantCode int
	}{
		{[]string{"state", "nope"}, 1},
		{[]string{"kill", "nope", "KILL"}, 1},
		{[]string{"delete", "nope"}, 1},
		{[]string{"delete", "--force", "nope"}, 0},
		{[]string{"start", "nope"}, 1},
		{[]string{"exec", "nope", "true"}, 1},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, _, logText := run(t, append([]string{"--root", root}, tc.args...)...)
			if code != tc.wantCode {
				t.Errorf("status %d, want %d (log: %s)", code, tc.wantCode, logText)
			}
			if tc.wantCode != 0 {
				var last struct{ Level, Msg string }
				lines := strings.Split(strings.TrimSpace(logText), "\n")
				if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
					t.Fatalf("log %q: %v", logText, err)
				}
				if last.Level != "error" || !strings.Contains(last.Msg, "does not exist") {
					t.Errorf("last log line %+v, want an error saying the container does not exist", last)
				}
			}
		})
	}
}

// TestStoppedContainer checks a container whose supervisor is gone: state
// says stopped with PID 0, kill says "container not running", delete
// removes it.
func TestStoppedContainer(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "c1")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	rec := record{ID: "c1", Bundle: "/b", SandboxRoot: t.TempDir(), SandboxID: "c1" + sandboxSuffix}
	rec.Supervisor.PID, rec.Supervisor.StartTime = 1<<22+1, 1 // no such process
	if err := writeRecord(dir, rec); err != nil {
		t.Fatal(err)
	}
	code, out, _ := run(t, "--root", root, "state", "c1")
	var st containerState
	if err := json.Unmarshal([]byte(out), &st); err != nil || code != 0 {
		t.Fatalf("state: %d %q %v", code, out, err)
	}
	if st.Status != statusStopped || st.Pid != 0 || st.ID != "c1" || st.Bundle != "/b" {
		t.Errorf("state %+v", st)
	}
	code, _, logText := run(t, "--root", root, "kill", "c1", "TERM")
	if code != 1 || !strings.Contains(logText, "container not running") {
		t.Errorf("kill: %d, log %s", code, logText)
	}
	if code, _, logText := run(t, "--root", root, "delete", "c1"); code != 0 {
		t.Fatalf("delete: %d, log %s", code, logText)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("state directory left: %v", err)
	}
}

func TestUnsupported(t *testing.T) {
	for _, cmd := range []string{"checkpoint", "restore"} {
		code, _, logText := run(t, "--root", t.TempDir(), cmd, "x")
		if code != 1 || !strings.Contains(logText, "does not implement") {
			t.Errorf("%s: %d, log %s", cmd, code, logText)
		}
	}
}

func TestFeatures(t *testing.T) {
	code, out, _ := run(t, "features")
	var f struct {
		OCIVersionMax string
		Hooks         []string
	}
	if err := json.Unmarshal([]byte(out), &f); err != nil || code != 0 {
		t.Fatalf("features: %d %q %v", code, out, err)
	}
	if f.OCIVersionMax != specs.Version || len(f.Hooks) != 6 {
		t.Errorf("features %+v", f)
	}
}

// TestLongSocketPath serves and calls the supervisor's socket in a
// directory whose socket path is longer than a unix address holds, as
// under containerd's runc shim with Docker's 64-byte IDs.
func TestLongSocketPath(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("0123456789abcdef", 4))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, sockName)
	if len(sock) <= maxSockPath {
		t.Fatalf("%s is short enough for a plain address", sock)
	}
	l, err := listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("the socket is not at its path: %v", err)
	}
	go func() {
		c, err := l.AcceptUnix()
		if err != nil {
			return
		}
		defer func() { _ = c.Close() }()
		var req request
		if _, err := recv(c, &req); err == nil {
			_ = send(c, response{Status: req.Op})
		}
	}()
	resp, err := call(sock, request{Op: opState})
	if err != nil || resp.Status != opState {
		t.Fatalf("call: %+v, %v", resp, err)
	}
}

func TestCheckJoins(t *testing.T) {
	root := t.TempDir()
	self, err := child.Identify(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "infra")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := writeRecord(dir, record{ID: "infra", Supervisor: self}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		path    string
		refused bool
	}{
		{"a hull-runtime container's supervisor", fmt.Sprintf("/proc/%d/ns/ipc", os.Getpid()), true},
		{"another process", "/proc/1/ns/ipc", false},
		{"a named namespace", "/run/netns/cni-1", false},
		{"not a namespace file", fmt.Sprintf("/proc/%d/ns/ipc/x", os.Getpid()), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.IPCNamespace, Path: tc.path}}}}
			err := checkJoins(root, spec)
			if tc.refused != (err != nil) {
				t.Fatalf("checkJoins: %v, want refused %v", err, tc.refused)
			}
			if tc.refused && (!errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), "container infra") || !strings.Contains(err.Error(), "--network")) {
				t.Errorf("refusal %q: want a not-implemented error naming the container and the alternative", err)
			}
		})
	}
}

func TestRuncStats(t *testing.T) {
	io := make([]*agent.IOStats, maxIODevices+5)
	for i := range io {
		io[i] = &agent.IOStats{Major: 254, Minor: uint64(i), Rbytes: 4096, Wbytes: 512, Rios: 2, Wios: 1}
	}
	got := runcStats(&agent.StatsResponse{
		Cpu:    &agent.CPUStats{UsageUsec: 1500, UserUsec: 1000, SystemUsec: 500, NrPeriods: 3, NrThrottled: 1, ThrottledUsec: 7},
		Memory: &agent.MemoryStats{Usage: 8 << 20, Limit: 64 << 20, File: 1 << 20, Anon: 7 << 20, SwapUsage: 5, OomEvents: 2},
		Pids:   &agent.PidsStats{Current: 3, Limit: 100},
		Io:     io,
	})
	if got.CPU.Usage.Total != 1500000 || got.CPU.Usage.User != 1000000 || got.CPU.Usage.Kernel != 500000 || got.CPU.Throttling.ThrottledTime != 7000 {
		t.Errorf("cpu %+v: want nanoseconds", got.CPU)
	}
	if got.Memory.Usage.Usage != 8<<20 || got.Memory.Usage.Limit != 64<<20 || got.Memory.Cache != 1<<20 || got.Memory.Raw["anon"] != 7<<20 || got.Memory.Swap.Usage != 5 || got.Memory.Usage.Failcnt != 2 {
		t.Errorf("memory %+v", got.Memory)
	}
	if got.Pids.Current != 3 || got.Pids.Limit != 100 {
		t.Errorf("pids %+v", got.Pids)
	}
	if n := len(got.Blkio.IoServiceBytesRecursive); n != 2*maxIODevices {
		t.Errorf("%d io entries, want %d (bounded)", n, 2*maxIODevices)
	}
	if empty := runcStats(&agent.StatsResponse{}); empty.CPU.Usage.Total != 0 || empty.Memory.Raw != nil {
		t.Errorf("no statistics: %+v", empty)
	}
}
