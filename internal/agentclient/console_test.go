package agentclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/agent"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/procfs"
)

// hostBusybox is the debug shell of the tests: busybox-static's binary.
const hostBusybox = "/bin/busybox"

// requireBusybox fails the test when the host has no busybox to serve as
// the debug shell.
func requireBusybox(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(hostBusybox); err != nil {
		t.Fatalf("the debug console tests run %s as the debug shell; install busybox-static: %v", hostBusybox, err)
	}
}

// dialConsoleAgent runs the agent's serving code with o on tr and dials
// it. The agent's log goes to logs. The channel returned is closed when
// Serve has returned.
func dialConsoleAgent(t *testing.T, tr testTransport, o agent.ServeOptions, logs *captureLog) (*Client, <-chan struct{}) {
	t.Helper()
	var ep hypervisor.AgentEndpoint
	o.Listen, ep = tr.listen(t.TempDir())
	o.LogLevel = "debug"
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var serveErr error
	go func() {
		defer close(done)
		serveErr = agent.Serve(ctx, o)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
			if serveErr != nil {
				t.Errorf("Serve = %v", serveErr)
			}
		case <-time.After(10 * time.Second):
			t.Error("agent did not stop")
		}
	})
	c, err := Dial(context.Background(), ep,
		Options{DialTimeout: 10 * time.Second, CallTimeout: 15 * time.Second, Log: logs.entry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, done
}

// consoleSession is the host's end of one debug console.
type consoleSession struct {
	s   Stream
	pid int

	mu  sync.Mutex
	out bytes.Buffer // everything read so far; guarded by mu
	// ended is closed when the stream's output ended; endErr is the read
	// error that ended it.
	ended  chan struct{}
	endErr error
}

// openConsole opens a stream and starts a debug console on it.
func openConsole(t *testing.T, c *Client, req *api.DebugConsoleRequest) *consoleSession {
	t.Helper()
	ctx := context.Background()
	id := c.NewStreamID()
	s, err := c.OpenStream(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	req.StreamId = id
	resp, err := c.System().DebugConsole(ctx, req)
	if err != nil {
		_ = s.Close()
		t.Fatalf("DebugConsole: %v", err)
	}
	if resp.GetPid() == 0 {
		t.Fatal("DebugConsole returned pid 0")
	}
	cs := &consoleSession{s: s, pid: int(resp.GetPid()), ended: make(chan struct{})}
	go func() {
		defer close(cs.ended)
		buf := make([]byte, 4096)
		for {
			n, err := s.Read(buf)
			cs.mu.Lock()
			cs.out.Write(buf[:n])
			cs.mu.Unlock()
			if err != nil {
				cs.endErr = err
				return
			}
		}
	}()
	t.Cleanup(func() {
		_ = s.Close()
		_ = unix.Kill(cs.pid, unix.SIGKILL) // no-op unless a test failed half-way
	})
	return cs
}

func (cs *consoleSession) output() string {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.out.String()
}

// waitOutput waits until the output matches re and returns the submatches.
func (cs *consoleSession) waitOutput(t *testing.T, re string) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := rx.FindStringSubmatch(cs.output()); m != nil {
			return m
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %q in the console output %q", re, cs.output())
	return nil
}

func (cs *consoleSession) write(t *testing.T, s string) {
	t.Helper()
	if _, err := cs.s.Write([]byte(s)); err != nil {
		t.Fatalf("writing to the console: %v", err)
	}
}

// waitEnded waits for the end of the console's output.
func (cs *consoleSession) waitEnded(t *testing.T, within time.Duration) {
	t.Helper()
	select {
	case <-cs.ended:
	case <-time.After(within):
		t.Fatalf("console output still open %s later; output %q", within, cs.output())
	}
}

// gone reports whether pid no longer exists (a zombie still does).
func gone(pid int) bool { return errors.Is(unix.Kill(pid, 0), unix.ESRCH) }

// goneOrZombie reports whether pid is gone or a zombie: a process that this
// test's process is not the parent of is reaped by whoever is.
func goneOrZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	f, err := procfs.StatFields(b)
	return err == nil && f[0] == "Z"
}

// waitGone waits up to within for done(pid) and returns how long it took.
func waitGone(t *testing.T, pid int, within time.Duration, done func(int) bool) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < within {
		if done(pid) {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("process %d still there %s later", pid, within)
	return 0
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// endedLog waits for the agent's "debug console ended" entry of pid and
// returns its status field.
func endedLog(t *testing.T, logs *captureLog, pid int) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		logs.mu.Lock()
		for _, e := range logs.entries {
			if e.Message == "debug console ended" && fmt.Sprint(e.Data["guest.pid"]) == strconv.Itoa(pid) {
				logs.mu.Unlock()
				return fmt.Sprint(e.Data["guest.status"])
			}
		}
		logs.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no \"debug console ended\" log entry for pid %d", pid)
	return ""
}

func TestDebugConsoleRefused(t *testing.T) {
	requireBusybox(t)
	missing := filepath.Join(t.TempDir(), "debug-shell")
	for _, tc := range []struct {
		name  string
		opts  agent.ServeOptions
		check func(error) bool
		want  []string
	}{
		{
			name:  "disabled",
			opts:  agent.ServeOptions{DebugShell: hostBusybox},
			check: errdefs.IsFailedPrecondition,
			want:  []string{"disabled", "debug_console = true", "[agent]"},
		},
		{
			name:  "shell missing",
			opts:  agent.ServeOptions{DebugConsole: true, DebugShell: missing},
			check: errdefs.IsFailedPrecondition,
			want:  []string{missing, "without a debug shell", "hull image build --debug-shell"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, tr := range testTransports {
				t.Run(tr.name, func(t *testing.T) { testDebugConsoleRefused(t, tr, tc.opts, tc.check, tc.want) })
			}
		})
	}
}

func testDebugConsoleRefused(t *testing.T, tr testTransport, opts agent.ServeOptions, check func(error) bool, want []string) {
	var logs captureLog
	c, _ := dialConsoleAgent(t, tr, opts, &logs)
	ctx := context.Background()
	id := c.NewStreamID()
	s, err := c.OpenStream(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	_, err = c.System().DebugConsole(ctx, &api.DebugConsoleRequest{StreamId: id})
	if !check(err) {
		t.Fatalf("DebugConsole error = %v, want failed precondition", err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("DebugConsole error %q does not say %q", err, w)
		}
	}
	// The channel opened for the refused console is closed at
	// once, not left parked in the agent until its TTL.
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("read of the refused console's channel: %v, want EOF", err)
	}
}

func TestDebugConsole(t *testing.T) {
	requireBusybox(t)
	for _, tr := range testTransports {
		t.Run(tr.name, func(t *testing.T) { testDebugConsole(t, tr) })
	}
}

func testDebugConsole(t *testing.T, tr testTransport) {
	var logs captureLog
	c, _ := dialConsoleAgent(t, tr, agent.ServeOptions{DebugConsole: true, DebugShell: hostBusybox}, &logs)
	ctx := context.Background()

	t.Run("stream id 0", func(t *testing.T) {
		_, err := c.System().DebugConsole(ctx, &api.DebugConsoleRequest{})
		if !errdefs.IsInvalidArgument(err) {
			t.Fatalf("DebugConsole error = %v, want invalid argument", err)
		}
	})
	t.Run("session ends with the shell", func(t *testing.T) {
		fds := openFDs(t)
		cs := openConsole(t, c, &api.DebugConsoleRequest{})
		cs.waitOutput(t, `hull-debug# `)
		cs.write(t, "echo \"hull-$((6*7)) term=$TERM home=$HOME pwd=$(pwd) uid=$(id -u) session=$(cut -d' ' -f6 /proc/$$/stat)\"\nexit 3\n")
		m := cs.waitOutput(t, `hull-42 term=(\S+) home=(\S+) pwd=(\S+) uid=(\S+) session=\s*(\d+)`)
		if m[1] != "vt100" || m[2] != "/" || m[3] != "/" || m[4] != "0" || m[5] != strconv.Itoa(cs.pid) {
			t.Errorf("TERM=%s HOME=%s pwd=%s uid=%s session=%s, want vt100 / / 0 %d", m[1], m[2], m[3], m[4], m[5], cs.pid)
		}
		cs.waitEnded(t, 5*time.Second)
		// The output may end (the terminal's last holder exited) a moment
		// before the agent reaps the shell.
		waitGone(t, cs.pid, 5*time.Second, gone)
		if st := endedLog(t, &logs, cs.pid); st != "exit 3" {
			t.Errorf("logged status %q, want exit 3", st)
		}
		// The terminal and the process's handle are closed once it ended
		// (and the host's end of the channel, a socket on vsock, once the
		// host closed it).
		_ = cs.s.Close()
		if got := openFDs(t); got != fds {
			t.Errorf("%d open files after the console, %d before", got, fds)
		}
	})
	t.Run("window size and term", func(t *testing.T) {
		cs := openConsole(t, c, &api.DebugConsoleRequest{Width: 123, Height: 45, Term: "xterm-256color"})
		cs.waitOutput(t, `hull-debug# `)
		cs.write(t, "echo \"size=$(stty size) term=$TERM\"; exit\n")
		m := cs.waitOutput(t, `size=(\d+ \d+) term=(\S+)`)
		if m[1] != "45 123" || m[2] != "xterm-256color" {
			t.Errorf("stty size %q, TERM %q; want \"45 123\", xterm-256color", m[1], m[2])
		}
		cs.waitEnded(t, 5*time.Second)
	})
	t.Run("wait", func(t *testing.T) {
		cs := openConsole(t, c, &api.DebugConsoleRequest{})
		cs.waitOutput(t, `hull-debug# `)
		// Waiting while the shell runs returns when it exits.
		type result struct {
			status int32
			err    error
		}
		got := make(chan result, 1)
		go func() {
			r, err := c.System().WaitDebugConsole(ctx, &api.WaitDebugConsoleRequest{Pid: uint32(cs.pid)})
			got <- result{r.GetExitStatus(), err}
		}()
		select {
		case r := <-got:
			t.Fatalf("WaitDebugConsole returned %+v while the shell runs", r)
		case <-time.After(200 * time.Millisecond):
		}
		cs.write(t, "exit 3\n")
		select {
		case r := <-got:
			if r.err != nil || r.status != 3 {
				t.Errorf("WaitDebugConsole = %d, %v; want 3", r.status, r.err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("WaitDebugConsole did not return after the shell exited")
		}
		cs.waitEnded(t, 5*time.Second)
		// Once ended, the status is still there.
		deadline := time.Now().Add(5 * time.Second)
		for {
			r, err := c.System().WaitDebugConsole(ctx, &api.WaitDebugConsoleRequest{Pid: uint32(cs.pid)})
			if err == nil && r.GetExitStatus() == 3 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("WaitDebugConsole after the end = %v, %v; want 3", r, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		// A hung-up shell ends by SIGHUP: 128 + 1.
		hup := openConsole(t, c, &api.DebugConsoleRequest{})
		hup.waitOutput(t, `hull-debug# `)
		if err := hup.s.Close(); err != nil {
			t.Fatal(err)
		}
		if r, err := c.System().WaitDebugConsole(ctx, &api.WaitDebugConsoleRequest{Pid: uint32(hup.pid)}); err != nil || r.GetExitStatus() != 129 {
			t.Errorf("WaitDebugConsole of a hung-up shell = %v, %v; want 129", r, err)
		}
		if _, err := c.System().WaitDebugConsole(ctx, &api.WaitDebugConsoleRequest{Pid: 1 << 30}); !errdefs.IsNotFound(err) {
			t.Errorf("WaitDebugConsole of no console: %v, want not found", err)
		}
	})
	t.Run("resize", func(t *testing.T) {
		cs := openConsole(t, c, &api.DebugConsoleRequest{Width: 80, Height: 24})
		cs.waitOutput(t, `hull-debug# `)
		if _, err := c.System().ResizeDebugConsole(ctx, &api.ResizeDebugConsoleRequest{Pid: uint32(cs.pid), Width: 132, Height: 50}); err != nil {
			t.Fatal(err)
		}
		cs.write(t, "echo \"size=$(stty size)\"; exit\n")
		if m := cs.waitOutput(t, `size=(\d+ \d+)`); m[1] != "50 132" {
			t.Errorf("stty size %q after the resize, want \"50 132\"", m[1])
		}
		cs.waitEnded(t, 5*time.Second)
		// Ended: the console is no longer there to resize (once the agent
		// has seen the end, a moment after the host may have).
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, err := c.System().ResizeDebugConsole(ctx, &api.ResizeDebugConsoleRequest{Pid: uint32(cs.pid), Width: 100, Height: 40})
			if errdefs.IsNotFound(err) || errdefs.IsFailedPrecondition(err) {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("resize of an ended console: %v, want not found or failed precondition", err)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		for _, r := range []*api.ResizeDebugConsoleRequest{{Pid: uint32(cs.pid)}, {Width: 10, Height: 10}, {Pid: 1, Width: 1 << 17, Height: 10}} {
			if _, err := c.System().ResizeDebugConsole(ctx, r); !errdefs.IsInvalidArgument(err) {
				t.Errorf("resize %v: %v, want invalid argument", r, err)
			}
		}
	})
	t.Run("background job keeps the terminal", func(t *testing.T) {
		cs := openConsole(t, c, &api.DebugConsoleRequest{})
		cs.write(t, "sleep 1000 & echo \"bg=$! ready-$((1+1))\"; exit 0\n")
		m := cs.waitOutput(t, `bg=(\d+) ready-2`)
		bg, _ := strconv.Atoi(m[1])
		t.Cleanup(func() { _ = unix.Kill(bg, unix.SIGKILL) })
		// The job holds the terminal open: the output is closed 2 s after
		// the shell exited (10 s leaves room for a loaded machine; without
		// the bound it would stay open as long as the job runs).
		cs.waitEnded(t, 10*time.Second)
		if st := endedLog(t, &logs, cs.pid); st != "exit 0" {
			t.Errorf("logged status %q, want exit 0", st)
		}
		if goneOrZombie(bg) {
			t.Errorf("background job %d is gone: the case tests nothing", bg)
		}
	})
	t.Run("host half-closes", func(t *testing.T) {
		cs := openConsole(t, c, &api.DebugConsoleRequest{})
		cs.waitOutput(t, `hull-debug# `)
		// The end of the host's input hangs the terminal up; the
		// channel's other direction stays open until the shell's end.
		if err := cs.s.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		r, err := c.System().WaitDebugConsole(ctx, &api.WaitDebugConsoleRequest{Pid: uint32(cs.pid)})
		if err != nil || r.GetExitStatus() != 129 {
			t.Errorf("WaitDebugConsole after the host's half-close = %v, %v; want 129 (hangup)", r, err)
		}
		cs.waitEnded(t, 10*time.Second)
		if !errors.Is(cs.endErr, io.EOF) {
			t.Errorf("the host's read ended with %v, want EOF: a half-close closed the read side", cs.endErr)
		}
	})
	t.Run("host hangs up", func(t *testing.T) {
		cs := openConsole(t, c, &api.DebugConsoleRequest{})
		cs.write(t, "echo ready-$((1+1)); sleep 1000\n")
		cs.waitOutput(t, `ready-2`)
		if err := cs.s.Close(); err != nil {
			t.Fatal(err)
		}
		// SIGHUP ends the shell at once, before the 5 s kill: the logged
		// status tells which ended it (the bounds leave room for a loaded
		// machine).
		took := waitGone(t, cs.pid, 10*time.Second, gone)
		t.Logf("shell gone %s after the hangup", took)
		cs.waitEnded(t, 10*time.Second)
		if st := endedLog(t, &logs, cs.pid); st != "signal hangup" {
			t.Errorf("logged status %q, want signal hangup", st)
		}
	})
	t.Run("hung-up session that ignores SIGHUP is killed", func(t *testing.T) {
		cs := openConsole(t, c, &api.DebugConsoleRequest{})
		cs.write(t, "trap '' HUP; sleep 1000 & echo \"bg=$! ready-$((1+1))\"; wait\n")
		m := cs.waitOutput(t, `bg=(\d+) ready-2`)
		bg, _ := strconv.Atoi(m[1])
		if err := cs.s.Close(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		time.Sleep(3 * time.Second)
		if gone(cs.pid) {
			t.Fatal("the shell ignoring SIGHUP ended before the kill: the case tests nothing")
		}
		took := 3*time.Second + waitGone(t, cs.pid, 12*time.Second, gone)
		t.Logf("shell gone %s after the hangup", took)
		// The background job has a process group of its own in the session.
		waitGone(t, bg, 14*time.Second-time.Since(start), goneOrZombie)
		if st := endedLog(t, &logs, cs.pid); st != "signal killed" {
			t.Errorf("logged status %q, want signal killed", st)
		}
	})
}

func TestDebugConsoleEndsWithTheAgent(t *testing.T) {
	requireBusybox(t)
	for _, tr := range testTransports {
		t.Run(tr.name, func(t *testing.T) { testDebugConsoleEndsWithTheAgent(t, tr) })
	}
}

func testDebugConsoleEndsWithTheAgent(t *testing.T, tr testTransport) {
	var logs captureLog
	c, served := dialConsoleAgent(t, tr, agent.ServeOptions{DebugConsole: true, DebugShell: hostBusybox}, &logs)
	cs := openConsole(t, c, &api.DebugConsoleRequest{})
	cs.write(t, "echo ready-$((1+1)); sleep 1000\n")
	cs.waitOutput(t, `ready-2`)
	if _, err := c.System().Shutdown(context.Background(), &api.ShutdownRequest{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-served:
	case <-time.After(5 * time.Second):
		t.Fatal("agent still serving 5 s after Shutdown")
	}
	// Serve returns only once its consoles have ended: their shells are
	// its children.
	if !gone(cs.pid) {
		t.Errorf("shell %d still exists when Serve returned", cs.pid)
	}
	cs.waitEnded(t, 3*time.Second)
}
