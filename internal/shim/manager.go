package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/log"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/factory"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/ocispec"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// RuntimeName is the runtime containerd knows hull by.
const RuntimeName = "io.containerd.hull.v2"

// addressFile is where, in the bundle, the shim's socket address is kept
// (the library reads it back to remove the socket at exit).
const addressFile = "address"

// WithoutReaper keeps the shim library from reaping every child: the
// sandbox waits for its own hypervisor and virtiofsd processes, and a
// process-wide reaper would take their exit statuses from it. Orphans are
// not ours to adopt either.
func WithoutReaper(c *shim.Config) {
	c.NoReaper = true
	c.NoSubreaper = true
}

// Manager is the shim's `start` and `delete` commands.
type Manager struct{}

var _ shim.Manager = Manager{}

// Name is the runtime's name.
func (Manager) Name() string { return RuntimeName }

// Start is `containerd-shim-hull-v2 start`, run by containerd in the
// bundle: it starts the shim server of the container's sandbox, or finds it
// running when the container joins a pod, and returns its address. It
// replies with the plain address, which containerd 1.6, 1.7 and 2.x all
// read as a task API v2 shim. Of what containerd writes on stdin (the bare
// options of 1.6 to 2.2, the BootstrapParams of 2.3+: startOptions) only
// the runtime options' configuration path is used, to decide whether to
// claim a warm VM; the options come again with the create request.
//
// It must not write anything but the address: containerd 2.x reads stdout
// and stderr together.
func (Manager) Start(ctx context.Context, id string, opts shim.StartOpts) (_ string, retErr error) {
	bundle, err := os.Getwd()
	if err != nil {
		return "", err
	}
	spec, err := ocispec.ReadSpec(bundle)
	if err != nil {
		return "", err
	}
	// The socket is the pod's: only the annotations of the runtime that
	// owns them route a container to it (trustedAnnotations).
	annotations, err := trustedAnnotations(spec.Annotations)
	if err != nil {
		return "", fmt.Errorf("container %s: %w", id, err)
	}
	address, err := shim.SocketAddress(ctx, opts.Address, sandboxID(id, annotations))
	if err != nil {
		return "", err
	}
	socket, err := shim.NewSocket(address)
	if err != nil {
		if !shim.SocketEaddrinuse(err) {
			return "", fmt.Errorf("creating the shim socket: %w", err)
		}
		// The pod's shim runs: the container joins it.
		if shim.CanConnect(address) {
			if err := shim.WriteAddress(addressFile, address); err != nil {
				return "", err
			}
			return address, nil
		}
		// A dead shim's socket.
		if err := shim.RemoveSocket(address); err != nil {
			return "", fmt.Errorf("removing a stale shim socket: %w", err)
		}
		if socket, err = shim.NewSocket(address); err != nil {
			return "", fmt.Errorf("creating the shim socket: %w", err)
		}
	}
	defer func() {
		if retErr != nil {
			_ = socket.Close() // error path: the socket is being removed
			_ = shim.RemoveSocket(address)
		}
	}()
	if err := shim.WriteAddress(addressFile, address); err != nil {
		return "", err
	}
	f, err := socket.File()
	if err != nil {
		return "", err
	}
	// The server gets its own copy of the descriptor; ours is only passed on.
	defer func() { _ = f.Close() }()

	// A warm shim of the factory takes the socket, with its booted VM, when
	// the pod's configuration has a factory. Options that cannot be read
	// claim nothing: the create request, which brings them again, fails on
	// them or boots.
	if runtimeOpts, err := stdinStartOptions(id, startNamespace(ctx)); err == nil {
		if pidfd, ok := claimWarm(ctx, id, bundle, opts, runtimeOpts, annotations, f); ok {
			served, err := settleClaimed(pidfd, shim.AdjustOOMScore)
			if err != nil {
				return "", err
			}
			if served {
				return address, nil
			}
			// Dropped: a cold server serves the socket, as on a miss.
		}
	}

	cmd, err := serverCommand(ctx, id, bundle, opts)
	if err != nil {
		return "", err
	}
	// The library serves on fd 3 when it is given no socket path.
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("starting the shim server: %w", err)
	}
	defer func() {
		if retErr != nil {
			_ = cmd.Process.Kill()
		}
	}()
	go cmd.Wait() //nolint:errcheck // the server outlives this command; wait only to reap it if it dies first
	if err := shim.AdjustOOMScore(cmd.Process.Pid); err != nil {
		return "", fmt.Errorf("adjusting the shim server's OOM score: %w", err)
	}
	return address, nil
}

// serverCommand is the command of the long-running shim server.
func serverCommand(ctx context.Context, id, bundle string, opts shim.StartOpts) (*exec.Cmd, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, serverArgs(ns, id, opts.Address, opts.Debug)...)
	cmd.Dir = bundle
	// Its own process group: a signal to containerd's group is not for it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd, nil
}

