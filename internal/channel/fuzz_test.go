package channel

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"
)

// FuzzSyncHost feeds SyncHost what a guest may send on the serial port:
// junk, then (or not) the echo of the host's nonce, then more bytes, then
// the end of the connection. SyncHost must return within its context, and
// once it found the echo hand over exactly the bytes that followed it.
func FuzzSyncHost(f *testing.F) {
	f.Fuzz(func(t *testing.T, junk []byte, echo bool, after []byte) {
		// A unix socket, as QEMU's end of the port is on the host: a
		// net.Pipe would fail SetDeadline once the guest closed.
		host, guest := socketPair(t)
		go func() {
			defer func() { _ = guest.Close() }()
			frame := make([]byte, syncSize)
			if _, err := io.ReadFull(guest, frame); err != nil {
				return
			}
			// Drain the host's repeated sync frames.
			go func() { _, _ = io.Copy(io.Discard, guest) }()
			out := append([]byte(nil), junk...)
			if echo {
				frame[len(Magic)+1] = kindEcho
				out = append(out, frame...)
				out = append(out, after...)
			}
			_, _ = guest.Write(out)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		start := time.Now()
		c, err := SyncHost(ctx, host)
		if time.Since(start) > 6*time.Second {
			t.Fatalf("SyncHost took %s", time.Since(start))
		}
		if !echo {
			if err == nil {
				t.Fatalf("SyncHost synced on junk %q without the echo", junk)
			}
			return
		}
		if err != nil {
			t.Fatalf("SyncHost with the echo after %s: %v", time.Since(start), err)
		}
		got, _ := io.ReadAll(c)
		if !bytes.Equal(got, after) {
			t.Fatalf("after the echo: got %q, want %q", got, after)
		}
	})
}
