package channel

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func TestHeaderRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    Header
		wire []byte
	}{
		{"rpc", Header{Kind: KindRPC}, []byte("HULL\x01\x01")},
		{"log", Header{Kind: KindLog}, []byte("HULL\x01\x02")},
		{"stdio", Header{Kind: KindStdio, StreamID: 0x0102030405060708}, []byte("HULL\x01\x03\x01\x02\x03\x04\x05\x06\x07\x08")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.h.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, tc.wire) {
				t.Fatalf("encoded %q, want %q", b, tc.wire)
			}
			h, n, err := Parse(append(b, "trailing"...))
			if err != nil || n != len(tc.wire) || h != tc.h {
				t.Fatalf("Parse = %+v, %d, %v; want %+v, %d", h, n, err, tc.h, len(tc.wire))
			}
			h, err = ReadHeader(bytes.NewReader(b))
			if err != nil || h != tc.h {
				t.Fatalf("ReadHeader = %+v, %v; want %+v", h, err, tc.h)
			}
		})
	}
}

func TestHeaderEncodeErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    Header
	}{
		{"unknown kind", Header{Kind: 9}},
		{"zero kind", Header{}},
		{"rpc with stream id", Header{Kind: KindRPC, StreamID: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.h.MarshalBinary(); err == nil {
				t.Fatalf("MarshalBinary(%+v) succeeded", tc.h)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want error
		ack  Ack
	}{
		{"empty", "", io.ErrUnexpectedEOF, AckBadHeader},
		{"short magic", "HU", io.ErrUnexpectedEOF, AckBadHeader},
		{"bad magic early", "X", ErrBadHeader, AckBadHeader},
		{"bad magic", "HELO\x01\x01", ErrBadHeader, AckBadHeader},
		{"http", "GET / HTTP/1.1", ErrBadHeader, AckBadHeader},
		{"version", "HULL\x02\x01", ErrBadVersion, AckBadVersion},
		{"kind zero", "HULL\x01\x00", ErrBadKind, AckBadKind},
		{"kind unknown", "HULL\x01\x7f", ErrBadKind, AckBadKind},
		{"stdio short", "HULL\x01\x03\x00\x00", io.ErrUnexpectedEOF, AckBadHeader},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Parse([]byte(tc.in))
			if !errors.Is(err, tc.want) {
				t.Fatalf("Parse(%q) error = %v, want %v", tc.in, err, tc.want)
			}
			if got := AckFor(err); got != tc.ack {
				t.Fatalf("AckFor(%v) = %d, want %d", err, got, tc.ack)
			}
		})
	}
}

func TestReadHeaderShort(t *testing.T) {
	for _, in := range []string{"HUL", "HULL\x01\x03\x00"} {
		if _, err := ReadHeader(bytes.NewReader([]byte(in))); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("ReadHeader(%q) error = %v, want unexpected EOF", in, err)
		}
	}
}

func TestAckErr(t *testing.T) {
	for _, tc := range []struct {
		ack   Ack
		class func(error) bool
	}{
		{AckBadHeader, errdefs.IsInvalidArgument},
		{AckBadVersion, errdefs.IsNotImplemented},
		{AckBadKind, errdefs.IsNotImplemented},
		{AckUnavailable, errdefs.IsUnavailable},
		{99, errdefs.IsUnknown},
	} {
		if err := tc.ack.Err(); !tc.class(err) {
			t.Errorf("Ack(%d).Err() = %v, wrong class", tc.ack, err)
		}
	}
	if err := AckOK.Err(); err != nil {
		t.Errorf("AckOK.Err() = %v", err)
	}
}

// agentSide reads a header and answers with ack.
func agentSide(t *testing.T, c net.Conn, ack Ack) <-chan Header {
	t.Helper()
	ch := make(chan Header, 1)
	go func() {
		h, _ := ReadHeader(c)
		ch <- h
		if ack != 255 {
			_ = WriteAck(c, ack)
		}
	}()
	return ch
}

func TestOpen(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ack     Ack // 255: never answer
		timeout time.Duration
		check   func(error) bool
	}{
		{"ok", AckOK, time.Second, func(err error) bool { return err == nil }},
		{"refused", AckBadKind, time.Second, errdefs.IsNotImplemented},
		{"shutting down", AckUnavailable, time.Second, errdefs.IsUnavailable},
		{"no answer", 255, 50 * time.Millisecond, func(err error) bool { return errors.Is(err, context.DeadlineExceeded) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host, agent := net.Pipe()
			defer func() { _ = host.Close() }()
			defer func() { _ = agent.Close() }()
			got := agentSide(t, agent, tc.ack)
			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			start := time.Now()
			err := Open(ctx, host, Header{Kind: KindLog})
			if !tc.check(err) {
				t.Fatalf("Open error = %v", err)
			}
			if d := time.Since(start); d > tc.timeout+time.Second {
				t.Fatalf("Open took %s", d)
			}
			if h := <-got; h.Kind != KindLog {
				t.Fatalf("agent read %+v", h)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"HULL\x01\x01", "HULL\x01\x02", "HULL\x01\x03\x00\x00\x00\x00\x00\x00\x00\x2a",
		"HULL\x02\x01", "HULL", "", "GET / HTTP/1.1\r\n", "HULL\x01\xff",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := Parse(b)
		if err != nil {
			if n != 0 {
				t.Fatalf("error %v with n=%d", err, n)
			}
			// The stream reader agrees with the slice parser.
			if _, rerr := ReadHeader(bytes.NewReader(b)); rerr == nil {
				t.Fatalf("Parse failed (%v) but ReadHeader succeeded on %q", err, b)
			}
			return
		}
		if n > len(b) || n > MaxSize {
			t.Fatalf("n=%d of %d bytes", n, len(b))
		}
		enc, err := h.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", h, err)
		}
		if !bytes.Equal(enc, b[:n]) {
			t.Fatalf("re-encoded %q, read %q", enc, b[:n])
		}
		rh, err := ReadHeader(bytes.NewReader(b))
		if err != nil || rh != h {
			t.Fatalf("ReadHeader = %+v, %v; Parse = %+v", rh, err, h)
		}
	})
}
