package factory

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/identifiers"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// The hand-over, on a warm shim's control socket (SOCK_SEQPACKET, so each
// message arrives whole or not at all):
//
//  1. The claimer sends the Handover as JSON with the listening shim socket
//     as SCM_RIGHTS.
//  2. The warm shim checks both and answers a handoverReply: its PID, or
//     why it refuses (then it stops its VM and exits).
//  3. The claimer sends commitMessage; only then does the warm shim serve
//     on the socket. A claimer that gave up (its time ran out) closes the
//     connection instead, and the warm shim stops its VM and exits: the
//     socket is never served by two shims.

// maxHandoverMessage bounds every hand-over message.
const maxHandoverMessage = 64 << 10

// maxHandoverEnv bounds the environment a hand-over carries.
const maxHandoverEnv = 256

// commitMessage is the claimer's last message.
const commitMessage = "commit"

// Handover is what a shim server needs that `shim start` knows: the
// parameters containerd gave it, which the cold path passes on the server's
// command line and in its environment.
type Handover struct {
	// Namespace, ID and Address are the server's -namespace, -id and
	// -address (containerd's socket); Debug its -debug.
	Namespace string `json:"namespace"`
	ID        string `json:"id"`
	Address   string `json:"address"`
	Debug     bool   `json:"debug,omitempty"`
	// Bundle is the directory the server runs in (its log FIFO and the
	// address file are there).
	Bundle string `json:"bundle"`
	// Env is the environment `shim start` got from containerd
	// (TTRPC_ADDRESS, GRPC_ADDRESS, ...), which a cold server inherits.
	Env []string `json:"env,omitempty"`
}

