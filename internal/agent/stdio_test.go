package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func TestStreamTable(t *testing.T) {
	ctx := context.Background()
	t.Run("park then claim", func(t *testing.T) {
		st := newStreamTable(time.Minute)
		a, b := net.Pipe()
		defer func() { _ = b.Close() }()
		if err := st.park(ctx, 7, a); err != nil {
			t.Fatal(err)
		}
		c, err := st.claim(ctx, 7, time.Second)
		if err != nil || c != a {
			t.Fatalf("claim = %v, %v", c, err)
		}
		if _, err := st.claim(ctx, 7, 10*time.Millisecond); !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("second claim: %v, want failed precondition", err)
		}
	})
	t.Run("claim waits for park", func(t *testing.T) {
		st := newStreamTable(time.Minute)
		a, b := net.Pipe()
		defer func() { _ = b.Close() }()
		go func() { time.Sleep(20 * time.Millisecond); _ = st.park(ctx, 9, a) }()
		c, err := st.claim(ctx, 9, 5*time.Second)
		if err != nil || c != a {
			t.Fatalf("claim = %v, %v", c, err)
		}
	})
	t.Run("claim times out", func(t *testing.T) {
		st := newStreamTable(time.Minute)
		start := time.Now()
		_, err := st.claim(ctx, 3, 30*time.Millisecond)
		if !errdefs.IsFailedPrecondition(err) || time.Since(start) > time.Second {
			t.Fatalf("claim: %v after %s", err, time.Since(start))
		}
		// A late channel is parked, not handed to the gone claim.
		a, b := net.Pipe()
		defer func() { _ = b.Close() }()
		if err := st.park(ctx, 3, a); err != nil {
			t.Fatal(err)
		}
		if c, err := st.claim(ctx, 3, time.Second); err != nil || c != a {
			t.Fatalf("claim after late park = %v, %v", c, err)
		}
	})
	t.Run("claim canceled", func(t *testing.T) {
		st := newStreamTable(time.Minute)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := st.claim(cctx, 4, time.Minute); !errors.Is(err, context.Canceled) {
			t.Fatalf("claim: %v", err)
		}
	})
	t.Run("claim past the caller's deadline", func(t *testing.T) {
		// A deadline shorter than the wait is the same failure as the
		// wait's end: the host did not open the stream in time.
		st := newStreamTable(time.Minute)
		dctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
		defer cancel()
		if _, err := st.claim(dctx, 5, time.Minute); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "5") {
			t.Fatalf("claim: %v, want a failed precondition naming stream 5", err)
		}
	})
	t.Run("zero id", func(t *testing.T) {
		st := newStreamTable(time.Minute)
		if _, err := st.claim(ctx, 0, time.Second); !errdefs.IsInvalidArgument(err) {
			t.Fatalf("claim: %v", err)
		}
	})
	t.Run("duplicate refused", func(t *testing.T) {
		st := newStreamTable(time.Minute)
		a, b := net.Pipe()
		defer func() { _ = b.Close() }()
		c, d := net.Pipe()
		defer func() { _ = d.Close() }()
		if err := st.park(ctx, 5, a); err != nil {
			t.Fatal(err)
		}
		if err := st.park(ctx, 5, c); !errdefs.IsAlreadyExists(err) {
			t.Fatalf("duplicate park: %v", err)
		}
		if _, err := d.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("duplicate not closed: %v", err)
		}
	})
	t.Run("unclaimed closed", func(t *testing.T) {
		st := newStreamTable(20 * time.Millisecond)
		a, b := net.Pipe()
		if err := st.park(ctx, 6, a); err != nil {
			t.Fatal(err)
		}
		_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := b.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("unclaimed stream not closed: %v", err)
		}
		if _, err := st.claim(ctx, 6, 10*time.Millisecond); err == nil {
			t.Fatal("claimed an expired stream")
		}
	})
}

// TestCopyOut checks that output arrives whole and the host sees EOF.
func TestCopyOut(t *testing.T) {
	agentEnd, hostEnd := net.Pipe()
	data := make([]byte, 3<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	pr, pw := io.Pipe()
	go func() {
		_, _ = pw.Write(data)
		_ = pw.Close()
	}()
	done := make(chan error, 1)
	go func() {
		_, err := copyOut(agentEnd, pr)
		done <- err
	}()
	got, err := io.ReadAll(hostEnd)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if string(got) != string(data) {
		t.Fatalf("got %d bytes, want %d identical", len(got), len(data))
	}
}
