package channel

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"
)

func TestSync(t *testing.T) {
	for _, tc := range []struct {
		name string
		// stale bytes already in each direction, as left by an old session
		toAgent, toHost string
		// agentDelay lets the host repeat its sync frame first
		agentDelay time.Duration
	}{
		{name: "clean"},
		{name: "stale bytes both ways", toAgent: "\x00\x01\x00\x02garbageHUL", toHost: "old yamux frames HULL\x01\xf1\x00\x00\x00\x00\x00\x00\x00\x01"},
		{name: "late agent", agentDelay: 350 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host, agent := socketPair(t)
			type result struct {
				c   io.ReadWriteCloser
				err error
			}
			agentRes := make(chan result, 1)
			go func() {
				if tc.toHost != "" {
					_, _ = agent.Write([]byte(tc.toHost))
				}
				time.Sleep(tc.agentDelay)
				c, err := SyncAgent(agent)
				agentRes <- result{c, err}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if tc.toAgent != "" {
				if _, err := host.Write([]byte(tc.toAgent)); err != nil {
					t.Fatal(err)
				}
			}
			hc, err := SyncHost(ctx, host)
			if err != nil {
				t.Fatalf("SyncHost: %v", err)
			}
			// The first bytes after the sync arrive intact both ways.
			go func() { _, _ = hc.Write([]byte{0, 1, 2, 3}) }()
			ar := <-agentRes
			if ar.err != nil {
				t.Fatalf("SyncAgent: %v", ar.err)
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(ar.c, buf); err != nil || string(buf) != "\x00\x01\x02\x03" {
				t.Fatalf("agent read %q, %v", buf, err)
			}
			go func() { _, _ = ar.c.Write([]byte{9, 8}) }()
			if _, err := io.ReadFull(hc, buf[:2]); err != nil || string(buf[:2]) != "\x09\x08" {
				t.Fatalf("host read %q, %v", buf[:2], err)
			}
		})
	}
}

func TestSyncHostTimeout(t *testing.T) {
	host, agent := socketPair(t)
	go func() { _, _ = io.Copy(io.Discard, agent) }() // reads, never answers
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := SyncHost(ctx, host)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("SyncHost error = %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("SyncHost took %s", d)
	}
}

func FuzzSyncAgent(f *testing.F) {
	f.Add([]byte("HULL\x01\xf0\x00\x00\x00\x00\x00\x00\x00\x07\x00rest"))
	f.Add([]byte("xxHULHULL\x01\xf0\x01\x02\x03\x04\x05\x06\x07\x08HULL\x01\xf0\x01\x02\x03\x04\x05\x06\x07\x08\x00"))
	f.Add([]byte("HULL\x01\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c := &fakeConn{r: b}
		rc, err := SyncAgent(c)
		if err != nil {
			return
		}
		if len(c.w) != syncSize {
			t.Fatalf("echo of %d bytes", len(c.w))
		}
		_, _ = io.ReadAll(rc)
	})
}

// socketPair returns two ends of a unix stream socket: buffered, as the
// hypervisor's socket is.
func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	a, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	return a, b
}

type fakeConn struct {
	r []byte
	w []byte
}

func (c *fakeConn) Read(p []byte) (int, error) {
	if len(c.r) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.r)
	c.r = c.r[n:]
	return n, nil
}
func (c *fakeConn) Write(p []byte) (int, error) { c.w = append(c.w, p...); return len(p), nil }
func (c *fakeConn) Close() error                { return nil }
