package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// Limits of stdio channel parking.
const (
	// streamParkTTL is how long an accepted stdio channel waits for the
	// process that names it before the agent closes it.
	streamParkTTL = 60 * time.Second
	// streamClaimWait is how long a request waits for a stdio channel that
	// it names but that has not arrived yet.
	streamClaimWait = 10 * time.Second
)

// streamTable parks the stdio channels the host opens, by stream id, until
// the CreateContainer or ExecProcess call that names them claims them. The
// host opens the channels before the call, but the demultiplexer may hand
// them over after the call began: a claim waits a bounded time.
type streamTable struct {
	ttl time.Duration

	mu sync.Mutex
	// parked holds channels nobody claimed yet. Guarded by mu.
	parked map[uint64]*parkedStream
	// waiting holds the claims waiting for their channel. Guarded by mu.
	waiting map[uint64]chan net.Conn
}

type parkedStream struct {
	conn  net.Conn
	timer *time.Timer
}

func newStreamTable(ttl time.Duration) *streamTable {
	return &streamTable{ttl: ttl, parked: map[uint64]*parkedStream{}, waiting: map[uint64]chan net.Conn{}}
}

// park takes ownership of conn, the stdio channel id. It hands conn to a
// waiting claim, or keeps it until claimed or until the table's time to
// live passes. A second channel with the id of a parked one is refused.
func (t *streamTable) park(ctx context.Context, id uint64, conn net.Conn) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if w, ok := t.waiting[id]; ok {
		delete(t.waiting, id)
		w <- conn // buffered: never blocks
		return nil
	}
	if _, dup := t.parked[id]; dup {
		_ = conn.Close()
		return fmt.Errorf("stdio stream %d: already open: %w", id, errdefs.ErrAlreadyExists)
	}
	ps := &parkedStream{conn: conn}
	ps.timer = time.AfterFunc(t.ttl, func() {
		t.mu.Lock()
		cur, ok := t.parked[id]
		if ok && cur == ps {
			delete(t.parked, id)
		}
		t.mu.Unlock()
		if ok && cur == ps {
			log.G(ctx).WithField("stream", id).Warn("closing stdio stream that no process claimed")
			_ = conn.Close()
		}
	})
	t.parked[id] = ps
	return nil
}

// claim returns the channel id, waiting up to wait for it to arrive.
func (t *streamTable) claim(ctx context.Context, id uint64, wait time.Duration) (net.Conn, error) {
	if id == 0 {
		return nil, fmt.Errorf("stdio stream id 0: %w", errdefs.ErrInvalidArgument)
	}
	t.mu.Lock()
	if ps, ok := t.parked[id]; ok {
		delete(t.parked, id)
		t.mu.Unlock()
		ps.timer.Stop()
		return ps.conn, nil
	}
	if _, ok := t.waiting[id]; ok {
		t.mu.Unlock()
		return nil, fmt.Errorf("stdio stream %d: claimed twice: %w", id, errdefs.ErrAlreadyExists)
	}
	ch := make(chan net.Conn, 1)
	t.waiting[id] = ch
	t.mu.Unlock()

	timer := time.NewTimer(wait)
	defer timer.Stop()
	var err error
	select {
	case c := <-ch:
		return c, nil
	case <-timer.C:
		err = fmt.Errorf("stdio stream %d: the host did not open it within %s: %w", id, wait, errdefs.ErrFailedPrecondition)
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			// The caller's budget for its streams (or the call's own
			// deadline) ran out: the same failure as the timer's,
			// whichever of the two fires first.
			err = fmt.Errorf("stdio stream %d: the host did not open it in time: %w", id, errdefs.ErrFailedPrecondition)
		} else {
			err = fmt.Errorf("waiting for stdio stream %d: %w", id, ctx.Err())
		}
	}
	t.mu.Lock()
	if t.waiting[id] == ch {
		delete(t.waiting, id)
	}
	t.mu.Unlock()
	// park may have delivered between the timeout and the delete.
	select {
	case c := <-ch:
		return c, nil
	default:
	}
	return nil, err
}

// closeWrite ends the agent's side of a stdio channel: the host reads EOF.
// A vsock connection has CloseWrite; closing a yamux stream is a half-close
// already (the host's side stays open until it closes it too).
func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// copyBufSize is the buffer of the stdio copies: large enough that a fast
// producer fills yamux windows in few writes.
const copyBufSize = 128 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// copyOut copies a process's output to the host until src ends, then
// closes the write side of dst. A read error other than EOF (EIO from a
// pty master whose terminal has gone) ends the copy as EOF does.
func copyOut(dst net.Conn, src io.Reader) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	n, err := io.CopyBuffer(writerOnly{dst}, readerOnly{src}, *bp)
	if isReadEnd(err) {
		err = nil
	}
	if cerr := closeWrite(dst); err == nil && cerr != nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	return n, err
}

// copyIn copies what the host sends to a process's input until the host
// closes its side, then closes dst.
func copyIn(dst io.WriteCloser, src net.Conn) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	n, err := io.CopyBuffer(writerOnly{dst}, readerOnly{src}, *bp)
	if cerr := dst.Close(); err == nil && cerr != nil && !errors.Is(cerr, errClosedTwice) {
		err = cerr
	}
	return n, err
}

// isReadEnd reports whether a read error means the other side is gone.
func isReadEnd(err error) bool {
	return err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isEIO(err)
}

// writerOnly and readerOnly hide ReadFrom/WriteTo so that io.CopyBuffer
// uses the buffer given (a yamux stream's ReadFrom would use 32 KiB).
type writerOnly struct{ io.Writer }
type readerOnly struct{ io.Reader }

// errClosedTwice is what onceCloser returns after the first Close.
var errClosedTwice = errors.New("already closed")

// onceCloser closes a writer once, from whichever of the stdin copy and
// CloseStdin comes first.
type onceCloser struct {
	io.Writer
	c    io.Closer
	once sync.Once
}

func (o *onceCloser) Close() error {
	err := errClosedTwice
	o.once.Do(func() { err = o.c.Close() })
	return err
}
