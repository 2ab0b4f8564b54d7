package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/hull-runtime/hull/internal/child"
	"github.com/hull-runtime/hull/internal/mountopt"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

const (
	mountsName  = "mounts"
	sharedName  = "shared"
	stagingName = "staging"
)

// Mount is a filesystem mount that makes up a container's root, as
// containerd's mount.Mount describes it: overlay, bind, or any type the host
// kernel mounts.
type Mount struct {
	Type    string
	Source  string
	Options []string
}

// Container is what AddContainer needs to know about a container.
type Container struct {
	// ID names the container; see ValidateID.
	ID string
	// Spec is the OCI spec from the bundle. It is not modified.
	Spec *specs.Spec
	// Bundle is the bundle directory, against which a relative root.path
	// and relative bind sources are resolved.
	Bundle string
	// Rootfs, when not empty, are mounted in order as the container's root
	// instead of binding Spec.Root.Path.
	Rootfs []Mount
	// GuestMounts are indices of bind mounts in Spec.Mounts whose source
	// is already a guest path below GuestRuntimeDir (the pod's /dev/shm):
	// nothing is shared for them.
	GuestMounts []int
}

// Shared is the shared directory tree of one sandbox.
type Shared struct {
	// mu serializes every mount change of the tree, and guards the
	// tree's paths (which MoveDir changes).
	mu      sync.Mutex
	mounts  string
	shared  string
	staging string

	// containers holds the IDs added and not removed; guarded by mu.
	containers map[string]bool
	// closed is guarded by mu.
	closed bool
}

// cleanup is a stack of undo steps, run last first.
type cleanup []func() error

func (c *cleanup) push(f func() error) { *c = append(*c, f) }

func (c cleanup) run(ctx context.Context) {
	for i := len(c) - 1; i >= 0; i-- {
		if err := c[i](); err != nil {
			log.G(ctx).WithError(err).Warn("storage: rollback step failed")
		}
	}
}

// New creates stateDir/mounts and stateDir/shared and mounts them as the
// package documentation describes. stateDir must exist. If either is already
// a mount point (a previous shim died without Close), New fails with
// errdefs.ErrAlreadyExists; Cleanup removes such leftovers.
func New(ctx context.Context, stateDir string) (_ *Shared, retErr error) {
	if !filepath.IsAbs(stateDir) {
		return nil, fmt.Errorf("storage: state dir %q is not absolute: %w", stateDir, errdefs.ErrInvalidArgument)
	}
	s := &Shared{
		mounts:     filepath.Join(filepath.Clean(stateDir), mountsName),
		shared:     filepath.Join(filepath.Clean(stateDir), sharedName),
		staging:    filepath.Join(filepath.Clean(stateDir), stagingName),
		containers: map[string]bool{},
	}
	for _, d := range []string{s.mounts, s.shared, s.staging} {
		if m, err := mountsUnder(d); err != nil {
			return nil, err
		} else if len(m) > 0 {
			return nil, fmt.Errorf("storage: %s is already mounted: %w", d, errdefs.ErrAlreadyExists)
		}
	}
	var undo cleanup
	defer func() {
		if retErr != nil {
			undo.run(ctx)
			retErr = fmt.Errorf("storage: setting up %s: %w", stateDir, retErr)
		}
	}()

	for _, d := range []string{s.mounts, s.shared, s.staging} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, err
		}
		undo.push(func() error { return os.Remove(d) })
	}
	// mounts/: a peer group of its own, so that what is mounted under it
	// propagates to shared/ and to virtiofsd's copies, and nowhere else.
	if err := unix.Mount(s.mounts, s.mounts, "", unix.MS_BIND, ""); err != nil {
		return nil, fmt.Errorf("binding %s: %w", s.mounts, err)
	}
	undo.push(func() error { return unmountAll(s.mounts) })
	for _, flag := range []uintptr{unix.MS_PRIVATE, unix.MS_SHARED} {
		if err := unix.Mount("", s.mounts, "", flag, ""); err != nil {
			return nil, fmt.Errorf("setting propagation of %s: %w", s.mounts, err)
		}
	}
	// shared/: read-only at the top, a slave of mounts/.
	if err := unix.Mount(s.mounts, s.shared, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return nil, fmt.Errorf("binding %s: %w", s.shared, err)
	}
	undo.push(func() error { return unmountAll(s.shared) })
	if err := unix.Mount("", s.shared, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return nil, fmt.Errorf("remounting %s read-only: %w", s.shared, err)
	}
	if err := unix.Mount("", s.shared, "", unix.MS_SLAVE, ""); err != nil {
		return nil, fmt.Errorf("making %s a slave: %w", s.shared, err)
	}
	// staging/: private, for read-only binds without the new mount API.
	if err := unix.Mount(s.staging, s.staging, "", unix.MS_BIND, ""); err != nil {
		return nil, fmt.Errorf("binding %s: %w", s.staging, err)
	}
	undo.push(func() error { return unmountAll(s.staging) })
	if err := unix.Mount("", s.staging, "", unix.MS_PRIVATE, ""); err != nil {
		return nil, fmt.Errorf("making %s private: %w", s.staging, err)
	}
	log.G(ctx).WithField("dir", s.shared).Debug("shared directory ready")
	return s, nil
}

