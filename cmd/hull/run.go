package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/ocispec"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// teardownTimeout bounds the release of the container and its VM.
const teardownTimeout = time.Minute

func newRunCommand(g *globalFlags) *cobra.Command {
	var (
		bundle string
		id     string
		tty    bool
	)
	cmd := &cobra.Command{
		Use:   "run --bundle DIR",
		Short: "Run a container from an OCI bundle in a VM of its own, as `runc run` does",
		Long: "Boot a VM, create and start the container of the bundle's config.json in it with this\n" +
			"terminal's stdio, forward signals to it, and tear everything down when it exits.\n" +
			"Exits with the container's status: its exit code, or 128 + the signal that ended it.\n" +
			"A signal that arrives before the container runs aborts the run, tears down what was\n" +
			"made, and exits with 128 + that signal.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBundle(cmd, g, bundle, id, tty)
		},
	}
	cmd.Flags().StringVarP(&bundle, "bundle", "b", ".", "bundle directory holding config.json")
	cmd.Flags().StringVar(&id, "id", "", "container and sandbox id (default: run-<random>)")
	cmd.Flags().BoolVarP(&tty, "tty", "t", false, "give the container a terminal (also when the spec's process.terminal is set)")
	return cmd
}

func runBundle(cmd *cobra.Command, g *globalFlags, bundle, id string, tty bool) (retErr error) {
	// Signals are the container's from here on: main's context would
	// cancel on SIGINT and SIGTERM, which must be forwarded instead.
	ctx := context.WithoutCancel(cmd.Context())
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGWINCH)
	defer signal.Stop(sigs)

	c, err := g.load(ctx)
	if err != nil {
		return err
	}
	bundle, err = filepath.Abs(bundle)
	if err != nil {
		return err
	}
	spec, err := ocispec.ReadSpec(bundle)
	if err != nil {
		return err
	}
	if id == "" {
		id, err = randomID()
		if err != nil {
			return err
		}
	}
	terminal := tty || (spec.Process != nil && spec.Process.Terminal)
	if spec.Process != nil {
		spec.Process.Terminal = terminal
	}
	sc, err := launch.SandboxConfig(c, id)
	if err != nil {
		return err
	}
	if spec.Hostname != "" {
		sc.Hostname = spec.Hostname
	}
	// A network namespace the spec names (one made with `ip netns add` and
	// set up by hand or by CNI) is mirrored into the VM; the container
	// then uses the guest's namespace, which holds that network.
	sc.NetNS = takeNetNS(spec)

	// Until the container runs, a signal aborts the run.
	startCtx, abort := context.WithCancelCause(ctx)
	defer abort(nil)
	running := make(chan struct{})
	watcherDone := make(chan struct{})
	var early os.Signal
	go func() {
		defer close(watcherDone)
		for {
			select {
			case s := <-sigs:
				if s == syscall.SIGWINCH {
					continue
				}
				early = s
				abort(fmt.Errorf("interrupted by %s: %w", s, errdefs.ErrAborted))
				return
			case <-running:
				return
			}
		}
	}()
	// A run a signal aborted ends as a shell reports a process that
	// signal ended: 128 + its number (130 for SIGINT).
	interrupted := func(err error) error {
		if cause := context.Cause(startCtx); cause != nil && startCtx.Err() != nil {
			return signalStatus(early, fmt.Errorf("%w (%w)", cause, err))
		}
		return err
	}

	sb, err := sandbox.Start(startCtx, sc)
	if err != nil {
		return interrupted(err)
	}
	defer func() {
		tctx, cancel := context.WithTimeout(ctx, teardownTimeout)
		defer cancel()
		if err := sb.Stop(tctx); err != nil {
			retErr = errors.Join(retErr, err)
		}
	}()

	pio := sandbox.IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Terminal: terminal}
	if terminal {
		pio.Stderr = nil
		fd := int(os.Stdin.Fd())
		if term.IsTerminal(fd) {
			old, err := term.MakeRaw(fd)
			if err != nil {
				return fmt.Errorf("putting the terminal in raw mode: %w", err)
			}
			defer term.Restore(fd, old) //nolint:errcheck // nothing to do when restoring fails
		}
		if w, h, err := term.GetSize(int(os.Stdout.Fd())); err == nil {
			pio.Width, pio.Height = uint32(w), uint32(h)
		}
	}
	ctr, err := sb.CreateContainer(startCtx, sandbox.ContainerConfig{ID: id, Bundle: bundle, Spec: spec, Stdio: pio})
	if err != nil {
		return interrupted(err)
	}
	defer func() {
		tctx, cancel := context.WithTimeout(ctx, teardownTimeout)
		defer cancel()
		if err := ctr.Delete(tctx, true); err != nil {
			retErr = errors.Join(retErr, err)
		}
	}()
	if err := ctr.Start(startCtx); err != nil {
		return interrupted(err)
	}
	close(running)
	<-watcherDone
	if early != nil {
		return signalStatus(early, fmt.Errorf("interrupted by %s: %w", early, errdefs.ErrAborted))
	}

	exited := make(chan struct{})
	var (
		status  sandbox.ExitStatus
		waitErr error
	)
	go func() {
		status, waitErr = ctr.Wait(ctx)
		close(exited)
	}()
	for {
		select {
		case s := <-sigs:
			forwardSignal(ctx, ctr, s.(syscall.Signal))
			continue
		case <-exited:
		}
		break
	}
	if waitErr != nil {
		return waitErr
	}
	if status.Code != 0 {
		return exitError(status.Code)
	}
	return nil
}

// forwardSignal passes a signal to the container's init process; SIGWINCH
// becomes a resize of its terminal.
func forwardSignal(ctx context.Context, ctr *sandbox.Container, s syscall.Signal) {
	if s == syscall.SIGWINCH {
		w, h, err := term.GetSize(int(os.Stdout.Fd()))
		if err != nil {
			return
		}
		if err := ctr.ResizeTTY(ctx, uint32(w), uint32(h)); err != nil {
			log.G(ctx).WithError(err).Debug("resizing the terminal")
		}
		return
	}
	if err := ctr.Signal(ctx, s, false); err != nil {
		log.G(ctx).WithError(err).Warnf("forwarding %s", s)
	}
}

func randomID() (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return "run-" + hex.EncodeToString(b[:]), nil
}

// takeNetNS removes a network namespace with a path from the spec and
// returns the path; "" when the spec names none.
func takeNetNS(spec *specs.Spec) string {
	if spec.Linux == nil {
		return ""
	}
	for i, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace && ns.Path != "" {
			spec.Linux.Namespaces = append(spec.Linux.Namespaces[:i], spec.Linux.Namespaces[i+1:]...)
			return ns.Path
		}
	}
	return ""
}

// signalStatus gives err the exit status of a process that sig ended.
func signalStatus(sig os.Signal, err error) error {
	if s, ok := sig.(syscall.Signal); ok {
		return statusError{status: 128 + int(s), err: err}
	}
	return err
}
