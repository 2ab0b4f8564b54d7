package agent

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/hull-runtime/hull/internal/channel"
)

// TestAcceptRetryable pins the class of every accept errno: the channel
// server keeps serving after a transient one and stops after any other.
func TestAcceptRetryable(t *testing.T) {
	for _, tc := range []struct {
		err   error
		retry bool
	}{
		{syscall.ECONNABORTED, true},
		{syscall.ECONNRESET, true},
		{syscall.EPROTO, true},
		{syscall.EINTR, true},
		{syscall.EAGAIN, true},
		{syscall.EMFILE, true},
		{syscall.ENFILE, true},
		{syscall.ENOBUFS, true},
		{syscall.ENOMEM, true},
		{syscall.EBADF, false},
		{syscall.EINVAL, false},
		{syscall.ENOTSOCK, false},
		{net.ErrClosed, false},
		{errors.New("not an errno"), false},
	} {
		t.Run(tc.err.Error(), func(t *testing.T) {
			err := &net.OpError{Op: "accept", Net: "vsock", Err: os.NewSyscallError("accept4", tc.err)}
			if got := acceptRetryable(err); got != tc.retry {
				t.Errorf("acceptRetryable(%v) = %v, want %v", err, got, tc.retry)
			}
		})
	}
}

// scriptedListener returns its errors from Accept in turn, then a
// connection, then net.ErrClosed.
type scriptedListener struct {
	errs []error
	conn net.Conn
}

func (l *scriptedListener) Accept() (net.Conn, error) {
	if len(l.errs) > 0 {
		err := l.errs[0]
		l.errs = l.errs[1:]
		return nil, err
	}
	if l.conn != nil {
		c := l.conn
		l.conn = nil
		return c, nil
	}
	return nil, net.ErrClosed
}
func (l *scriptedListener) Close() error   { return nil }
func (l *scriptedListener) Addr() net.Addr { return chanAddr{} }

// TestServeChannelsAcceptErrors: transient accept errors do not stop the
// channel server (the connection after them is served); a fatal one does,
// with the error.
func TestServeChannelsAcceptErrors(t *testing.T) {
	a, ctx := testAgent(t)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	host, guest := net.Pipe()
	defer func() { _ = host.Close() }()
	transient := func(errno syscall.Errno) error {
		return &net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", errno)}
	}
	l := &scriptedListener{
		errs: []error{transient(syscall.EMFILE), transient(syscall.ECONNABORTED), transient(syscall.ENOBUFS)},
		conn: guest,
	}
	served := make(chan error, 1)
	go func() { served <- a.serveChannels(ctx, l) }()
	// The connection after the errors is a channel the agent answers.
	_ = host.SetDeadline(time.Now().Add(5 * time.Second))
	if err := channel.Open(ctx, host, channel.Header{Kind: channel.KindLog}); err != nil {
		t.Fatalf("opening a channel after transient accept errors: %v", err)
	}
	select {
	case err := <-served:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("serveChannels = %v, want the closed listener's error", err)
		}
	case <-ctx.Done():
		t.Fatal("serveChannels did not end on a closed listener")
	}

	l = &scriptedListener{errs: []error{transient(syscall.EBADF)}}
	if err := a.serveChannels(ctx, l); !errors.Is(err, syscall.EBADF) {
		t.Errorf("serveChannels after EBADF = %v, want EBADF", err)
	}
}
