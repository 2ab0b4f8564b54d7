package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/agentclient"
)

// IO is the host side of a process's standard streams. A nil field means
// none: the process gets /dev/null there.
//
// With Terminal the process gets a pseudo-terminal: Stdin feeds it, Stdout
// receives everything it prints, and Stderr is not used.
type IO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Terminal       bool
	// Width and Height are the terminal's initial size in characters.
	Width, Height uint32
}

// stdio is a process's open stdio streams and the copies between them and
// the host's readers and writers.
type stdio struct {
	stdin, stdout, stderr agentclient.Stream

	// output is done when the stdout and stderr copies have ended.
	output sync.WaitGroup

	closeOnce sync.Once
}

// openStdio opens one stream per stdio pipe of io and returns them with the
// request's Stdio naming them. Nothing is copied until start.
func (s *Sandbox) openStdio(ctx context.Context, pio IO) (_ *stdio, _ *agent.Stdio, retErr error) {
	st := &stdio{}
	req := &agent.Stdio{Terminal: pio.Terminal, Width: pio.Width, Height: pio.Height}
	defer func() {
		if retErr != nil {
			st.close()
		}
	}()
	open := func(want bool, dst *agentclient.Stream, id *uint64, name string) error {
		if !want {
			return nil
		}
		sid := s.client.NewStreamID()
		c, err := s.client.OpenStream(ctx, sid)
		if err != nil {
			return fmt.Errorf("opening %s stream: %w", name, s.guestError(err))
		}
		*dst, *id = c, sid
		return nil
	}
	if err := open(pio.Stdin != nil, &st.stdin, &req.Stdin, "stdin"); err != nil {
		return nil, nil, err
	}
	if err := open(pio.Stdout != nil, &st.stdout, &req.Stdout, "stdout"); err != nil {
		return nil, nil, err
	}
	if err := open(pio.Stderr != nil && !pio.Terminal, &st.stderr, &req.Stderr, "stderr"); err != nil {
		return nil, nil, err
	}
	return st, req, nil
}

// start copies between the streams and the host's readers and writers:
// stdin until its reader ends (then the process sees EOF), stdout and
// stderr until the agent closes them after the process's output ended.
func (st *stdio) start(ctx context.Context, pio IO) {
	logger := log.G(ctx)
	if st.stdin != nil {
		go func() {
			_, err := io.Copy(st.stdin, pio.Stdin)
			if err != nil && !isClosedErr(err) {
				logger.WithError(err).Debug("copying stdin")
			}
			if err := st.stdin.CloseWrite(); err != nil && !isClosedErr(err) {
				logger.WithError(err).Debug("closing stdin")
			}
		}()
	}
	copyOut := func(c agentclient.Stream, w io.Writer, name string) {
		if c == nil {
			return
		}
		st.output.Add(1)
		go func() {
			defer st.output.Done()
			if _, err := io.Copy(w, c); err != nil && !isClosedErr(err) {
				logger.WithError(err).Warnf("copying %s", name)
			}
		}()
	}
	copyOut(st.stdout, pio.Stdout, "stdout")
	copyOut(st.stderr, pio.Stderr, "stderr")
}

// waitOutput waits until the output copies have ended or ctx is done.
func (st *stdio) waitOutput(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		st.output.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for the output to be copied: %w", ctx.Err())
	}
}

// close closes every stream; copies still running end.
func (st *stdio) close() {
	if st == nil {
		return
	}
	st.closeOnce.Do(func() {
		for _, c := range []agentclient.Stream{st.stdin, st.stdout, st.stderr} {
			if c != nil {
				_ = c.Close()
			}
		}
	})
}

func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, os.ErrClosed) || errors.Is(err, errdefs.ErrUnavailable)
}
