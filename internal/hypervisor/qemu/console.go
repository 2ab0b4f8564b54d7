package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/containerd/log"

	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// consoleTailBytes is how much of the console log ConsoleTail reads at
// most; enough for a few hundred lines.
const consoleTailBytes = 64 << 10

// consoleBufSize is the one buffer the console reader copies through: the
// only host memory the guest's console output occupies besides the socket
// buffers.
const consoleBufSize = 32 << 10

// console copies the guest's serial console from QEMU's console socket
// into the bounded console log. It reads only as fast as the log takes the
// data; when it falls behind, the socket fills and QEMU's serial port
// stops accepting bytes, which stalls the guest's console, not the host.
type console struct {
	log  *child.LogFile
	conn net.Conn
	// done is closed when the copy has ended.
	done chan struct{}
}

// dialConsole connects to QEMU's console socket, retrying until QEMU
// listens, ctx ends or alive reports QEMU gone, and starts copying into lg.
// QEMU waits for this connection (wait=on) before it opens its monitor.
func dialConsole(ctx context.Context, path string, lg *child.LogFile, alive func() bool) (*console, error) {
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			c := &console{log: lg, conn: conn, done: make(chan struct{})}
			go c.copy(log.G(ctx))
			return c, nil
		}
		if !alive() {
			return nil, fmt.Errorf("connecting to the console: qemu exited: %w", hypervisor.ErrVMExited)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connecting to the console at %s: %w", path, errors.Join(ctx.Err(), err))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// copy runs until QEMU closes the socket (it exited) or close is called.
func (c *console) copy(logger *log.Entry) {
	defer close(c.done)
	buf := make([]byte, consoleBufSize)
	_, _ = io.CopyBuffer(c.log, onlyReader{c.conn}, buf)
	if err := c.log.Err(); err != nil {
		logger.WithError(err).Warn("guest console output dropped: cannot write the console log")
	}
}

// close ends the copy, waiting up to wait for QEMU's last output first.
func (c *console) close(wait time.Duration) {
	select {
	case <-c.done:
	case <-time.After(wait):
	}
	_ = c.conn.Close()
	<-c.done
}

// onlyReader hides the WriterTo of a net.Conn, so that io.CopyBuffer uses
// the given buffer.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// ConsoleTail returns up to n last lines of the guest's serial console,
// which the driver writes to console.log (and console.log.1 once it
// rotated) in the state directory. It works after the VM exited, too,
// until the caller removes the state directory.
func (v *VM) ConsoleTail(n int) []string {
	if n <= 0 {
		return nil
	}
	v.mu.Lock()
	lg := v.consoleLog
	v.mu.Unlock()
	if lg != nil {
		return lg.TailLines(n, consoleTailBytes)
	}
	return child.TailLines(v.consolePath(), n, consoleTailBytes)
}
