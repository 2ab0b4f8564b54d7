package ociruntime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/atomicfile"
	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/ocispec"
)

// sandboxSuffix qualifies a container ID as a sandbox ID, so that
// hull-runtime's sandboxes never meet the shim's (<pod>@<namespace>).
const sandboxSuffix = "@hull-runtime"

type createOptions struct {
	bundle, pidFile, consoleSocket string
	noPivot, noNewKeyring          bool
	preserveFDs                    int
}

func newCreateCommand(g *globals) *cobra.Command {
	var o createOptions
	cmd := &cobra.Command{
		Use:   "create [flags] CONTAINER_ID",
		Short: "Create a container: boot its VM and create it there, stopped before its program runs",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return create(cmd.Context(), g, args[0], o)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.bundle, "bundle", "b", ".", "bundle directory holding config.json")
	f.StringVar(&o.pidFile, "pid-file", "", "file to write the PID that stands for the container to")
	f.StringVar(&o.consoleSocket, "console-socket", "", "unix socket to send the terminal's master to")
	f.BoolVar(&o.noPivot, "no-pivot", false, "accepted (the container's root is set up in the guest)")
	f.BoolVar(&o.noNewKeyring, "no-new-keyring", false, "accepted (the guest kernel's keyring is the VM's own)")
	f.IntVar(&o.preserveFDs, "preserve-fds", 0, "extra descriptors to pass to the container (not supported)")
	return cmd
}

// create makes the container as the package documentation describes. On
// error nothing is left: no supervisor, VM, state directory.
func create(ctx context.Context, g *globals, id string, o createOptions) (retErr error) {
	if o.preserveFDs > 0 {
		return errNotImplemented("--preserve-fds (a host descriptor cannot reach a process in a VM)")
	}
	bundle, err := filepath.Abs(o.bundle)
	if err != nil {
		return err
	}
	spec, err := ocispec.ReadSpec(bundle)
	if err != nil {
		return err
	}
	if spec.Process == nil {
		return fmt.Errorf("%s/config.json has no process: %w", bundle, errdefs.ErrInvalidArgument)
	}
	hooks, err := ocispec.SplitHooks(spec)
	if err != nil {
		return err
	}
	if err := checkJoins(g.root, spec); err != nil {
		return err
	}
	plan, err := planNetwork(spec)
	if err != nil {
		return err
	}
	hullConfig := g.hullConfig
	if hullConfig != "" {
		if hullConfig, err = filepath.Abs(hullConfig); err != nil {
			return err
		}
	}
	cfg, err := config.Load(hullConfig)
	if err != nil {
		return fmt.Errorf("loading hull configuration: %w", err)
	}
	dir, err := containerDir(g.root, id)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(g.root, 0o711); err != nil { //nolint:gosec // G301: search-only root, as runc's; each container's directory is 0700
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("container with id exists: %s: %w", id, errdefs.ErrAlreadyExists)
		}
		return err
	}
	defer func() {
		if retErr != nil {
			_ = os.RemoveAll(dir)
		}
	}()
	rootfs := ""
	if spec.Root != nil {
		rootfs = spec.Root.Path
		if !filepath.IsAbs(rootfs) {
			rootfs = filepath.Join(bundle, rootfs)
		}
	}
	terminal := spec.Process.Terminal
	var tty *os.File
	if terminal {
		if tty, err = newConsole(o.consoleSocket); err != nil {
			return err
		}
		defer func() { _ = tty.Close() }()
	}

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	theirs := os.NewFile(uintptr(fds[1]), "control")
	ctl, err := fileConn(os.NewFile(uintptr(fds[0]), "control"))
	if err != nil {
		_ = theirs.Close()
		return err
	}
	defer func() { _ = ctl.Close() }()
	cmd := exec.Command("/proc/self/exe", append(g.selfArgs(), "_supervise", id)...) //nolint:gosec // G204: ourselves
	cmd.Args[0] = "hull-runtime"
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if terminal {
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		cmd.SysProcAttr.Setctty, cmd.SysProcAttr.Ctty = true, 0
	} else {
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	}
	if plan.own {
		// The container's network namespace: the supervisor's own, for
		// the hooks to fill and the VM to mirror.
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWNET
	}
	if err := cmd.Start(); err != nil {
		_ = theirs.Close()
		return fmt.Errorf("starting the supervisor: %w", err)
	}
	_ = theirs.Close()
	booted := false
	defer func() {
		if retErr == nil {
			_ = cmd.Process.Release()
			return
		}
		if !booted {
			// It waits for the boot message and has made nothing.
			_ = cmd.Process.Kill()
		}
		_ = cmd.Wait()
	}()
	proc, err := child.Identify(cmd.Process.Pid)
	if err != nil {
		return err
	}
	rec := record{
		ID: id, Bundle: bundle, Rootfs: rootfs, Created: time.Now().UTC(), Owner: "",
		Annotations: spec.Annotations, Supervisor: proc, HullConfig: hullConfig,
		SandboxRoot: cfg.Runtime.StateDir, SandboxID: id + sandboxSuffix,
		Poststart: hooks.Poststart, Poststop: hooks.Poststop,
	}
	if err := writeRecord(dir, rec); err != nil {
		return err
	}
	// The runtime namespace's hooks run before the VM boots, so that the
	// network they set up is there to mirror.
	st := rec.hookState(statusCreating)
	if err := hooks.BeforeStart(ctx, st); err != nil {
		return err
	}
	booted = true
	if err := send(ctl, request{Op: opBoot}); err != nil {
		_ = cmd.Process.Kill()
		return fmt.Errorf("starting the supervisor: %w", err)
	}
	var resp response
	if _, err := recv(ctl, &resp); err != nil {
		return fmt.Errorf("the supervisor ended before the container was created: %w", err)
	}
	if err := resp.Error.err(); err != nil {
		return err
	}
	if o.pidFile != "" {
		if err := writePidFile(o.pidFile, proc.PID); err != nil {
			// The container runs: delete it again.
			_, _ = call(filepath.Join(dir, sockName), request{Op: opDelete, Force: true})
			return err
		}
	}
	log.G(ctx).WithField("pid", proc.PID).Debug("container created")
	return nil
}

// writePidFile writes pid to path atomically, as runc does.
func writePidFile(path string, pid int) error {
	path, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, []byte(strconv.Itoa(pid))); err != nil {
		return fmt.Errorf("writing the pid file: %w", err)
	}
	return nil
}
