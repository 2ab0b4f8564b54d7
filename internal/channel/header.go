package channel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/containerd/errdefs"
)

// Magic opens every channel header.
const Magic = "HULL"

// Version is the header version this package speaks.
const Version byte = 1

// Kind says what a channel carries once the agent has acknowledged it.
type Kind byte

const (
	// KindRPC carries the agent's ttRPC services.
	KindRPC Kind = 1
	// KindLog carries the agent's log as JSON lines, agent to host only.
	KindLog Kind = 2
	// KindStdio carries one stdio stream of a process, named by
	// Header.StreamID; the agent parks it until a process claims it.
	KindStdio Kind = 3
)

func (k Kind) String() string {
	switch k {
	case KindRPC:
		return "rpc"
	case KindLog:
		return "log"
	case KindStdio:
		return "stdio"
	}
	return fmt.Sprintf("kind(%d)", byte(k))
}

// Sizes of the header on the wire.
const (
	// BaseSize is magic, version and kind.
	BaseSize = len(Magic) + 2
	// StdioSize adds the big-endian 8-byte stream id of KindStdio.
	StdioSize = BaseSize + 8
	// MaxSize is the longest header.
	MaxSize = StdioSize
)

// Header is the first thing the host writes on a new connection.
type Header struct {
	Kind Kind
	// StreamID names the stdio stream; only for KindStdio.
	StreamID uint64
}

// Ack is the agent's one-byte answer to a header.
type Ack byte

const (
	// AckOK accepts the channel.
	AckOK Ack = 0
	// AckBadHeader refuses a header that is not one (wrong magic).
	AckBadHeader Ack = 1
	// AckBadVersion refuses a header version the agent does not speak.
	AckBadVersion Ack = 2
	// AckBadKind refuses a kind the agent does not serve.
	AckBadKind Ack = 3
	// AckUnavailable refuses a channel because the agent is shutting down.
	AckUnavailable Ack = 4
)

// Errors of the header decoder and of refused channels.
var (
	ErrBadHeader   = fmt.Errorf("not a hull channel header: %w", errdefs.ErrInvalidArgument)
	ErrBadVersion  = fmt.Errorf("unsupported channel header version: %w", errdefs.ErrNotImplemented)
	ErrBadKind     = fmt.Errorf("unsupported channel kind: %w", errdefs.ErrNotImplemented)
	ErrUnavailable = fmt.Errorf("agent is shutting down: %w", errdefs.ErrUnavailable)
)

// Err is the error an ack stands for, nil for AckOK.
func (a Ack) Err() error {
	switch a {
	case AckOK:
		return nil
	case AckBadHeader:
		return ErrBadHeader
	case AckBadVersion:
		return ErrBadVersion
	case AckBadKind:
		return ErrBadKind
	case AckUnavailable:
		return ErrUnavailable
	}
	return fmt.Errorf("unknown channel ack %d: %w", byte(a), errdefs.ErrUnknown)
}

// AckFor is the ack the agent sends for a decode error.
func AckFor(err error) Ack {
	switch {
	case err == nil:
		return AckOK
	case errors.Is(err, ErrBadVersion):
		return AckBadVersion
	case errors.Is(err, ErrBadKind):
		return AckBadKind
	case errors.Is(err, ErrUnavailable):
		return AckUnavailable
	}
	return AckBadHeader
}

// MarshalBinary encodes h.
func (h Header) MarshalBinary() ([]byte, error) {
	switch h.Kind {
	case KindRPC, KindLog:
		if h.StreamID != 0 {
			return nil, fmt.Errorf("%s channel with stream id %d: %w", h.Kind, h.StreamID, errdefs.ErrInvalidArgument)
		}
	case KindStdio:
	default:
		return nil, fmt.Errorf("encoding %s: %w", h.Kind, ErrBadKind)
	}
	b := make([]byte, BaseSize, MaxSize)
	copy(b, Magic)
	b[4] = Version
	b[5] = byte(h.Kind)
	if h.Kind == KindStdio {
		b = binary.BigEndian.AppendUint64(b, h.StreamID)
	}
	return b, nil
}

// Parse decodes a header from the start of b and returns it with the number
// of bytes it took. io.ErrUnexpectedEOF means b is too short so far.
func Parse(b []byte) (Header, int, error) {
	if len(b) < BaseSize {
		if len(b) > 0 && !matchMagic(b) {
			return Header{}, 0, ErrBadHeader
		}
		return Header{}, 0, io.ErrUnexpectedEOF
	}
	if !matchMagic(b) {
		return Header{}, 0, ErrBadHeader
	}
	if b[4] != Version {
		return Header{}, 0, fmt.Errorf("version %d, want %d: %w", b[4], Version, ErrBadVersion)
	}
	h := Header{Kind: Kind(b[5])}
	switch h.Kind {
	case KindRPC, KindLog:
		return h, BaseSize, nil
	case KindStdio:
		if len(b) < StdioSize {
			return Header{}, 0, io.ErrUnexpectedEOF
		}
		h.StreamID = binary.BigEndian.Uint64(b[BaseSize:StdioSize])
		return h, StdioSize, nil
	}
	return Header{}, 0, fmt.Errorf("%s: %w", h.Kind, ErrBadKind)
}

func matchMagic(b []byte) bool {
	n := min(len(b), len(Magic))
	return string(b[:n]) == Magic[:n]
}

// ReadHeader reads one header from r, no byte further.
func ReadHeader(r io.Reader) (Header, error) {
	var buf [MaxSize]byte
	if _, err := io.ReadFull(r, buf[:BaseSize]); err != nil {
		return Header{}, fmt.Errorf("reading channel header: %w", err)
	}
	h, _, err := Parse(buf[:BaseSize])
	if errors.Is(err, io.ErrUnexpectedEOF) {
		if _, err := io.ReadFull(r, buf[BaseSize:StdioSize]); err != nil {
			return Header{}, fmt.Errorf("reading channel header: %w", err)
		}
		h, _, err = Parse(buf[:StdioSize])
	}
	return h, err
}

// WriteAck sends the agent's answer.
func WriteAck(w io.Writer, a Ack) error {
	if _, err := w.Write([]byte{byte(a)}); err != nil {
		return fmt.Errorf("writing channel ack: %w", err)
	}
	return nil
}

// Open is the host's side of the handshake: it writes h on conn and waits
// for the agent's ack until ctx is done. On success conn carries h.Kind. It
// does not close conn on error.
func Open(ctx context.Context, conn net.Conn, h Header) error {
	b, err := h.MarshalBinary()
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() {
		// Unblock the write and the read below; the caller closes conn.
		_ = conn.SetDeadline(time.Unix(1, 0))
	})
	defer stop()
	wrap := func(op string, err error) error {
		if ctx.Err() != nil {
			err = context.Cause(ctx)
		}
		return fmt.Errorf("%s %s channel: %w", op, h.Kind, err)
	}
	if _, err := conn.Write(b); err != nil {
		return wrap("opening", err)
	}
	var ack [1]byte
	if _, err := io.ReadFull(conn, ack[:]); err != nil {
		return wrap("waiting for the agent to accept the", err)
	}
	if !stop() {
		// ctx ended just as the ack came: the deadline is set to the past.
		return wrap("opening", context.Cause(ctx))
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return wrap("opening", err)
	}
	if err := Ack(ack[0]).Err(); err != nil {
		return fmt.Errorf("agent refused the %s channel: %w", h.Kind, err)
	}
	return nil
}
