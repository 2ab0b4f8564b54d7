package sandbox

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func TestFind(t *testing.T) {
	root := t.TempDir()
	long := strings.Repeat("cd", 32) // a CRI pod ID: a hashed directory
	for _, id := range []string{"plain", "web@default", "web@k8s.io", "db@default", long + "@k8s.io"} {
		dir := StateDir(root, id)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := writeRecord(dir, record{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		id, want string
		err      func(error) bool
	}{
		{id: "plain", want: "plain"},
		{id: "db", want: "db@default"},
		{id: "web@k8s.io", want: "web@k8s.io"},
		{id: long, want: long + "@k8s.io"},
		{id: "web", err: errdefs.IsInvalidArgument}, // two namespaces
		{id: "nothing", err: errdefs.IsNotFound},
		{id: "pla", err: errdefs.IsNotFound}, // no prefix matching but "@"
		{id: "../etc", err: errdefs.IsInvalidArgument},
	} {
		dir, full, err := Find(root, tc.id)
		if tc.err != nil {
			if !tc.err(err) {
				t.Errorf("Find(%q) = %q, %v; want an error of the other class", tc.id, full, err)
			}
			continue
		}
		if err != nil || full != tc.want || dir != StateDir(root, tc.want) {
			t.Errorf("Find(%q) = %q, %q, %v; want %q", tc.id, dir, full, err, tc.want)
		}
	}
}

// fakeConsole serves one console request on dir's socket with reply, then
// writes after to the client and echoes what it reads until the client
// closes. It returns the request it got.
func fakeConsole(t *testing.T, dir string, reply ConsoleReply, after string) <-chan ConsoleRequest {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(dir, ConsoleSocketName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	got := make(chan ConsoleRequest, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer func() { _ = c.Close() }()
		line, err := bufio.NewReader(c).ReadBytes('\n')
		if err != nil {
			return
		}
		var r ConsoleRequest
		_ = json.Unmarshal(line, &r)
		got <- r
		_ = writeReply(c, reply)
		_, _ = io.WriteString(c, after)
		_, _ = io.Copy(c, c)
	}()
	return got
}

func TestDialConsole(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("no socket", func(t *testing.T) {
		dir := t.TempDir()
		if err := writeRecord(dir, record{ID: "x"}); err != nil {
			t.Fatal(err)
		}
		_, _, err := DialConsole(ctx, dir, ConsoleRequest{})
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "debug_console = true") {
			t.Fatalf("err = %v, want FailedPrecondition naming the setting", err)
		}
	})
	t.Run("sandbox gone", func(t *testing.T) {
		_, _, err := DialConsole(ctx, t.TempDir(), ConsoleRequest{})
		if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "gone") {
			t.Fatalf("err = %v, want NotFound saying the sandbox is gone", err)
		}
	})
	t.Run("refused", func(t *testing.T) {
		dir := t.TempDir()
		fakeConsole(t, dir, ConsoleReply{Error: "the guest image has no debug shell"}, "")
		_, _, err := DialConsole(ctx, dir, ConsoleRequest{})
		if err == nil || !strings.Contains(err.Error(), "no debug shell") {
			t.Fatalf("err = %v, want the sandbox's reason", err)
		}
	})
	t.Run("terminal follows the reply", func(t *testing.T) {
		dir := t.TempDir()
		// The terminal's first bytes arrive with the reply line: none may
		// be lost to the reply's reading.
		got := fakeConsole(t, dir, ConsoleReply{PID: 42}, "prompt# ")
		c, pid, err := DialConsole(ctx, dir, ConsoleRequest{Term: "xterm", Width: 100, Height: 30})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Close() }()
		if pid != 42 {
			t.Errorf("pid %d, want 42", pid)
		}
		if r := <-got; r != (ConsoleRequest{Term: "xterm", Width: 100, Height: 30}) {
			t.Errorf("request %+v", r)
		}
		if _, err := io.WriteString(c, "typed"); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len("prompt# typed"))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "prompt# typed" {
			t.Fatalf("read %q, %v; want the bytes after the reply, then the echo", buf, err)
		}
	})
	t.Run("resize", func(t *testing.T) {
		dir := t.TempDir()
		got := fakeConsole(t, dir, ConsoleReply{}, "")
		if err := ResizeConsole(ctx, dir, 7, 120, 40); err != nil {
			t.Fatal(err)
		}
		if r := <-got; r != (ConsoleRequest{ResizePID: 7, Width: 120, Height: 40}) {
			t.Errorf("request %+v", r)
		}
		dir = t.TempDir()
		fakeConsole(t, dir, ConsoleReply{Error: "no debug console with shell pid 7"}, "")
		if err := ResizeConsole(ctx, dir, 7, 120, 40); err == nil || !strings.Contains(err.Error(), "pid 7") {
			t.Errorf("err = %v, want the sandbox's reason", err)
		}
		if err := ResizeConsole(ctx, dir, 0, 1, 1); !errdefs.IsInvalidArgument(err) {
			t.Errorf("pid 0: %v", err)
		}
	})
	t.Run("wait", func(t *testing.T) {
		dir := t.TempDir()
		three := int32(3)
		got := fakeConsole(t, dir, ConsoleReply{ExitStatus: &three}, "")
		if status, err := WaitConsole(ctx, dir, 9); err != nil || status != 3 {
			t.Fatalf("WaitConsole = %d, %v; want 3", status, err)
		}
		if r := <-got; r != (ConsoleRequest{WaitPID: 9}) {
			t.Errorf("request %+v", r)
		}
		// A zero status is a status too; no status at all is an error.
		dir = t.TempDir()
		zero := int32(0)
		fakeConsole(t, dir, ConsoleReply{ExitStatus: &zero}, "")
		if status, err := WaitConsole(ctx, dir, 9); err != nil || status != 0 {
			t.Errorf("WaitConsole = %d, %v; want 0", status, err)
		}
		dir = t.TempDir()
		fakeConsole(t, dir, ConsoleReply{}, "")
		if _, err := WaitConsole(ctx, dir, 9); err == nil {
			t.Error("a reply without a status was taken for one")
		}
	})
	t.Run("server never answers", func(t *testing.T) {
		dir := t.TempDir()
		l, err := net.Listen("unix", filepath.Join(dir, ConsoleSocketName))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = l.Close() }()
		sctx, scancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer scancel()
		if _, _, err := DialConsole(sctx, dir, ConsoleRequest{}); err == nil || !strings.Contains(err.Error(), context.DeadlineExceeded.Error()) {
			t.Fatalf("err = %v, want the deadline", err)
		}
	})
}

