package channel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// A virtio-serial port is one byte stream that outlives the sessions on it:
// the host may reconnect while the agent still runs the old session, and
// bytes of an old session (a write the agent had pending, a host frame
// buffered in the guest) can reach the new one. So before yamux starts on a
// new host connection, the two ends synchronize: the host sends a sync frame
// with a random nonce, again and again until it reads the agent's echo of
// that nonce, and drops every byte before the echo. The agent drops every
// byte before the first sync frame, answers it once, and skips the repeats
// that follow it. Only then do the yamux frames begin (yamux frames start
// with a 0 byte, sync frames with "HULL").
const (
	kindSync byte = 0xf0
	kindEcho byte = 0xf1
	// syncSize is magic, version, kind and the 8-byte nonce.
	syncSize = BaseSize + 8
)

func syncFrame(kind byte, nonce uint64) []byte {
	b := make([]byte, 0, syncSize)
	b = append(b, Magic...)
	b = append(b, Version, kind)
	return binary.BigEndian.AppendUint64(b, nonce)
}

// syncPrefix is what every sync frame starts with.
var syncPrefix = []byte{'H', 'U', 'L', 'L', Version, kindSync}

// rwc joins a buffered reader with the connection it reads from.
type rwc struct {
	io.Reader
	io.WriteCloser
}

// SyncHost runs the host's side of the session sync on conn until ctx is
// done and returns the connection to run yamux on.
func SyncHost(ctx context.Context, conn net.Conn) (io.ReadWriteCloser, error) {
	var nb [8]byte
	if _, err := rand.Read(nb[:]); err != nil {
		return nil, err
	}
	nonce := binary.BigEndian.Uint64(nb[:])
	sync, echo := syncFrame(kindSync, nonce), syncFrame(kindEcho, nonce)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var (
		seen     []byte // unmatched tail of what was read
		buf      = make([]byte, 4096)
		interval = 100 * time.Millisecond
	)
	for {
		if _, err := conn.Write(sync); err != nil {
			return nil, syncErr(ctx, err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(interval))
		interval = min(2*interval, time.Second)
		for {
			n, err := conn.Read(buf)
			seen = append(seen, buf[:n]...)
			if i := bytes.Index(seen, echo); i >= 0 {
				if !stop() {
					return nil, syncErr(ctx, context.Cause(ctx))
				}
				if err := conn.SetDeadline(time.Time{}); err != nil {
					return nil, err
				}
				rest := append([]byte(nil), seen[i+len(echo):]...)
				return rwc{io.MultiReader(bytes.NewReader(rest), conn), conn}, nil
			}
			if len(seen) >= len(echo) {
				seen = append(seen[:0], seen[len(seen)-len(echo)+1:]...)
			}
			if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil {
				break // send the sync frame again
			}
			if err != nil {
				return nil, syncErr(ctx, err)
			}
		}
	}
}

func syncErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		err = context.Cause(ctx)
	}
	return fmt.Errorf("synchronizing with the agent: %w", err)
}

// SyncAgent runs the agent's side of the session sync on c and returns the
// connection to run yamux on. It returns an error when c ends first.
func SyncAgent(c io.ReadWriteCloser) (io.ReadWriteCloser, error) {
	r := bufio.NewReaderSize(c, 4096)
	// Drop everything up to the first sync frame.
	matched := 0
	for matched < len(syncPrefix) {
		b, err := r.ReadByte()
		if err != nil {
			return nil, fmt.Errorf("waiting for the host's sync: %w", err)
		}
		switch b {
		case syncPrefix[matched]:
			matched++
		case syncPrefix[0]:
			matched = 1
		default:
			matched = 0
		}
	}
	var nonce [8]byte
	if _, err := io.ReadFull(r, nonce[:]); err != nil {
		return nil, fmt.Errorf("reading the host's sync: %w", err)
	}
	if _, err := c.Write(syncFrame(kindEcho, binary.BigEndian.Uint64(nonce[:]))); err != nil {
		return nil, fmt.Errorf("answering the host's sync: %w", err)
	}
	// Skip the repeats the host sent before it saw the echo. Peeking one
	// byte first keeps a short first frame from blocking here.
	for {
		p, err := r.Peek(1)
		if err != nil {
			return nil, fmt.Errorf("waiting for the host's first frame: %w", err)
		}
		if p[0] != syncPrefix[0] {
			break
		}
		p, err = r.Peek(len(syncPrefix))
		if err != nil {
			return nil, fmt.Errorf("waiting for the host's first frame: %w", err)
		}
		if !bytes.Equal(p, syncPrefix) {
			break
		}
		if _, err := r.Discard(syncSize); err != nil {
			return nil, fmt.Errorf("skipping a repeated sync: %w", err)
		}
	}
	return rwc{r, c}, nil
}
