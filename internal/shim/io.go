package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/sandbox"
)

// loggerExitTimeout is how long a binary:// logger gets to drain and exit
// after its pipes are closed.
const loggerExitTimeout = 10 * time.Second

// stdioPaths are the stdio locations containerd gives for a process: FIFO
// paths, or binary:// and file:// URIs for stdout and stderr.
type stdioPaths struct {
	stdin, stdout, stderr string
	terminal              bool
}

// processIO is the host end of a process's stdio: what the sandbox copies
// from and to.
type processIO struct {
	stdin io.ReadCloser
	// stdinPath is the stdin FIFO's path.
	stdinPath      string
	stdout, stderr io.WriteCloser
	// logger is the binary:// logging process, when there is one.
	logger *os.Process
}

// openIO opens the process's stdio. Output FIFOs are opened for writing,
// which waits until containerd's reader is there (it opens its end before
// asking for the process), so ctx should be the request's.
func openIO(ctx context.Context, ns, id string, p stdioPaths) (_ *processIO, retErr error) {
	pio := &processIO{}
	defer func() {
		if retErr != nil {
			pio.Close(ctx)
		}
	}()
	if p.stdin != "" {
		f, err := fifo.OpenFifo(ctx, p.stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, fmt.Errorf("opening stdin %s: %w", p.stdin, err)
		}
		pio.stdin, pio.stdinPath = f, p.stdin
	}
	if p.terminal {
		// A terminal merges the output into stdout.
		p.stderr = ""
	}
	u, err := outputURI(p.stdout)
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "binary":
		if err := pio.startLogger(ctx, ns, id, u, p.stderr != ""); err != nil {
			return nil, err
		}
		return pio, nil
	case "file":
		// containerd sends both streams to the one file.
		// The file is the user's requested output, for them (and log readers
		// in the owner's group) to read; containerd's runc shim creates it
		// 0644, so 0640 is already the tighter choice.
		f, err := os.OpenFile(u.Path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640) //nolint:gosec // G302: a user-requested log file meant to be read by its owner's group
		if err != nil {
			return nil, fmt.Errorf("opening log file %s: %w", u.Path, err)
		}
		pio.stdout = f
		if p.stderr != "" {
			pio.stderr = sharedFile{f}
		}
		return pio, nil
	}
	if pio.stdout, err = openOutFifo(ctx, p.stdout); err != nil {
		return nil, err
	}
	switch p.stderr {
	case "":
	case p.stdout:
		pio.stderr = sharedFile{pio.stdout}
	default:
		if pio.stderr, err = openOutFifo(ctx, p.stderr); err != nil {
			return nil, err
		}
	}
	return pio, nil
}

// outputURI parses a stdout location: a plain path (or fifo://) is a FIFO.
func outputURI(s string) (*url.URL, error) {
	if s == "" {
		return &url.URL{}, nil
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" || u.Scheme == "fifo" {
		return &url.URL{Scheme: "", Path: s}, nil //nolint:nilerr // not a URI: a FIFO path
	}
	switch u.Scheme {
	case "binary", "file":
		if u.Path == "" {
			return nil, fmt.Errorf("stdio uri %q has no path: %w", s, errdefs.ErrInvalidArgument)
		}
		return u, nil
	}
	return nil, fmt.Errorf("stdio uri scheme %q is not supported (fifo, binary, file): %w", u.Scheme, errdefs.ErrNotImplemented)
}

func openOutFifo(ctx context.Context, path string) (io.WriteCloser, error) {
	if path == "" {
		return nil, nil
	}
	f, err := fifo.OpenFifo(ctx, path, syscall.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("opening output fifo %s: %w", path, err)
	}
	return f, nil
}

