package agentclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/channel"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// TestDialRetryable pins the class of every connect errno: a change to
// dialRetry that turns a fatal error into a retry (a dial spinning until
// its timeout) or the reverse (a boot failing while the agent starts) fails
// here.
func TestDialRetryable(t *testing.T) {
	for _, tc := range []struct {
		errno syscall.Errno
		retry bool
	}{
		{syscall.ECONNREFUSED, true},
		{syscall.ECONNRESET, true},
		{syscall.ETIMEDOUT, true},
		{syscall.ENODEV, true},
		{syscall.ENOENT, true},
		{syscall.EAGAIN, true},
		{syscall.EINTR, true},
		{syscall.EAFNOSUPPORT, false},
		{syscall.ENETUNREACH, false},
		{syscall.EACCES, false},
		{syscall.EPERM, false},
		{syscall.EINVAL, false},
		{syscall.EADDRNOTAVAIL, false},
		{syscall.EMFILE, false},
		{syscall.ENFILE, false},
		{syscall.ENOMEM, false},
		{syscall.ENOBUFS, false},
		{syscall.ENOTSOCK, false},
		{syscall.ENOTDIR, false}, // not listed: fatal
		{syscall.EHOSTDOWN, false},
	} {
		t.Run(tc.errno.Error(), func(t *testing.T) {
			// As the dialers return it: a *net.OpError around an
			// *os.SyscallError.
			err := &net.OpError{Op: "dial", Net: "vsock", Err: os.NewSyscallError("connect", tc.errno)}
			if got := dialRetryable(err); got != tc.retry {
				t.Errorf("dialRetryable(%v) = %v, want %v", err, got, tc.retry)
			}
			if got := dialRetryable(fmt.Errorf("wrapped: %w", err)); got != tc.retry {
				t.Errorf("dialRetryable of a wrapped %v = %v, want %v", tc.errno, got, tc.retry)
			}
		})
	}
	t.Run("not an errno", func(t *testing.T) {
		if dialRetryable(errors.New("something else")) {
			t.Error("an error without an errno is retried")
		}
	})
}

// TestConnTransportDialErrors: through openChannel, a retryable dial error
// is retried until the context ends, a fatal one ends the open at once.
func TestConnTransportDialErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		errno syscall.Errno
		// dials is how many dials happen in 500 ms: at least, or at
		// most.
		minDials, maxDials int
		// untilDeadline: the open ends with the context, not before.
		untilDeadline bool
	}{
		{name: "refused is retried", errno: syscall.ECONNREFUSED, minDials: 3, maxDials: 1000, untilDeadline: true},
		{name: "reset is retried", errno: syscall.ECONNRESET, minDials: 3, maxDials: 1000, untilDeadline: true},
		{name: "no AF_VSOCK is fatal", errno: syscall.EAFNOSUPPORT, minDials: 1, maxDials: 1},
		{name: "permission is fatal", errno: syscall.EACCES, minDials: 1, maxDials: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dials := 0
			tr := newConnTransport("test", func(context.Context) (net.Conn, error) {
				dials++
				return nil, &net.OpError{Op: "dial", Net: "vsock", Err: os.NewSyscallError("connect", tc.errno)}
			}, limits{maxStreams: 4})
			const limit = 500 * time.Millisecond
			ctx, cancel := context.WithTimeout(context.Background(), limit)
			defer cancel()
			start := time.Now()
			c, err := openChannel(ctx, tr, channel.Header{Kind: channel.KindRPC})
			took := time.Since(start)
			if err == nil {
				_ = c.Close()
				t.Fatal("open succeeded")
			}
			// The last dial error is the reason either way.
			if !errors.Is(err, tc.errno) {
				t.Errorf("open error = %v, want %v", err, tc.errno)
			}
			if tc.untilDeadline != (took >= limit/2) {
				t.Errorf("open took %s with a %s limit; until the limit: %v", took, limit, tc.untilDeadline)
			}
			if dials < tc.minDials || dials > tc.maxDials {
				t.Errorf("%d dials, want %d to %d", dials, tc.minDials, tc.maxDials)
			}
			// Every failed dial gave its slot back.
			if n := len(tr.slots); n != 0 {
				t.Errorf("%d slots held after failed dials", n)
			}
		})
	}
}

// TestDialVsockUnixFatal: an endpoint that can never be a socket fails
// Dial at once with the reason, not at the dial timeout.
func TestDialVsockUnixFatal(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c, err := Dial(context.Background(), hypervisor.AgentEndpoint{Transport: hypervisor.TransportVsock, VsockUnixDir: file}, Options{DialTimeout: 30 * time.Second})
	if err == nil {
		_ = c.Close()
		t.Fatal("Dial succeeded")
	}
	if !errors.Is(err, syscall.ENOTDIR) || errdefs.IsDeadlineExceeded(err) {
		t.Errorf("Dial error = %v, want ENOTDIR", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Dial took %s, want a failure at once", d)
	}
}

// TestCloseEndsStreams: Client.Close ends every channel at once, stdio
// streams included, on both transports: a host reader waiting on a stream
// whose agent side never writes (a frozen guest) returns, and no open
// succeeds afterwards.
func TestCloseEndsStreams(t *testing.T) {
	for _, tr := range testTransports {
		t.Run(tr.name, func(t *testing.T) {
			ep, _, _ := startAgent(t, tr, 0)
			ctx := context.Background()
			c, err := Dial(ctx, ep, Options{DialTimeout: 10 * time.Second, CallTimeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			// Parked in the agent, claimed by no process: nothing is
			// ever written to it.
			var reads []chan error
			for range 3 {
				s, err := c.OpenStream(ctx, c.NewStreamID())
				if err != nil {
					t.Fatal(err)
				}
				done := make(chan error, 1)
				go func() {
					_, err := io.ReadAll(s)
					done <- err
				}()
				reads = append(reads, done)
			}
			select {
			case err := <-reads[0]:
				t.Fatalf("stream read returned before Close: %v", err)
			case <-time.After(200 * time.Millisecond):
			}
			closed := make(chan error, 1)
			go func() { closed <- c.Close() }()
			select {
			case err := <-closed:
				if err != nil && !errors.Is(err, net.ErrClosed) {
					t.Logf("close: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Close did not return")
			}
			for i, done := range reads {
				select {
				case err := <-done:
					t.Logf("stream %d: read ended with %v", i, err)
				case <-time.After(5 * time.Second):
					t.Fatalf("stream %d: read still waiting 5 s after Client.Close", i)
				}
			}
			if s, err := c.OpenStream(ctx, c.NewStreamID()); err == nil {
				_ = s.Close()
				t.Error("OpenStream succeeded after Close")
			} else if strings.Contains(err.Error(), "deadline") {
				t.Errorf("OpenStream after Close waited for its timeout: %v", err)
			}
		})
	}
}