// serverArgs are the shim server's flags.
func serverArgs(ns, id, address string, debug bool) []string {
	args := []string{"-namespace", ns, "-id", id, "-address", address}
	if debug {
		args = append(args, "-debug")
	}
	return args
}

// startNamespace is the namespace `start` runs in, "" without one.
func startNamespace(ctx context.Context) string {
	ns, _ := namespaces.Namespace(ctx)
	return ns
}

// claimWarm asks the factory, when the pod's configuration turns it on
// and its socket exists, for a warm shim, and hands it the listening
// socket listener: the shim serves the pod from then on, with the VM it
// booted. The pod's configuration is found as the server finds it
// (configPath): the file runtimeOpts name, else $HULL_CONFIG, else the
// search path; a pod whose configuration has no factory claims nothing,
// whatever factory runs, and neither does a pod whose size (its trusted
// sizing annotations) a warm VM cannot grow to (warmFit): the factory is
// not asked, so no warm VM is spent and none is refilled for it. It
// returns a pidfd of the shim, or false for a miss (factory off, absent,
// empty, failing or slower than factory.claim_timeout, pod too big), on
// which the caller starts a cold server; a miss leaves no warm shim
// serving. Nothing is logged: `start` may write nothing but the address.
func claimWarm(ctx context.Context, id, bundle string, opts shim.StartOpts, runtimeOpts *anypb.Any, annotations map[string]string, listener *os.File) (int, bool) {
	path, err := configPath(runtimeOpts)
	if err != nil {
		return 0, false
	}
	cfg, err := config.Load(path)
	if err != nil || cfg.Factory.VMCache == 0 {
		return 0, false
	}
	maxVCPUs, maxMemoryMiB := launch.Limits(cfg)
	base := vmSize{cfg.Hypervisor.VCPUs, cfg.Hypervisor.MemoryMiB}
	if warmFit(base, vmSize{maxVCPUs, maxMemoryMiB}, annotations) != nil {
		return 0, false
	}
	if _, err := os.Stat(cfg.Factory.Socket); err != nil { //nolint:gosec // G703: the configuration's path
		return 0, false
	}
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return 0, false
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Factory.ClaimTimeout.Duration)
	defer cancel()
	c, err := factory.Dial(ctx, cfg.Factory.Socket)
	if err != nil {
		return 0, false
	}
	defer func() { _ = c.Close() }()
	r, err := c.Claim(ctx, id)
	if err != nil {
		return 0, false
	}
	h := factory.Handover{Namespace: ns, ID: id, Address: opts.Address, Debug: opts.Debug, Bundle: bundle, Env: os.Environ()}
	pidfd, err := factory.Handoff(ctx, r.GetControlSocket(), listener, h)
	if err != nil {
		return 0, false
	}
	return pidfd, true
}

// Stop is `containerd-shim-hull-v2 delete`, which containerd runs in the
// bundle when the shim died or could not be reached: it removes what the
// sandbox left (VM, virtiofsd, mounts, cgroup, state directory) and the
// shim's socket.
func (Manager) Stop(ctx context.Context, id string) (shim.StopStatus, error) {
	bundle, err := os.Getwd()
	if err != nil {
		return shim.StopStatus{}, err
	}
	if o, ok := ctx.Value(shim.OptsKey{}).(shim.Opts); ok && o.BundlePath != "" {
		bundle = o.BundlePath
	}
	logger := log.G(ctx).WithField("id", id)
	address, _ := shim.ReadAddress(filepath.Join(bundle, addressFile))
	alive := address != "" && shim.CanConnect(address)
	if address != "" && !alive {
		// First, while containerd still waits for us: its wait for this
		// command is bounded, and the cleanup below can be slow.
		_ = shim.RemoveSocket(address)
	}
	r, ok, err := readRecord(bundle)
	switch {
	case err != nil:
		logger.WithError(err).Warn("unreadable sandbox record; nothing to clean up")
	case ok && alive && r.SandboxID != id:
		// A member of a pod whose shim still serves: the pod's VM is not
		// this container's to remove.
		logger.Info("the pod's shim is alive; leaving its sandbox")
	case ok:
		err := sandbox.Cleanup(ctx, r.StateRoot, r.hostID())
		if r.WarmID != "" {
			// Gone when the adoption renamed it; else what it left.
			err = errors.Join(err, sandbox.Cleanup(ctx, r.StateRoot, r.WarmID))
		}
		if err != nil {
			return shim.StopStatus{}, err
		}
	}
	return shim.StopStatus{
		ExitedAt:   time.Now(),
		ExitStatus: 128 + int(syscall.SIGKILL),
	}, nil
}
