package agentclient

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/hashicorp/yamux"

	"github.com/hull-runtime/hull/internal/channel"
)

// fakeGuest is the guest's end of a virtio-serial session in a test: a
// yamux server on one end of a pipe whose other end the host's transport
// uses.
type fakeGuest struct {
	sess *yamux.Session
	// channels receives every host channel the guest accepted, after its
	// header was acknowledged.
	channels chan net.Conn
}

// startFakeGuest starts a host transport and a guest that accepts every
// stream the host opens and acknowledges its channel header.
func startFakeGuest(t *testing.T, lim limits) (*serialTransport, *fakeGuest) {
	t.Helper()
	hostEnd, guestEnd := net.Pipe()
	ctx := context.Background()
	tr, err := newSerialTransport(ctx, hostEnd, lim)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.close)
	sess, err := yamux.Server(guestEnd, channel.YamuxConfig(ctx))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sess.Close() })
	g := &fakeGuest{sess: sess, channels: make(chan net.Conn, 64)}
	go func() {
		for {
			s, err := sess.Accept()
			if err != nil {
				return
			}
			if _, err := channel.ReadHeader(s); err != nil {
				_ = s.Close()
				continue
			}
			if err := channel.WriteAck(s, channel.AckOK); err != nil {
				_ = s.Close()
				continue
			}
			g.channels <- s
		}
	}()
	return tr, g
}

// accepted is the next channel the guest accepted.
func (g *fakeGuest) accepted(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-g.channels:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("the guest accepted no channel")
		return nil
	}
}

// heapInUse is the heap in use after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestGuestOpenedStreams floods the host with streams opened by the guest,
// each followed by data: the host buffers at most the accept backlog's
// worth, refuses the rest, and its own opens keep working.
func TestGuestOpenedStreams(t *testing.T) {
	tr, g := startFakeGuest(t, limits{maxStreams: 8, openTimeout: 10 * time.Second})
	before := heapInUse()

	const streams, perStream = 1000, 64 << 10
	payload := make([]byte, perStream)
	refused := 0
	for range streams {
		s, err := g.sess.OpenStream()
		if err != nil {
			t.Fatalf("guest open: %v", err)
		}
		_ = s.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := s.Write(payload); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("guest write blocked: %v", err)
			}
			refused++
		}
	}
	// A round trip through the host's session: every frame before it has
	// been handled.
	if _, err := g.sess.Ping(); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if n := tr.sess.NumStreams(); n > channel.HostAcceptBacklog {
		t.Errorf("host session holds %d streams, want at most the backlog %d", n, channel.HostAcceptBacklog)
	}
	// The backlog's streams may each hold their data; 1000 streams' worth
	// (64 MiB) must not be held.
	const bound = 8 << 20
	if grown := int64(heapInUse()) - int64(before); grown > bound {
		t.Errorf("host heap grew by %d bytes after %d guest streams of %d bytes, want at most %d", grown, streams, perStream, bound)
	}
	t.Logf("guest writes refused: %d of %d", refused, streams)

	// The host still opens channels.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := openChannel(ctx, tr, channel.Header{Kind: channel.KindLog})
	if err != nil {
		t.Fatalf("host open after the flood: %v", err)
	}
	defer func() { _ = c.Close() }()
	gc := g.accepted(t)
	if _, err := gc.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'x' {
		t.Fatalf("host read %q, %v; want x", b[:], err)
	}
}

// TestUnreadStreamBlocksGuest: a guest writing into a host stream that the
// host does not read is stopped by the stream's window, not buffered.
func TestUnreadStreamBlocksGuest(t *testing.T) {
	tr, g := startFakeGuest(t, limits{maxStreams: 8, openTimeout: 10 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := openChannel(ctx, tr, channel.Header{Kind: channel.KindLog})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	gc := g.accepted(t)
	_ = gc.SetWriteDeadline(time.Now().Add(time.Second))
	n, err := gc.Write(make([]byte, 4<<20))
	if !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, yamux.ErrTimeout) {
		t.Fatalf("guest wrote %d bytes into an unread stream with error %v, want a blocked write", n, err)
	}
	if window := 256 << 10; n > window {
		t.Errorf("guest wrote %d bytes into an unread stream, want at most the window %d", n, window)
	}
}

// TestOpenWithoutAck: against a guest that reads everything and answers
// nothing, every open fails when its context ends, also once more opens
// are unacknowledged than yamux lets wait, and the opens left waiting
// inside yamux stay within the stream limit.
func TestOpenWithoutAck(t *testing.T) {
	hostEnd, guestEnd := net.Pipe()
	go func() { _, _ = io.Copy(io.Discard, guestEnd) }()
	t.Cleanup(func() { _ = guestEnd.Close() })
	const maxStreams = 8
	tr, err := newSerialTransport(context.Background(), hostEnd, limits{maxStreams: maxStreams, openTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.close)

	goroutines := runtime.NumGoroutine()
	for i := range 3 * maxStreams {
		const limit = 100 * time.Millisecond
		ctx, cancel := context.WithTimeout(context.Background(), limit)
		start := time.Now()
		c, err := openChannel(ctx, tr, channel.Header{Kind: channel.KindLog})
		took := time.Since(start)
		cancel()
		if err == nil {
			_ = c.Close()
			t.Fatalf("open %d: succeeded without an ack", i)
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("open %d: %v, want a deadline error", i, err)
		}
		if took > limit+time.Second {
			t.Errorf("open %d took %s, want about %s", i, took, limit)
		}
	}
	if grown := runtime.NumGoroutine() - goroutines; grown > maxStreams+2 {
		t.Errorf("%d goroutines more after the failed opens, want at most the stream limit %d", grown, maxStreams)
	}
}

// TestStreamLimit: the host holds at most maxStreams channels; one more
// fails when its context ends, and a closed channel frees its slot.
func TestStreamLimit(t *testing.T) {
	const max = 3
	tr, _ := startFakeGuest(t, limits{maxStreams: max, openTimeout: 10 * time.Second})
	open := func(limit time.Duration) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), limit)
		defer cancel()
		return openChannel(ctx, tr, channel.Header{Kind: channel.KindLog})
	}
	var conns []net.Conn
	for i := range max {
		c, err := open(5 * time.Second)
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	if c, err := open(200 * time.Millisecond); !errdefs.IsResourceExhausted(err) {
		if c != nil {
			_ = c.Close()
		}
		t.Fatalf("open beyond the limit: %v, want resource exhausted", err)
	}
	_ = conns[0].Close()
	_ = conns[0].Close() // a second Close frees nothing more
	c, err := open(5 * time.Second)
	if err != nil {
		t.Fatalf("open after a close: %v", err)
	}
	defer func() { _ = c.Close() }()
	if c, err := open(200 * time.Millisecond); !errdefs.IsResourceExhausted(err) {
		if c != nil {
			_ = c.Close()
		}
		t.Fatalf("open beyond the limit after a double close: %v, want resource exhausted", err)
	}
	for _, c := range conns[1:] {
		_ = c.Close()
	}
}
