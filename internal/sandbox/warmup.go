package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/storage"
)

const (
	// WarmUpContainerID names the throwaway container of a warm-up.
	WarmUpContainerID = "hull-warm-up"
	// warmUpDirName is the warm-up's bundle in the state directory; its
	// rootfs holds the warm-up binary alone.
	warmUpDirName = "warm-up"
	// warmUpBinaryName is the binary's name at the root of the rootfs.
	warmUpBinaryName = "warm-up"
)

// warmUp runs one throwaway container in a warm sandbox's guest through
// the path a pod's first container takes (guest sandbox with the share
// mounted, container create with its files in the shared tree, start,
// wait, delete), so that the guest code it runs is translated (TCG) or
// paged in before a pod arrives. Its root filesystem is made by the host:
// a directory holding a copy of cfg.WarmUpBinary (a static executable
// the host trusts, run with -h: it prints its usage and exits 0), bound
// read-only into the shared tree; the container has mount, IPC and UTS
// namespaces and no PID namespace (the hull-agent binary as a PID 1 would
// take itself for the guest's init).
//
// Everything it makes is removed before it returns, whatever happens: the
// container (in the guest and in the shared tree), the bundle, and the
// guest sandbox (DestroySandbox unmounts the share), so that Adopt finds
// the guest as boot left it. It has cfg.DialTimeout in all: a guest that
// does not answer fails the warm start.
func (s *Sandbox) warmUp(ctx context.Context, cfg Config) (retErr error) {
	if cfg.WarmUpBinary == "" || !filepath.IsAbs(cfg.WarmUpBinary) {
		return fmt.Errorf("warm-up binary %q is not an absolute path: %w", cfg.WarmUpBinary, errdefs.ErrInvalidArgument)
	}
	if !sharesFS(cfg) {
		return fmt.Errorf("no warm-up with shared_fs = %q: the warm-up container's root is a host directory, which needs virtio-fs: %w", cfg.SharedFS, errdefs.ErrNotImplemented)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	// The undo of each part runs with a context of its own: ctx may be
	// what failed.
	cleanupCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	}

	bundle := filepath.Join(s.stateDir, warmUpDirName)
	defer func() {
		if err := os.RemoveAll(bundle); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("removing the warm-up bundle: %w", err))
		}
	}()
	rootfs, err := warmUpRootfs(bundle, cfg.WarmUpBinary)
	if err != nil {
		return err
	}

	if _, err := s.client.Containers().CreateSandbox(ctx, &agent.CreateSandboxRequest{
		SandboxId: s.id,
		Storages: []*agent.Storage{{
			Source:     storage.FSTag,
			Fstype:     "virtiofs",
			MountPoint: storage.GuestSharedDir,
		}},
	}); err != nil {
		return fmt.Errorf("creating the guest sandbox: %w", s.guestError(err))
	}
	defer func() {
		cctx, cancel := cleanupCtx()
		defer cancel()
		if _, err := s.client.Containers().DestroySandbox(cctx, &agent.DestroySandboxRequest{}); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("destroying the guest sandbox: %w", s.guestError(err)))
		}
	}()

	c, err := s.createContainer(ctx, ContainerConfig{
		ID:     WarmUpContainerID,
		Bundle: bundle,
		Spec:   warmUpSpec(),
		Rootfs: []storage.Mount{{Type: "bind", Source: rootfs, Options: []string{"rbind", "ro"}}},
	}, StateStarting)
	if err != nil {
		return err
	}
	deleted := false
	defer func() {
		if deleted {
			return
		}
		cctx, cancel := cleanupCtx()
		defer cancel()
		if err := c.Delete(cctx, true); err != nil {
			retErr = errors.Join(retErr, err)
		}
	}()
	if err := c.Start(ctx); err != nil {
		return err
	}
	st, err := c.Wait(ctx)
	if err != nil {
		return fmt.Errorf("waiting for the warm-up container: %w", err)
	}
	if st.Code != 0 {
		return fmt.Errorf("warm-up container exited with status %d: %w", st.Code, errdefs.ErrUnknown)
	}
	deleted = true
	if err := c.Delete(ctx, false); err != nil {
		return err
	}
	log.G(ctx).WithField("sandbox", s.id).Debug("warm-up container ran")
	return nil
}

// warmUpRootfs makes bundle/rootfs with a copy of binary at its root and
// the mount points of warmUpSpec's mounts, and returns its path. The copy
// (never a link) keeps the host's binary out of the guest's reach.
func warmUpRootfs(bundle, binary string) (string, error) {
	rootfs := filepath.Join(bundle, "rootfs")
	if err := os.Mkdir(bundle, 0o700); err != nil {
		return "", fmt.Errorf("warm-up bundle: %w", err)
	}
	for _, d := range []string{"proc", "dev", "tmp"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil { //nolint:gosec // G301: the container's root, read-only in the guest
			return "", fmt.Errorf("warm-up rootfs: %w", err)
		}
	}
	src, err := os.Open(binary)
	if err != nil {
		return "", fmt.Errorf("warm-up binary: %w", err)
	}
	defer func() { _ = src.Close() }()
	dst, err := os.OpenFile(filepath.Join(rootfs, warmUpBinaryName), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o555) //nolint:gosec // G302: an executable
	if err != nil {
		return "", fmt.Errorf("warm-up rootfs: %w", err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		_ = dst.Close()
		return "", fmt.Errorf("copying the warm-up binary: %w", err)
	}
	if err := dst.Close(); err != nil {
		return "", fmt.Errorf("copying the warm-up binary: %w", err)
	}
	return rootfs, nil
}

// warmUpSpec is the warm-up container's spec: the binary with -h, as root
// in a read-only root with /proc, /dev and /tmp, in mount, IPC and UTS
// namespaces.
func warmUpSpec() *specs.Spec {
	return &specs.Spec{
		Version:  specs.Version,
		Hostname: WarmUpContainerID,
		Root:     &specs.Root{Path: "rootfs", Readonly: true},
		Process: &specs.Process{
			Args:            []string{"/" + warmUpBinaryName, "-h"},
			Cwd:             "/",
			Env:             []string{"PATH=/"},
			NoNewPrivileges: true,
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "size=1024k"}},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.MountNamespace},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
			},
		},
	}
}