// Validate refuses parameters no containerd sends.
func (h Handover) Validate() error {
	var errs []error
	if err := identifiers.Validate(h.Namespace); err != nil {
		errs = append(errs, fmt.Errorf("namespace: %w", err))
	}
	if err := identifiers.Validate(h.ID); err != nil {
		errs = append(errs, fmt.Errorf("id: %w", err))
	}
	if h.Address == "" || strings.ContainsRune(h.Address, 0) {
		errs = append(errs, errors.New("address: empty"))
	}
	if !filepath.IsAbs(h.Bundle) || filepath.Clean(h.Bundle) != h.Bundle {
		errs = append(errs, fmt.Errorf("bundle %q: not a clean absolute path", h.Bundle))
	} else if st, err := os.Stat(h.Bundle); err != nil || !st.IsDir() {
		errs = append(errs, fmt.Errorf("bundle %q: not a directory", h.Bundle))
	}
	if len(h.Env) > maxHandoverEnv {
		errs = append(errs, fmt.Errorf("env: %d entries, at most %d", len(h.Env), maxHandoverEnv))
	}
	for _, kv := range h.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" || strings.ContainsRune(kv, 0) {
			errs = append(errs, fmt.Errorf("env: %q is not KEY=VALUE", kv))
			break
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("hand-over: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	return nil
}

// handoverReply is the warm shim's answer to a Handover.
type handoverReply struct {
	PID   int    `json:"pid,omitempty"`
	Error string `json:"error,omitempty"`
}

// ErrRefused is a hand-over the warm shim refused.
var ErrRefused = fmt.Errorf("warm shim refused the hand-over: %w", errdefs.ErrFailedPrecondition)

// Handoff hands the listening shim socket and h to the warm shim at
// socket, and commits the hand-over once the warm shim accepted it: from
// then on that shim serves the socket. It returns a pidfd of the shim
// (handoff), the caller's to close. An error means the warm shim does not
// serve (it stops its VM and exits), and the caller starts a shim server
// of its own; ctx bounds the whole exchange.
func Handoff(ctx context.Context, socket string, listener *os.File, h Handover) (int, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", socket)
	if err != nil {
		return -1, fmt.Errorf("dialing warm shim: %w", err)
	}
	conn := c.(*net.UnixConn)
	defer func() { _ = conn.Close() }()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	return handoff(conn, listener, h)
}

// handoff is Handoff on an open connection. The peer must run as this
// process's user (the pod's socket goes to no one else), and its reply
// must name the peer's own PID, which the kernel tells.
//
// The peer is held by a pidfd, opened on the PID the kernel gave before
// anything is sent: the peer answers only while it is alive, so a reply
// that comes proves that the PID was still the peer's when the pidfd was
// opened, and the pidfd is the peer's whatever becomes of the PID (the
// factory, the warm shim's parent, reaps it as soon as it exits). The
// caller acts on the shim through it (kill, wait) and on its PID only
// while the pidfd shows it alive (cgroups, OOM score). A peer whose pidfd
// cannot be opened (gone, no pidfd_open, no descriptor left) gets nothing:
// its wait ends on the closed connection, and it stops its VM and exits,
// claimed by no one.
func handoff(conn *net.UnixConn, listener *os.File, h Handover) (_ int, retErr error) {
	peer, err := peerCred(conn)
	if err != nil {
		return -1, fmt.Errorf("warm shim's credentials: %w", err)
	}
	if int(peer.Uid) != os.Geteuid() {
		return -1, fmt.Errorf("warm shim runs as user %d, not %d: %w", peer.Uid, os.Geteuid(), ErrRefused)
	}
	pidfd, err := unix.PidfdOpen(int(peer.Pid), 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd of the warm shim %d: %w", peer.Pid, err)
	}
	defer func() {
		if retErr != nil {
			_ = unix.Close(pidfd)
		}
	}()
	b, err := json.Marshal(h)
	if err != nil {
		return -1, err
	}
	if len(b) > maxHandoverMessage {
		return -1, fmt.Errorf("hand-over of %d bytes, at most %d: %w", len(b), maxHandoverMessage, errdefs.ErrInvalidArgument)
	}
	if _, _, err := conn.WriteMsgUnix(b, unix.UnixRights(int(listener.Fd())), nil); err != nil {
		return -1, fmt.Errorf("sending hand-over: %w", err)
	}
	var r handoverReply
	if err := readJSON(conn, &r); err != nil {
		return -1, fmt.Errorf("reading hand-over reply: %w", err)
	}
	if r.Error != "" {
		return -1, fmt.Errorf("%w: %s", ErrRefused, r.Error)
	}
	if r.PID <= 0 || r.PID != int(peer.Pid) {
		return -1, fmt.Errorf("hand-over reply names PID %d, the warm shim is %d: %w", r.PID, peer.Pid, ErrRefused)
	}
	if _, err := conn.Write([]byte(commitMessage)); err != nil {
		return -1, fmt.Errorf("committing hand-over: %w", err)
	}
	return pidfd, nil
}

// readJSON reads one message of at most maxHandoverMessage bytes into v.
func readJSON(conn *net.UnixConn, v any) error {
	buf := make([]byte, maxHandoverMessage+1)
	n, err := conn.Read(buf)
	if err != nil {
		return err
	}
	if n == 0 {
		return errors.New("connection closed")
	}
	if n > maxHandoverMessage {
		return fmt.Errorf("message above %d bytes", maxHandoverMessage)
	}
	return json.Unmarshal(buf[:n], v)
}

// receiveHandover reads a Handover with exactly one descriptor, a
// listening unix socket, and validates both. The descriptor is closed on
// error.
func receiveHandover(conn *net.UnixConn) (_ Handover, _ *os.File, retErr error) {
	buf := make([]byte, maxHandoverMessage+1)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return Handover{}, nil, fmt.Errorf("reading hand-over: %w", err)
	}
	var fds []int
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return Handover{}, nil, fmt.Errorf("hand-over control message: %w", err)
		}
		for _, m := range msgs {
			got, err := unix.ParseUnixRights(&m)
			if err == nil {
				fds = append(fds, got...)
			}
		}
	}
	for _, fd := range fds {
		unix.CloseOnExec(fd)
	}
	defer func() {
		if retErr != nil {
			for _, fd := range fds {
				_ = unix.Close(fd)
			}
		}
	}()
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 || n > maxHandoverMessage {
		return Handover{}, nil, fmt.Errorf("hand-over message truncated: %w", errdefs.ErrInvalidArgument)
	}
	if len(fds) != 1 {
		return Handover{}, nil, fmt.Errorf("hand-over with %d descriptors, want 1: %w", len(fds), errdefs.ErrInvalidArgument)
	}
	if err := checkListener(fds[0]); err != nil {
		return Handover{}, nil, err
	}
	var h Handover
	if err := json.Unmarshal(buf[:n], &h); err != nil {
		return Handover{}, nil, fmt.Errorf("decoding hand-over: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	if err := h.Validate(); err != nil {
		return Handover{}, nil, err
	}
	return h, os.NewFile(uintptr(fds[0]), "shim-socket"), nil
}

// checkListener refuses a descriptor that is not a listening unix stream
// socket.
func checkListener(fd int) error {
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil || domain != unix.AF_UNIX {
		return fmt.Errorf("hand-over descriptor is not a unix socket: %w", errdefs.ErrInvalidArgument)
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil || typ != unix.SOCK_STREAM {
		return fmt.Errorf("hand-over socket is not a stream socket: %w", errdefs.ErrInvalidArgument)
	}
	if on, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || on != 1 {
		return fmt.Errorf("hand-over socket is not listening: %w", errdefs.ErrInvalidArgument)
	}
	return nil
}

// writeJSON sends v as one message.
func writeJSON(conn *net.UnixConn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) > maxHandoverMessage {
		b, _ = json.Marshal(handoverReply{Error: "reply too long"})
	}
	_, err = conn.Write(b)
	return err
}

// PidfdPID returns the PID of the process pidfd refers to, as the kernel
// shows it in the descriptor's fdinfo: -1 once that process has exited
// and been reaped.
func PidfdPID(pidfd int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", pidfd))
	if err != nil {
		return 0, fmt.Errorf("reading a pidfd's fdinfo: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "Pid:"); ok {
			pid, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				return 0, fmt.Errorf("a pidfd's fdinfo: Pid %q: %w", strings.TrimSpace(v), err)
			}
			return pid, nil
		}
	}
	return 0, fmt.Errorf("fd %d is not a pidfd (no Pid in its fdinfo): %w", pidfd, errdefs.ErrNotImplemented)
}
