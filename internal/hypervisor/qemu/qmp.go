package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

// qmpConn is a client of the QEMU Machine Protocol: JSON objects, one per
// line, over a unix socket. Commands carry an id; the reader goroutine
// hands each reply to its caller and logs asynchronous events.
type qmpConn struct {
	conn    net.Conn
	logger  *log.Entry
	onEvent func(name string, data json.RawMessage)

	// wmu serializes writes.
	wmu sync.Mutex

	mu sync.Mutex
	// pending maps command ids to their reply channels; guarded by mu.
	pending map[string]chan qmpReply
	// nextID numbers commands; guarded by mu.
	nextID uint64
	// err is why the reader stopped; guarded by mu.
	err error

	// closed is closed when the reader has stopped.
	closed chan struct{}
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *qmpError       `json:"error"`
	ID     string          `json:"id"`
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
	QMP    json.RawMessage `json:"QMP"`
}

type qmpError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

// qmpClasses maps QMP error classes to errdefs classes.
var qmpClasses = map[string]error{
	"CommandNotFound": errdefs.ErrNotImplemented,
	"DeviceNotFound":  errdefs.ErrNotFound,
	"GenericError":    errdefs.ErrUnknown,
}

func (e *qmpError) err(cmd string) error {
	class, ok := qmpClasses[e.Class]
	if !ok {
		class = errdefs.ErrUnknown
	}
	return fmt.Errorf("qmp %s: %s: %s: %w", cmd, e.Class, e.Desc, class)
}

// errQMPClosed is the reader's error once QEMU closed the monitor,
// normally because it exited.
var errQMPClosed = fmt.Errorf("qmp connection closed: %w", hypervisor.ErrVMExited)

// dialQMP connects to the monitor at path, reads the greeting and leaves
// capabilities negotiation mode. It retries until the socket accepts or ctx
// ends, so it can be called right after QEMU was started.
// Events go to onEvent, called from the reader goroutine.
func dialQMP(ctx context.Context, path string, alive func() bool, onEvent func(string, json.RawMessage)) (*qmpConn, error) {
	var conn net.Conn
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			conn = c
			break
		}
		if !alive() {
			return nil, fmt.Errorf("connecting to qmp: qemu exited: %w", hypervisor.ErrVMExited)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connecting to qmp at %s: %w", path, errors.Join(ctx.Err(), err))
		case <-time.After(10 * time.Millisecond):
		}
	}
	q := &qmpConn{
		conn:    conn,
		logger:  log.G(ctx),
		onEvent: onEvent,
		pending: map[string]chan qmpReply{},
		closed:  make(chan struct{}),
	}
	greeted := make(chan error, 1)
	go q.read(greeted)
	select {
	case err := <-greeted:
		if err != nil {
			q.close()
			return nil, err
		}
	case <-ctx.Done():
		q.close()
		return nil, fmt.Errorf("waiting for the qmp greeting: %w", ctx.Err())
	}
	if _, err := q.execute(ctx, "qmp_capabilities", nil); err != nil {
		q.close()
		return nil, err
	}
	return q, nil
}

// read dispatches replies until the connection ends. The first line must be
// the greeting; its outcome goes to greeted.
func (q *qmpConn) read(greeted chan<- error) {
	defer close(q.closed)
	sc := bufio.NewScanner(q.conn)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	first := true
	for sc.Scan() {
		var r qmpReply
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			err = fmt.Errorf("qmp: bad message %q: %w", truncate(sc.Text(), 200), err)
			q.fail(err)
			if first {
				greeted <- err
			}
			return
		}
		if first {
			first = false
			if r.QMP == nil {
				err := fmt.Errorf("qmp: no greeting, got %q", truncate(sc.Text(), 200))
				q.fail(err)
				greeted <- err
				return
			}
			greeted <- nil
			continue
		}
		if r.Event != "" {
			q.logger.WithField("event", r.Event).WithField("data", string(r.Data)).Debug("qmp event")
			if q.onEvent != nil {
				q.onEvent(r.Event, r.Data)
			}
			continue
		}
		q.mu.Lock()
		ch := q.pending[r.ID]
		delete(q.pending, r.ID)
		q.mu.Unlock()
		if ch != nil {
			ch <- r
		}
	}
	err := sc.Err()
	if err == nil {
		err = errQMPClosed
	} else {
		err = fmt.Errorf("reading qmp: %w: %w", err, hypervisor.ErrVMExited)
	}
	q.fail(err)
	if first {
		greeted <- err
	}
}

