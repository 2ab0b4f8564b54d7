package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/log"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/sandbox"
)

// consoleWaitTimeout bounds asking for the shell's status once its
// console has ended.
const consoleWaitTimeout = 30 * time.Second

// consoleExit is typed after piped input: ^D would not do, because the
// shell's line editor only takes it for the end of input when it arrives at
// its prompt, and the kernel's terminal swallows one that comes earlier.
const consoleExit = "exit\n"

func newExecCommand(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "exec SANDBOX",
		Short: "Open a root shell in a sandbox's VM (debug console)",
		Long: "Open the debug console of a running sandbox: a root shell in its VM, outside every\n" +
			"container. SANDBOX is the sandbox's ID, or a container ID that containerd started\n" +
			"(the shim names its sandbox <id>@<namespace>; give that when the ID is in several\n" +
			"namespaces). It needs [agent] debug_console = true in the configuration when the\n" +
			"sandbox started, and a guest image with a debug shell (hull image build --debug-shell).\n" +
			"On a terminal the shell is interactive; piped input is typed into it, followed by exit.\n" +
			"hull exec exits with the shell's status (128 + the signal when a signal ended it).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := g.load(ctx)
			if err != nil {
				return err
			}
			dir, _, err := sandbox.Find(c.Runtime.StateDir, args[0])
			if err != nil {
				return err
			}
			req := sandbox.ConsoleRequest{Term: os.Getenv("TERM")}
			in, out := cmd.InOrStdin(), cmd.OutOrStdout()
			var term console.Console
			if f, ok := in.(*os.File); ok {
				if cur, err := console.ConsoleFromFile(f); err == nil {
					term = cur
					if sz, err := cur.Size(); err == nil {
						req.Width, req.Height = uint32(sz.Width), uint32(sz.Height)
					}
				}
			}
			conn, pid, err := sandbox.DialConsole(ctx, dir, req)
			if err != nil {
				return err
			}
			defer func() { _ = conn.Close() }()
			// An interrupt or SIGTERM of hull ends the console: the guest
			// hangs the shell up. (On a terminal in raw mode ^C is typed
			// into the guest instead.)
			stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
			defer stop()
			if term != nil {
				if err := term.SetRaw(); err != nil {
					return fmt.Errorf("terminal: %w", err)
				}
				defer func() { _ = term.Reset() }()
				stopResize := followResize(ctx, term, dir, pid)
				defer stopResize()
			}
			if err := runConsole(conn, in, out, term != nil); err != nil && ctx.Err() == nil {
				return err
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// The shell has exited: hull exec ends with its status.
			wctx, cancel := context.WithTimeout(ctx, consoleWaitTimeout)
			defer cancel()
			status, err := sandbox.WaitConsole(wctx, dir, pid)
			if err != nil {
				return fmt.Errorf("the console ended, its shell's status is unknown: %w", err)
			}
			if status != 0 {
				return exitError(status)
			}
			return nil
		},
	}
}

// runConsole copies in to conn and conn to out until the console ends.
// Piped input that ends is followed by "exit" on a line of its own, so that
// the shell ends once it has run the rest; on a terminal the user ends it.
func runConsole(conn net.Conn, in io.Reader, out io.Writer, interactive bool) error {
	go func() {
		lw := &lastByteWriter{w: conn}
		_, err := io.Copy(lw, in)
		if err == nil && !interactive {
			tail := consoleExit
			if lw.n > 0 && lw.last != '\n' {
				tail = "\n" + tail
			}
			_, _ = io.WriteString(conn, tail)
		}
	}()
	_, err := io.Copy(out, conn)
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// lastByteWriter remembers the last byte written through it.
type lastByteWriter struct {
	w    io.Writer
	n    int64
	last byte
}

func (l *lastByteWriter) Write(p []byte) (int, error) {
	n, err := l.w.Write(p)
	if n > 0 {
		l.n += int64(n)
		l.last = p[n-1]
	}
	return n, err
}

// followResize gives the console the local terminal's size whenever it
// changes (SIGWINCH), until the returned function is called.
func followResize(ctx context.Context, term console.Console, dir string, pid uint32) func() {
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, unix.SIGWINCH)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-winch:
			}
			sz, err := term.Size()
			if err != nil || sz.Width == 0 || sz.Height == 0 {
				continue
			}
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			if err := sandbox.ResizeConsole(rctx, dir, pid, uint32(sz.Width), uint32(sz.Height)); err != nil {
				log.G(ctx).WithError(err).Debug("resizing the debug console")
			}
			rcancel()
		}
	}()
	return func() {
		signal.Stop(winch)
		cancel()
		<-done
	}
}