// Dir is the host directory virtiofsd serves.
func (s *Shared) Dir() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shared
}

// MoveDir runs rename, which renames the state directory dir that holds the
// tree to newDir, with every mount change of the tree held; when rename
// succeeds the tree is then known below newDir. The mounts below the
// directory move with it (a rename moves mount points below the renamed
// directory, never the directory itself, which is no mount point).
func (s *Shared) MoveDir(dir, newDir string, rename func() error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("moving the shared directory: closed: %w", errdefs.ErrFailedPrecondition)
	}
	if err := rename(); err != nil {
		return err
	}
	s.mounts = child.Rebase(s.mounts, dir, newDir)
	s.shared = child.Rebase(s.shared, dir, newDir)
	s.staging = child.Rebase(s.staging, dir, newDir)
	return nil
}

// AddContainer mounts the container's root filesystem and bind volumes into
// the shared tree and returns the spec for the guest: root.path and the bind
// sources point under GuestSharedDir, runtime-namespace hooks are rejected.
// When it fails it leaves nothing mounted or created.
func (s *Shared) AddContainer(ctx context.Context, c Container) (_ *specs.Spec, retErr error) {
	if err := ValidateID(c.ID); err != nil {
		return nil, err
	}
	g, vols, err := guestSpec(c.ID, c.Spec, c.GuestMounts)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", c.ID, err)
	}
	if len(c.Rootfs) == 0 && (c.Spec.Root == nil || c.Spec.Root.Path == "") {
		return nil, fmt.Errorf("container %s: no root path and no rootfs mounts: %w", c.ID, errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(c.Bundle) {
		return nil, fmt.Errorf("container %s: bundle %q is not absolute: %w", c.ID, c.Bundle, errdefs.ErrInvalidArgument)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("container %s: shared directory closed: %w", c.ID, errdefs.ErrFailedPrecondition)
	}
	if s.containers[c.ID] {
		return nil, fmt.Errorf("container %s: %w", c.ID, errdefs.ErrAlreadyExists)
	}
	dir := filepath.Join(s.mounts, c.ID)
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("container %s: %s exists: %w", c.ID, dir, errdefs.ErrAlreadyExists)
		}
		return nil, fmt.Errorf("container %s: %w", c.ID, err)
	}
	defer func() {
		if retErr != nil {
			if err := removeContainerDir(dir); err != nil {
				log.G(ctx).WithError(err).WithField("container", c.ID).Warn("storage: rollback incomplete")
			}
			retErr = fmt.Errorf("container %s: %w", c.ID, retErr)
		}
	}()

	bundle, err := unix.Open(c.Bundle, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening bundle %s: %w", c.Bundle, err)
	}
	defer func() { _ = unix.Close(bundle) }()

	rootfs := filepath.Join(dir, rootfsName)
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return nil, err
	}
	if len(c.Rootfs) > 0 {
		for i, m := range c.Rootfs {
			if err := mountRootfs(m, rootfs, s.staging); err != nil {
				return nil, fmt.Errorf("rootfs mount %d: %w", i, err)
			}
		}
	} else {
		// Recursive like runc's bind of the root.
		if err := bindFromBundle(bundle, c.Spec.Root.Path, true, false, rootfs, s.staging); err != nil {
			return nil, fmt.Errorf("root: %w", err)
		}
	}

	if len(vols) > 0 {
		if err := os.Mkdir(filepath.Join(dir, volumesName), 0o755); err != nil {
			return nil, err
		}
	}
	for _, v := range vols {
		target := filepath.Join(dir, volumesName, v.name)
		if err := bindFromBundle(bundle, v.source, v.recursive, v.readOnly, target, s.staging); err != nil {
			return nil, fmt.Errorf("bind mount %d (%s): %w", v.index, c.Spec.Mounts[v.index].Destination, err)
		}
	}
	s.containers[c.ID] = true
	log.G(ctx).WithField("container", c.ID).WithField("volumes", len(vols)).Debug("container storage ready")
	return g, nil
}

// bindFromBundle binds src at target: an absolute src as given (last
// component not followed), a relative one resolved beneath the bundle.
func bindFromBundle(bundle int, src string, recursive, readOnly bool, target, staging string) error {
	b := bindSpec{dirfd: unix.AT_FDCWD, path: src, recursive: recursive, readOnly: readOnly}
	if !filepath.IsAbs(src) {
		fd, err := openBeneath(bundle, src)
		if err != nil {
			return err
		}
		defer func() { _ = unix.Close(fd) }()
		b.dirfd, b.path = fd, ""
	}
	return bind(b, target, staging)
}