// startLogger runs a binary:// logging process as containerd specifies it:
// the process's stdout on fd 3, stderr on fd 4, and fd 5 it closes when
// ready.
func (pio *processIO) startLogger(ctx context.Context, ns, id string, u *url.URL, stderr bool) (retErr error) {
	var closers []io.Closer
	defer func() {
		// Read ends and the parent's copy of the ready pipe's write end:
		// nothing was written through them.
		for _, c := range closers {
			_ = c.Close()
		}
	}()
	outR, outW, err := os.Pipe()
	if err != nil {
		return err
	}
	closers = append(closers, outR)
	errR, errW, err := os.Pipe()
	if err != nil {
		_ = outW.Close() // error path; nothing written yet
		return err
	}
	closers = append(closers, errR)
	readyR, readyW, err := os.Pipe()
	if err != nil {
		_ = outW.Close() // error path; nothing written yet
		_ = errW.Close()
		return err
	}
	closers = append(closers, readyR, readyW)
	cmd := loggerCommand(u, id, ns)
	cmd.ExtraFiles = []*os.File{outR, errR, readyW}
	if err := cmd.Start(); err != nil {
		_ = outW.Close() // error path; nothing written yet
		_ = errW.Close()
		return fmt.Errorf("starting logging binary %s: %w", u.Path, err)
	}
	pio.logger = cmd.Process
	pio.stdout = outW
	if stderr {
		pio.stderr = errW
	} else {
		_ = errW.Close() // stderr is not wanted; nothing is written to it
	}
	_ = readyW.Close() // the binary holds its copy; its closing is the signal
	closers = closers[:3]
	// The binary closes its end of the ready pipe once it is set up.
	if _, err := readyR.Read(make([]byte, 1)); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("waiting for logging binary %s: %w", u.Path, err)
	}
	log.G(ctx).WithField("binary", u.Path).Debug("logging binary ready")
	return nil
}

// stdio returns the sandbox's view of the streams.
func (pio *processIO) stdio(terminal bool) sandbox.IO {
	var sio sandbox.IO
	if pio.stdin != nil {
		sio.Stdin = pio.stdin
	}
	if pio.stdout != nil {
		sio.Stdout = pio.stdout
	}
	if pio.stderr != nil && !terminal {
		sio.Stderr = pio.stderr
	}
	sio.Terminal = terminal
	return sio
}

// stdinDrainLimit bounds how long closeStdin waits for the input still in
// the FIFO to be taken.
const stdinDrainLimit = 10 * time.Second

// closeStdin ends the process's input (CloseIO). Clients such as ctr ask
// for it right after their last write, before they close their end of the
// FIFO, so the FIFO may still hold input. closeStdin waits, at most
// stdinDrainLimit, until the copy into the guest has read all of it, then
// closes the read end: the copy ends there and half-closes the stream after
// everything it read, and the process reads end of file after the last
// byte. What a client writes later is not delivered.
func (pio *processIO) closeStdin() {
	if pio == nil || pio.stdin == nil {
		return
	}
	waitFIFOEmpty(pio.stdinPath, stdinDrainLimit)
	_ = pio.stdin.Close()
}

// waitFIFOEmpty returns once the FIFO at path holds no data, after limit,
// or at once when path is not a FIFO that can be asked. It asks through a
// descriptor of its own, opened without waiting for a writer, so it reads
// nothing and does not depend on whether a client ever opened the FIFO.
func waitFIFOEmpty(path string, limit time.Duration) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer func() { _ = unix.Close(fd) }()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		return
	}
	for end := time.Now().Add(limit); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
		// TIOCINQ is FIONREAD: the bytes the pipe holds.
		if n, err := unix.IoctlGetInt(fd, unix.TIOCINQ); err != nil || n == 0 {
			return
		}
	}
}

// Close closes every stream, which gives containerd's readers EOF, and
// waits for a logging binary to exit.
func (pio *processIO) Close(ctx context.Context) {
	if pio == nil {
		return
	}
	if pio.stdin != nil {
		_ = pio.stdin.Close() // read side: nothing to flush
	}
	for _, c := range []io.Closer{pio.stdout, pio.stderr} {
		if c != nil {
			if err := c.Close(); err != nil {
				log.G(ctx).WithError(err).Warn("closing process output")
			}
		}
	}
	if pio.logger == nil {
		return
	}
	p := pio.logger
	pio.logger = nil
	done := make(chan struct{})
	go func() {
		_, _ = p.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(loggerExitTimeout):
		log.G(ctx).Warn("logging binary did not exit; killing it")
		_ = p.Kill()
		<-done
	}
}

// sharedFile is a second handle on a writer whose closing belongs to the
// first.
type sharedFile struct{ io.Writer }

func (sharedFile) Close() error { return nil }

// loggerCommand is a binary:// URI's command: the path, the query's keys
// and first values as arguments, and the container's ID and namespace in
// the environment (containerd's contract for logging binaries).
func loggerCommand(u *url.URL, id, ns string) *exec.Cmd {
	var args []string
	for k, vs := range u.Query() {
		args = append(args, k)
		if len(vs) > 0 && vs[0] != "" {
			args = append(args, vs[0])
		}
	}
	cmd := exec.Command(u.Path, args...)
	cmd.Env = append(os.Environ(), "CONTAINER_ID="+id, "CONTAINER_NAMESPACE="+ns)
	return cmd
}
