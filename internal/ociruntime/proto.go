package ociruntime

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/runc/types"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"
)

// The supervisor's protocol: one JSON message per packet of a unix
// SOCK_SEQPACKET connection, so that a message and the file descriptors it
// carries (SCM_RIGHTS) arrive together. ttRPC carries no descriptors, which
// an exec's stdio needs; the errors are the same classes as over ttRPC
// (errdefs, through their gRPC codes).

// maxMessage bounds a message: an exec's process spec with its
// environment fits many times over.
const maxMessage = 1 << 20

// maxFDs is the most descriptors a message carries (stdin, stdout, stderr).
const maxFDs = 3

// The operations of a request.
const (
	opBoot   = "boot"
	opState  = "state"
	opStart  = "start"
	opKill   = "kill"
	opDelete = "delete"
	opExec   = "exec"
	opSignal = "signal"
	opResize = "resize"
	opPids   = "pids"
	opPause  = "pause"
	opResume = "resume"
	opUpdate = "update"
	opStats  = "stats"
)

// request is a message to the supervisor.
type request struct {
	Op string `json:"op"`
	// Signal and All for kill and signal (an exec's stand-in forwarding).
	Signal int  `json:"signal,omitempty"`
	All    bool `json:"all,omitempty"`
	// Force for delete.
	Force bool `json:"force,omitempty"`
	// Process for exec; its stdio descriptors come with the message.
	Process *specs.Process `json:"process,omitempty"`
	// Resources for update.
	Resources *specs.LinuxResources `json:"resources,omitempty"`
	// Width and Height for resize.
	Width  uint32 `json:"width,omitempty"`
	Height uint32 `json:"height,omitempty"`
}

// response is a message from the supervisor.
type response struct {
	Error *wireError `json:"error,omitempty"`
	// Status is the container's status (state).
	Status string `json:"status,omitempty"`
	// Pids are the container's processes in the guest (pids).
	Pids []uint32 `json:"pids,omitempty"`
	// Stats are the container's statistics (stats), runc's.
	Stats *types.Stats `json:"stats,omitempty"`
	// Exit is an exec's exit status, in the exec's last message.
	Exit *int `json:"exit,omitempty"`
}

// wireError is an error with its class as a gRPC code.
type wireError struct {
	Code    uint32 `json:"code"`
	Message string `json:"message"`
}

func toWire(err error) *wireError {
	if err == nil {
		return nil
	}
	st, _ := grpcstatus.FromError(errgrpc.ToGRPC(err))
	return &wireError{Code: uint32(st.Code()), Message: st.Message()}
}

func (w *wireError) err() error {
	if w == nil {
		return nil
	}
	return errgrpc.ToNative(grpcstatus.Error(codes.Code(w.Code), w.Message))
}

// send writes one message with files' descriptors.
func send(c *net.UnixConn, v any, files ...*os.File) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) > maxMessage {
		return fmt.Errorf("message of %d bytes exceeds %d: %w", len(b), maxMessage, errdefs.ErrInvalidArgument)
	}
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	n, _, err := c.WriteMsgUnix(b, oob, nil)
	if err != nil {
		return err
	}
	if n != len(b) {
		return fmt.Errorf("short write of a message: %d of %d bytes", n, len(b))
	}
	return nil
}

// recv reads one message into v and returns the descriptors it carried,
// as files the caller owns. io.EOF when the peer closed the connection.
func recv(c *net.UnixConn, v any) ([]*os.File, error) {
	buf := make([]byte, maxMessage+1)
	oob := make([]byte, unix.CmsgSpace(maxFDs*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, err
	}
	files, ferr := parseRights(oob[:oobn])
	closeAll := func() {
		for _, f := range files {
			_ = f.Close()
		}
	}
	switch {
	case ferr != nil:
		closeAll()
		return nil, ferr
	case flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 || n > maxMessage:
		closeAll()
		return nil, fmt.Errorf("message truncated (more than %d bytes or %d descriptors): %w", maxMessage, maxFDs, errdefs.ErrInvalidArgument)
	case n == 0:
		closeAll()
		return nil, errEOF
	}
	if err := json.Unmarshal(buf[:n], v); err != nil {
		closeAll()
		return nil, fmt.Errorf("decoding a message: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	return files, nil
}

// errEOF is a connection closed by the peer (an empty packet).
var errEOF = errors.New("connection closed by the peer")

func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parsing control message: %w", err)
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			// Non-blocking, so that closing the file ends a copy
			// blocked on it.
			_ = unix.SetNonblock(fd, true)
			files = append(files, os.NewFile(uintptr(fd), "received"))
		}
	}
	if len(files) > maxFDs {
		for _, f := range files {
			_ = f.Close()
		}
		return nil, fmt.Errorf("%d descriptors in one message, want at most %d: %w", len(files), maxFDs, errdefs.ErrInvalidArgument)
	}
	return files, nil
}

// call sends one request and reads one response on a new connection to
// the supervisor's socket.
func call(sock string, req request, files ...*os.File) (response, error) {
	c, err := dial(sock)
	if err != nil {
		return response{}, err
	}
	defer func() { _ = c.Close() }()
	if err := send(c, req, files...); err != nil {
		return response{}, fmt.Errorf("%s: %w", req.Op, err)
	}
	var resp response
	if _, err := recv(c, &resp); err != nil {
		return response{}, fmt.Errorf("%s: reading the answer: %w", req.Op, err)
	}
	return resp, resp.Error.err()
}

func dial(sock string) (c *net.UnixConn, err error) {
	err = viaShortPath(sock, func(addr string) error {
		c, err = net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: addr, Net: "unixpacket"})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("connecting to the container's supervisor: %w: %w", err, errdefs.ErrUnavailable)
	}
	return c, nil
}

// listen listens on the socket at sock.
func listen(sock string) (l *net.UnixListener, err error) {
	err = viaShortPath(sock, func(addr string) error {
		l, err = net.ListenUnix("unixpacket", &net.UnixAddr{Name: addr, Net: "unixpacket"})
		return err
	})
	if err != nil {
		return nil, err
	}
	// The path it would unlink on close may be a /proc/self/fd one;
	// the supervisor removes the socket by its real path.
	l.SetUnlinkOnClose(false)
	return l, nil
}

// maxSockPath is the longest path a unix socket address holds.
const maxSockPath = 107

// viaShortPath calls fn with an address for the socket path p that fits a
// unix socket address: p itself, or, for a longer p (containerd's runc
// shim puts state under long --root paths, and Docker's IDs are 64 bytes),
// p's name below /proc/self/fd/<descriptor of p's directory>.
func viaShortPath(p string, fn func(addr string) error) error {
	if len(p) <= maxSockPath {
		return fn(p)
	}
	fd, err := unix.Open(filepath.Dir(p), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening the socket's directory: %w", err)
	}
	defer func() { _ = unix.Close(fd) }()
	return fn(fmt.Sprintf("/proc/self/fd/%d/%s", fd, filepath.Base(p)))
}