// fail records why the connection ended and fails every pending command.
func (q *qmpConn) fail(err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err == nil {
		q.err = err
	}
	for id, ch := range q.pending {
		close(ch)
		delete(q.pending, id)
	}
	_ = q.conn.Close()
}

// execute runs one command and returns its "return" value.
func (q *qmpConn) execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	return q.executeFD(ctx, cmd, args, -1)
}

// executeFD runs one command with fd, when not negative, passed along
// with it as SCM_RIGHTS ancillary data, which is how QEMU's getfd and
// add-fd receive a descriptor. The descriptor stays the caller's: QEMU
// holds a copy.
func (q *qmpConn) executeFD(ctx context.Context, cmd string, args any, fd int) (json.RawMessage, error) {
	var oob []byte
	uc, isUnix := q.conn.(*net.UnixConn)
	if fd >= 0 {
		if !isUnix {
			return nil, fmt.Errorf("qmp %s: passing a file descriptor needs a unix socket: %w", cmd, errdefs.ErrNotImplemented)
		}
		oob = unix.UnixRights(fd)
	}
	q.mu.Lock()
	if q.err != nil {
		err := q.err
		q.mu.Unlock()
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	q.nextID++
	id := strconv.FormatUint(q.nextID, 10)
	ch := make(chan qmpReply, 1)
	q.pending[id] = ch
	q.mu.Unlock()

	msg := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        string `json:"id"`
	}{cmd, args, id}
	b, err := json.Marshal(msg)
	if err != nil {
		q.forget(id)
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	q.wmu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		_ = q.conn.SetWriteDeadline(dl)
	} else {
		_ = q.conn.SetWriteDeadline(time.Time{})
	}
	// n is how much of the command went out.
	var n int
	if oob != nil {
		msg := append(b, '\n')
		n, _, err = uc.WriteMsgUnix(msg, oob, nil)
		if n > 0 && n != len(msg) {
			// The rest would go without its descriptor: the stream is
			// out of step with QEMU's parser.
			err = errors.Join(err, fmt.Errorf("short write of a command with a descriptor (%d of %d bytes)", n, len(msg)))
			_ = q.conn.Close()
		}
	} else {
		n, err = q.conn.Write(append(b, '\n'))
		if err != nil && n > 0 {
			// Part of the command went out (the deadline passed while
			// QEMU did not read): QEMU may run it once it has the
			// closing brace, or take the next command as its rest. No
			// command goes out on that stream any more.
			_ = q.conn.Close()
		}
	}
	q.wmu.Unlock()
	if err != nil {
		q.forget(id)
		if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
			// Nothing went out before the caller's deadline: QEMU
			// did not get the command, and the connection is as it
			// was, not closed.
			return nil, fmt.Errorf("qmp %s: not sent: %w", cmd, err)
		}
		return nil, fmt.Errorf("qmp %s: %w", cmd, errors.Join(err, q.closedErr()))
	}

	select {
	case r, ok := <-ch:
		if !ok {
			return nil, fmt.Errorf("qmp %s: %w", cmd, q.closedErr())
		}
		if r.Error != nil {
			return nil, r.Error.err(cmd)
		}
		return r.Return, nil
	case <-ctx.Done():
		q.forget(id)
		return nil, fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
}

func (q *qmpConn) forget(id string) {
	q.mu.Lock()
	delete(q.pending, id)
	q.mu.Unlock()
}

func (q *qmpConn) closedErr() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err != nil {
		return q.err
	}
	return errQMPClosed
}

// close ends the connection and waits for the reader.
func (q *qmpConn) close() {
	q.fail(errQMPClosed)
	<-q.closed
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