// openBeneath opens rel inside the directory dirfd as an O_PATH descriptor;
// a path that leaves it through ".." or a symlink is an invalid argument.
func openBeneath(dirfd int, rel string) (int, error) {
	fd, err := unix.Openat2(dirfd, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	})
	switch {
	case errors.Is(err, unix.EXDEV):
		return -1, fmt.Errorf("%q escapes the bundle: %w", rel, errdefs.ErrInvalidArgument)
	case errors.Is(err, unix.ENOENT):
		return -1, fmt.Errorf("%q in the bundle: %w: %w", rel, err, errdefs.ErrNotFound)
	case err != nil:
		return -1, fmt.Errorf("opening %q in the bundle: %w", rel, err)
	}
	return fd, nil
}

// mountRootfs mounts one containerd-style mount at target.
func mountRootfs(m Mount, target, staging string) error {
	if b, rec := isBind(specs.Mount{Type: m.Type, Options: m.Options}); b {
		if !filepath.IsAbs(m.Source) {
			return fmt.Errorf("bind source %q is not absolute: %w", m.Source, errdefs.ErrInvalidArgument)
		}
		return bind(bindSpec{dirfd: unix.AT_FDCWD, path: m.Source, recursive: rec, readOnly: isReadOnly(m.Options)}, target, staging)
	}
	if m.Type == "" {
		return fmt.Errorf("mount of %q has no type: %w", m.Source, errdefs.ErrInvalidArgument)
	}
	flags, data := mountopt.Parse(m.Options)
	// Whatever the options say: nothing on the host runs or opens a
	// device through the shared tree, and virtio-fs hands the guest its
	// modes regardless.
	flags |= unix.MS_NOSUID | unix.MS_NODEV
	if err := unix.Mount(m.Source, target, m.Type, flags, data); err != nil {
		return fmt.Errorf("mounting %s (%s) at %s: %w", m.Source, m.Type, target, err)
	}
	return nil
}

// removeContainerDir unmounts everything under dir and removes it. It
// removes only empty directories and the empty files it made as mount
// points, never what a mount held.
func removeContainerDir(dir string) error {
	if err := unmountAll(dir); err != nil {
		return err
	}
	var errs []error
	vols := filepath.Join(dir, volumesName)
	entries, err := os.ReadDir(vols)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range entries {
		errs = append(errs, os.Remove(filepath.Join(vols, e.Name())))
	}
	for _, d := range []string{vols, filepath.Join(dir, rootfsName), dir} {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// RemoveContainer unmounts the container's root and volumes (lazily where
// virtiofsd holds them busy) and removes its directories. It works from
// /proc/self/mountinfo, not from memory, so it also cleans up after a
// previous process; removing an unknown container is not an error.
func (s *Shared) RemoveContainer(ctx context.Context, id string) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := removeContainerDir(filepath.Join(s.mounts, id)); err != nil {
		return fmt.Errorf("removing storage of container %s: %w", id, err)
	}
	delete(s.containers, id)
	log.G(ctx).WithField("container", id).Debug("container storage removed")
	return nil
}

// Close unmounts everything and removes mounts/ and shared/. It may be
// called more than once.
func (s *Shared) Close(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if err := cleanupDirs(s.mounts, s.shared, s.staging); err != nil {
		return fmt.Errorf("closing shared directory: %w", err)
	}
	s.containers = map[string]bool{}
	log.G(ctx).WithField("dir", s.shared).Debug("shared directory removed")
	return nil
}

// Cleanup removes what New and AddContainer made under stateDir, for a
// sandbox whose Shared is lost (the shim died).
func Cleanup(ctx context.Context, stateDir string) error {
	if !filepath.IsAbs(stateDir) {
		return fmt.Errorf("storage: state dir %q is not absolute: %w", stateDir, errdefs.ErrInvalidArgument)
	}
	s := &Shared{
		mounts:  filepath.Join(stateDir, mountsName),
		shared:  filepath.Join(stateDir, sharedName),
		staging: filepath.Join(stateDir, stagingName),
	}
	return s.Close(ctx)
}

// cleanupDirs unmounts everything under mounts, shared and staging, the
// container mounts first so their unmounting propagates, then removes the
// container directories and the three roots.
func cleanupDirs(mounts, shared, staging string) error {
	var errs []error
	entries, err := os.ReadDir(mounts)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range entries {
		if e.IsDir() {
			errs = append(errs, removeContainerDir(filepath.Join(mounts, e.Name())))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, d := range []string{shared, mounts, staging} {
		if err := unmountAll(d); err != nil {
			return err
		}
	}
	for _, d := range []string{shared, mounts, staging} {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
