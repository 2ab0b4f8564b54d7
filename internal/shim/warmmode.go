package shim

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/factory"
	"github.com/hull-runtime/hull/internal/hostcgroup"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// WarmRequested tells whether the factory started the shim in warm mode
// (`containerd-shim-hull-v2 warm ...`).
func WarmRequested(args []string) bool { return len(args) > 0 && args[0] == factory.WarmArg }

// RunWarm is the shim's warm mode (docs/factory.md): it boots a sandbox
// with a placeholder ID in the factory's cgroup, tells the factory it is
// ready and waits to be claimed. Claimed, it makes this process what a cold
// shim server's is (the pod's listening socket on fd 3, the bundle as
// working directory, the server's arguments and containerd's environment,
// standard descriptors on /dev/null) and returns the sandbox: the caller
// runs the shim library's server with it handed to the task service.
// Before the claim, the factory's end (the lifeline), a signal or the VM's
// exit stops the sandbox and RunWarm returns an error.
func RunWarm(args []string) (*sandbox.Sandbox, error) {
	fs := flag.NewFlagSet(factory.WarmArg, flag.ContinueOnError)
	id := fs.String("id", "", "the warm sandbox's placeholder ID")
	socket := fs.String("socket", "", "the control socket to listen on")
	configFile := fs.String("config", "", "the configuration file")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if !strings.HasPrefix(*id, sandbox.WarmIDPrefix) || *socket == "" {
		return nil, fmt.Errorf("warm mode needs -id %s<hex> and -socket: %w", sandbox.WarmIDPrefix, errdefs.ErrInvalidArgument)
	}
	// The factory's descriptors must not reach QEMU or virtiofsd.
	unix.CloseOnExec(factory.WarmListenerFD)
	unix.CloseOnExec(factory.WarmLifelineFD)
	// Non-blocking, so that closing it ends the read that watches it.
	if err := unix.SetNonblock(factory.WarmLifelineFD, true); err != nil {
		return nil, fmt.Errorf("lifeline on fd %d: %w", factory.WarmLifelineFD, err)
	}
	lifeline := os.NewFile(factory.WarmLifelineFD, "lifeline")

	ctx := log.WithLogger(context.Background(), log.L.WithField("warm", *id))
	ctx, stopSignals := signal.NotifyContext(ctx, unix.SIGTERM, unix.SIGINT)
	defer stopSignals()
	w, ctx := factory.Warm(ctx, lifeline)

	sb, err := bootWarm(ctx, *id, *configFile)
	if err != nil {
		w.Close()
		return nil, err
	}
	claim, err := waitClaim(ctx, w, sb, *socket)
	if err != nil {
		sctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		if serr := sb.Stop(sctx); serr != nil {
			log.G(ctx).WithError(serr).Warn("stopping the warm sandbox")
		}
		return nil, err
	}
	if err := detachStdio(); err != nil {
		// The hand-over is committed: the server runs all the same.
		log.G(ctx).WithError(err).Warn("standard descriptors left as they were")
	}
	_ = claim.Listener.Close() // fd 3 is its copy
	// ps and /proc show the pod's server, not the warm shim it was.
	if how, err := setCmdline(os.Args); err != nil {
		log.G(ctx).WithError(err).Warn("command line left as the warm shim's")
	} else {
		log.G(ctx).WithField("via", how).Debug("command line set to the server's")
	}
	return sb, nil
}

// warmNICs is how many NIC hotplug slots a warm VM reserves for the
// network of the pod that adopts it.
const warmNICs = launch.TemplateNICs

// bootWarm starts the warm sandbox id in the factory's cgroup.
func bootWarm(ctx context.Context, id, configFile string) (*sandbox.Sandbox, error) {
	cfg, err := config.Load(configFile)
	if err != nil {
		return nil, fmt.Errorf("loading hull configuration: %w", err)
	}
	if err := applyLogLevel(log.G(ctx).Logger, cfg.Runtime.LogLevel); err != nil {
		return nil, err
	}
	sc, err := launch.SandboxConfig(cfg, id)
	if err != nil {
		return nil, err
	}
	if sc.Cgroup.Path, err = hostcgroup.Resolve("", cfg.Factory.CgroupParent, id); err != nil {
		return nil, err
	}
	// A pod's network is known only at its adoption: it is hot-added into
	// slots reserved now (the configuration requires a q35 machine).
	sc.VM.HotplugNICs = max(sc.VM.HotplugNICs, warmNICs)
	if err := launch.WarmUp(cfg, &sc); err != nil {
		return nil, err
	}
	start := time.Now()
	sb, err := sandbox.StartWarm(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("starting warm sandbox %s: %w", id, err)
	}
	log.G(ctx).WithField("took", time.Since(start).Round(time.Millisecond)).Info("warm sandbox started")
	return sb, nil
}

// waitClaim serves the control socket until a claim was committed,
// holding the sandbox's state directory (factory.Hold) so that a factory
// starting meanwhile leaves it alone. The VM's exit ends the wait.
func waitClaim(ctx context.Context, w *factory.WarmShim, sb *sandbox.Sandbox, socket string) (*factory.Claim, error) {
	if err := factory.Hold(sb.StateDir()); err != nil {
		w.Close()
		return nil, err
	}
	if err := w.Listen(socket); err != nil {
		w.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		if _, err := sb.VM().Wait(ctx); err == nil {
			cancel(errors.New("the warm VM exited"))
		}
	}()
	if err := w.Ready(); err != nil {
		w.Close()
		return nil, err
	}
	log.G(ctx).WithField("socket", socket).Info("warm sandbox ready")
	return w.Wait(ctx, takeHandover)
}

// takeHandover makes this process a shim server for h, as serverCommand
// and Manager.Start make a cold one: the listening socket on fd 3, the
// bundle as working directory, the server's flags as its arguments and the
// environment containerd gave `shim start`.
func takeHandover(h factory.Handover, listener *os.File) error {
	if err := unix.Dup3(int(listener.Fd()), factory.WarmListenerFD, 0); err != nil {
		return fmt.Errorf("placing the shim socket on fd %d: %w", factory.WarmListenerFD, err)
	}
	if err := os.Chdir(h.Bundle); err != nil {
		return err
	}
	os.Clearenv()
	for _, kv := range h.Env {
		k, v, _ := strings.Cut(kv, "=")
		if err := os.Setenv(k, v); err != nil {
			return err
		}
	}
	os.Args = append([]string{os.Args[0]}, serverArgs(h.Namespace, h.ID, h.Address, h.Debug)...)
	return nil
}

// detachStdio points the standard descriptors at /dev/null, where a cold
// server's are: the factory's standard error may be a pipe that ends with
// it.
func detachStdio() error {
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer func() { _ = null.Close() }()
	for fd := 0; fd <= 2; fd++ {
		if err := unix.Dup3(int(null.Fd()), fd, 0); err != nil {
			return err
		}
	}
	return nil
}
