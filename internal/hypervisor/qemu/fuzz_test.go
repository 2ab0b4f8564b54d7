package qemu

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/containerd/log"
)

// FuzzQMPRead feeds the QMP reader what the monitor socket may carry (QEMU
// relays guest-triggered events, and a confused or compromised QEMU may
// send anything): the reader must end when the connection does, fail a
// pending command with an error instead of hanging, and hand events to the
// VM's handler without panicking.
func FuzzQMPRead(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		v := &VM{}
		q := &qmpConn{
			conn:    client,
			logger:  log.L,
			onEvent: v.onEvent,
			pending: map[string]chan qmpReply{},
			closed:  make(chan struct{}),
		}
		greeted := make(chan error, 1)
		go q.read(greeted)
		go func() {
			// Read the command, answer with data, hang up.
			go func() { _, _ = io.Copy(io.Discard, server) }()
			_, _ = server.Write(data)
			_ = server.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var gerr error
		select {
		case gerr = <-greeted:
		case <-ctx.Done():
			t.Fatal("no greeting outcome before the connection ended")
		}
		if gerr == nil {
			_, err := q.execute(ctx, "query-status", nil)
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("execute hung on %q", data)
			}
		}
		select {
		case <-q.closed:
		case <-ctx.Done():
			t.Fatal("the reader did not end with the connection")
		}
		if _, err := q.execute(ctx, "query-status", nil); err == nil {
			t.Fatal("a command on the ended connection succeeded")
		}
	})
}