func TestReadLine(t *testing.T) {
	r := strings.NewReader("first\nrest")
	if l, err := readLine(r, 10); err != nil || string(l) != "first" {
		t.Fatalf("readLine = %q, %v", l, err)
	}
	if rest, _ := io.ReadAll(r); string(rest) != "rest" {
		t.Errorf("left %q, want the bytes after the line untouched", rest)
	}
	if _, err := readLine(strings.NewReader(strings.Repeat("x", 20)+"\n"), 10); err == nil {
		t.Error("a line over the limit was read")
	}
}

// TestConsoleServer drives the sandbox's side of console.sock with requests
// that never reach the agent: a sandbox that is not running refuses them.
func TestConsoleServer(t *testing.T) {
	dir := t.TempDir()
	s := &Sandbox{id: "t", stateDir: dir, state: StateStarting, bg: context.Background()}
	var undo cleanups
	if err := s.listenConsoles(&undo); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.closeConsoles)
	if fi, err := os.Stat(filepath.Join(dir, ConsoleSocketName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v, %v; want mode 0600", fi, err)
	}
	ask := func(t *testing.T, line string) ConsoleReply {
		t.Helper()
		c, err := net.Dial("unix", filepath.Join(dir, ConsoleSocketName))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Close() }()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, line); err != nil {
			t.Fatal(err)
		}
		reply, err := readLine(c, consoleRequestLimit)
		if err != nil {
			t.Fatal(err)
		}
		var r ConsoleReply
		if err := json.Unmarshal(reply, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	for _, tc := range []struct{ name, line, want string }{
		{"not json", "hello\n", "bad console request"},
		{"too long", strings.Repeat("x", consoleRequestLimit+10) + "\n", "bad console request"},
		{"sandbox not running", `{"term":"xterm"}` + "\n", "sandbox t is starting"},
		{"resize, sandbox not running", `{"resize_pid":3,"width":80,"height":24}` + "\n", "sandbox t is starting"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if r := ask(t, tc.line); r.PID != 0 || !strings.Contains(r.Error, tc.want) {
				t.Errorf("reply %+v, want an error with %q", r, tc.want)
			}
		})
	}
	t.Run("close ends a client that says nothing", func(t *testing.T) {
		c, err := net.Dial("unix", filepath.Join(dir, ConsoleSocketName))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Close() }()
		// Let the server take the connection before it closes.
		time.Sleep(100 * time.Millisecond)
		start := time.Now()
		s.closeConsoles()
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("closeConsoles took %v with a silent client (the request wait is %v)", took, consoleRequestTimeout)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Errorf("client read after close: %v, want EOF", err)
		}
		if _, err := os.Stat(filepath.Join(dir, ConsoleSocketName)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket after close: %v, want it gone", err)
		}
	})
}
