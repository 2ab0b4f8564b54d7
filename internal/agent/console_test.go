package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	api "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/channel"
)

// children lists the pids whose parent is this process, zombies included.
func children(t *testing.T) []int {
	t.Helper()
	self := os.Getpid()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		if st, err := parseStat(b); err == nil && st.ppid == self {
			pid, _ := strconv.Atoi(e.Name())
			out = append(out, pid)
		}
	}
	return out
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// A console refused after the fork (the agent is shutting down) leaves no
// process, zombie or file behind, and closes its stream.
func TestDebugConsoleRefusedAfterFork(t *testing.T) {
	const shell = "/bin/busybox"
	if _, err := os.Stat(shell); err != nil {
		t.Fatalf("the test runs %s as the debug shell; install busybox-static: %v", shell, err)
	}
	a, err := newAgent(false, channel.Transport{Kind: "unix"}, newLogRing(16, 4096))
	if err != nil {
		t.Fatal(err)
	}
	a.debugShell = shell
	a.consoles.endAll(context.Background(), 0)

	// Start the poller before counting: the pty master is its first user.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	_, _ = r.Close(), w.Close()
	host, guest := net.Pipe()
	defer func() { _ = host.Close() }()
	kids, fds := children(t), openFDs(t)
	if err := a.streams.park(context.Background(), 7, guest); err != nil {
		t.Fatal(err)
	}

	_, err = a.startConsole(context.Background(), &api.DebugConsoleRequest{StreamId: 7})
	if !errdefs.IsUnavailable(err) {
		t.Fatalf("startConsole error = %v, want unavailable", err)
	}
	if got := children(t); !slices.Equal(got, kids) {
		t.Errorf("children %v after the refusal, %v before", got, kids)
	}
	if got := openFDs(t); got != fds {
		t.Errorf("%d open files after the refusal, %d before", got, fds)
	}
	_ = host.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := host.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("reading the host's end: %v, want EOF (stream closed)", err)
	}
}
