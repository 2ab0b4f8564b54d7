package factory

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	api "github.com/hull-runtime/hull/api/factory/v1"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// lockName is the file in the factory's directory that one factory at a
// time holds locked.
const lockName = "factory.lock"

// Options configure Serve.
type Options struct {
	// Config is the configuration the warm VMs are made from (runtime
	// and factory sections); ConfigPath the file it came from, handed to
	// the warm shims ("" for the defaults).
	Config     *config.Config
	ConfigPath string
	// ShimBinary is the containerd-shim-hull-v2 binary.
	ShimBinary string
	// BootTimeout bounds a warm shim's start to its ready message.
	BootTimeout time.Duration
	// Ready, when set, is called once the socket serves.
	Ready func()
}

// service is the Factory ttRPC service.
type service struct{ pool *Pool }

func (s service) Claim(ctx context.Context, r *api.ClaimRequest) (*api.ClaimResponse, error) {
	id, socket, err := s.pool.Claim(ctx, r.GetId())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &api.ClaimResponse{WarmId: id, ControlSocket: socket}, nil
}

func (s service) Status(context.Context, *api.StatusRequest) (*api.StatusResponse, error) {
	return s.pool.Status(), nil
}

// newServer is the factory's ttRPC server, for callers of the factory's
// own user only.
func newServer(pool *Pool) (*ttrpc.Server, error) {
	srv, err := ttrpc.NewServer(ttrpc.WithServerHandshaker(ttrpc.UnixSocketRequireSameUser()))
	if err != nil {
		return nil, err
	}
	api.RegisterFactoryService(srv, service{pool: pool})
	return srv, nil
}

// Serve runs the factory until ctx ends: it cleans up what an earlier
// factory left, serves Claim and Status on factory.socket and keeps
// factory.vm_cache warm shims. At its end the warm shims not claimed stop.
func Serve(ctx context.Context, o Options) (retErr error) {
	c := o.Config
	if c.Factory.VMCache == 0 {
		return fmt.Errorf("factory.vm_cache is 0: the factory is off: %w", errdefs.ErrFailedPrecondition)
	}
	if _, err := os.Stat(o.ShimBinary); err != nil {
		return fmt.Errorf("shim binary: %w", err)
	}
	dir := filepath.Dir(c.Factory.Socket)
	if err := socketDir(dir); err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer func() { _ = lock.Close() }()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fmt.Errorf("another factory holds %s: %w", lock.Name(), errdefs.ErrAlreadyExists)
	}
	stateRoot := c.Runtime.StateDir
	sweep(ctx, stateRoot, dir)

	_ = os.Remove(c.Factory.Socket) // ours: the lock says no other factory runs
	old := unix.Umask(0o077)
	l, err := net.Listen("unix", c.Factory.Socket)
	unix.Umask(old)
	if err != nil {
		return fmt.Errorf("factory socket: %w", err)
	}
	defer func() { _ = os.Remove(c.Factory.Socket) }()
	cleanup := func(ctx context.Context, id string) error {
		_ = os.Remove(filepath.Join(dir, id+".sock"))
		return sandbox.Cleanup(ctx, stateRoot, id)
	}
	pool := newPool(int(c.Factory.VMCache), dir, execStarter{binary: o.ShimBinary, configPath: o.ConfigPath}.start, cleanup, o.BootTimeout)
	srv, err := newServer(pool)
	if err != nil {
		_ = l.Close()
		return err
	}

	poolDone := make(chan struct{})
	go func() {
		defer close(poolDone)
		pool.Run(ctx)
	}()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ctx, l) }()
	log.G(ctx).WithFields(log.Fields{"socket": c.Factory.Socket, "vm_cache": c.Factory.VMCache, "shim": o.ShimBinary}).Info("factory serving")
	if o.Ready != nil {
		o.Ready()
	}
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		retErr = fmt.Errorf("factory server: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	_ = srv.Shutdown(sctx)
	cancel()
	<-poolDone
	return retErr
}

// socketDir makes dir, the directory of the factory's socket and the warm
// shims' control sockets, or checks the one there: a directory (not a
// symbolic link) of this process's user that no one else may enter. One
// that is not is refused, never changed: factory.socket may name a shared
// directory (/tmp, /run) whose mode is not the factory's to take, and
// whose warm-*.sock files are not the factory's to remove.
func socketDir(dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil { //nolint:gosec // G301: the parents, as any runtime directory's
		return fmt.Errorf("factory socket directory: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("factory socket directory: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return fmt.Errorf("factory socket directory: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || int(st.Uid) != os.Geteuid() || st.Mode&0o077 != 0 {
		return fmt.Errorf("factory socket directory %s: must be a directory of user %d with mode 0700, is mode %#o of user %d (give factory.socket a directory of its own): %w",
			dir, os.Geteuid(), st.Mode, st.Uid, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// sweep cleans up, as `shim delete` does, the warm sandboxes an earlier
// factory left under stateRoot (state directories named warm-*), skipping
// those whose shim still holds them (a claimed shim that has not yet
// adopted its sandbox), and removes stale control sockets in dir.
func sweep(ctx context.Context, stateRoot, dir string) {
	ents, err := os.ReadDir(stateRoot)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		log.G(ctx).WithError(err).Warn("listing warm sandboxes")
	}
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), sandbox.WarmIDPrefix) {
			continue
		}
		held, err := Held(filepath.Join(stateRoot, e.Name()))
		if err != nil || held {
			continue
		}
		log.G(ctx).WithField("warm", e.Name()).Info("cleaning up a warm VM an earlier factory left")
		if err := sandbox.Cleanup(ctx, stateRoot, e.Name()); err != nil {
			log.G(ctx).WithError(err).WithField("warm", e.Name()).Warn("cleaning up a warm VM")
		}
	}
	socks, _ := filepath.Glob(filepath.Join(dir, sandbox.WarmIDPrefix+"*.sock"))
	for _, s := range socks {
		_ = os.Remove(s)
	}
}

// Hold marks the warm sandbox whose state directory is dir as held by the
// calling process for the rest of its life (a shared lock on the
// directory, on a descriptor that is never closed), so that a factory
// starting meanwhile leaves it alone. The descriptor is a raw one: an
// *os.File dropped by its caller would be closed by its finalizer at the
// next garbage collection, and the lock with it.
func Hold(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("holding %s: %w", dir, err)
	}
	if err := unix.Flock(fd, unix.LOCK_SH); err != nil {
		_ = unix.Close(fd)
		return fmt.Errorf("holding %s: %w", dir, err)
	}
	return nil
}

// Held tells whether a shim holds the warm sandbox directory dir.
func Held(dir string) (bool, error) {
	f, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return false, err
	}
	defer func() { _ = f.Close() }()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return true, nil
		}
		return false, err
	}
	return false, nil
}
