package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	api "github.com/hull-runtime/hull/api/agent/v1"
)

// emptyDirRoot holds the pod's emptyDir volumes (a sandbox without a shared
// file system), one tmpfs per volume name (storage.GuestEmptyDirRoot on the
// host's side).
const emptyDirRoot = "/run/hull/emptydir"

// maxEmptyDirs bounds the emptyDir volumes of one sandbox.
const maxEmptyDirs = 256

// emptyDirName is a DNS label, Kubernetes' rule for a volume's name: never
// ".", ".." nor anything with a "/".
var emptyDirName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// emptyDirs are the pod's emptyDir volumes. A volume is mounted for the
// first container that binds it and kept for the sandbox's life: it
// outlives the containers that use it (a restarted container finds its
// files). A create that fails unmounts the volumes it mounted that no
// container has used yet.
type emptyDirs struct {
	root string
	// unmountPoint unmounts one volume (unmountStorage; tests replace it).
	unmountPoint func(ctx context.Context, root, p string) error

	mu sync.Mutex
	// dirs by name. Guarded by mu.
	dirs map[string]*emptyDir
}

type emptyDir struct {
	name, mountPoint string
	// pending counts the creates in progress that bind the volume; kept
	// says one succeeded. Guarded by emptyDirs.mu.
	pending int
	kept    bool
}

func newEmptyDirs(root string) *emptyDirs {
	return &emptyDirs{root: root, unmountPoint: unmountStorage, dirs: map[string]*emptyDir{}}
}

// checkEmptyDir checks a request's volume.
func checkEmptyDir(d *api.EmptyDir) error {
	if !emptyDirName.MatchString(d.GetName()) {
		return fmt.Errorf("emptyDir volume %q: want a DNS label (1-63 lowercase letters, digits or '-'): %w", d.GetName(), errdefs.ErrInvalidArgument)
	}
	if d.GetMode()&^0o7777 != 0 {
		return fmt.Errorf("emptyDir volume %s: mode %#o: want permission bits only: %w", d.GetName(), d.GetMode(), errdefs.ErrInvalidArgument)
	}
	return nil
}

// acquire makes sure the volumes of reqs are mounted, mounting those not
// yet, and returns a function that ends the create: with ok the volumes
// are kept for the sandbox's life, without it those no create has kept
// are unmounted. On error nothing acquire mounted stays.
func (e *emptyDirs) acquire(ctx context.Context, reqs []*api.EmptyDir) (func(ok bool), error) {
	for _, d := range reqs {
		if err := checkEmptyDir(d); err != nil {
			return nil, err
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var held []*emptyDir
	for _, r := range reqs {
		d := e.dirs[r.GetName()]
		if d == nil {
			if len(e.dirs) >= maxEmptyDirs {
				e.releaseLocked(ctx, held, false)
				return nil, fmt.Errorf("emptyDir volume %s: more than %d in the sandbox: %w", r.GetName(), maxEmptyDirs, errdefs.ErrInvalidArgument)
			}
			var err error
			if d, err = e.mount(r); err != nil {
				e.releaseLocked(ctx, held, false)
				return nil, err
			}
			e.dirs[r.GetName()] = d
			log.G(ctx).WithFields(log.Fields{"volume": r.GetName(), "size": r.GetSizeBytes()}).Debug("emptyDir volume mounted")
		}
		if !slices.Contains(held, d) {
			d.pending++
			held = append(held, d)
		}
	}
	return func(ok bool) {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.releaseLocked(ctx, held, ok)
	}, nil
}

// releaseLocked ends a create's hold on the volumes held: with ok they are
// kept, without it those no create kept or holds are unmounted. A volume
// unmountAll already dropped (a sandbox destroyed while the create ran) is
// left alone: its mount point may now hold another volume of its name.
// e.mu must be held.
func (e *emptyDirs) releaseLocked(ctx context.Context, held []*emptyDir, ok bool) {
	for _, d := range held {
		d.pending--
		d.kept = d.kept || ok
		if d.pending == 0 && !d.kept && e.dirs[d.name] == d {
			e.unmountLocked(ctx, d)
		}
	}
}

// mount makes the tmpfs of volume r: nosuid and nodev, with the mode and
// owner the host read from the kubelet's directory.
func (e *emptyDirs) mount(r *api.EmptyDir) (*emptyDir, error) {
	if err := os.MkdirAll(e.root, 0o700); err != nil {
		return nil, err
	}
	p := filepath.Join(e.root, r.GetName())
	if err := os.Mkdir(p, 0o700); err != nil {
		return nil, fmt.Errorf("emptyDir volume %s: %w", r.GetName(), err)
	}
	data := fmt.Sprintf("mode=%o,uid=%d,gid=%d", r.GetMode(), r.GetUid(), r.GetGid())
	if n := r.GetSizeBytes(); n > 0 {
		data += fmt.Sprintf(",size=%d", n)
	}
	if err := unix.Mount("emptydir", p, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, data); err != nil {
		_ = os.Remove(p)
		return nil, fmt.Errorf("emptyDir volume %s: mounting a tmpfs (%s): %w", r.GetName(), data, err)
	}
	return &emptyDir{name: r.GetName(), mountPoint: p}, nil
}

// unmountLocked unmounts d and forgets it. A volume whose unmount fails
// stays known, as it stays mounted: a later create of its name uses it,
// and the sandbox's destroy tries again. e.mu must be held.
func (e *emptyDirs) unmountLocked(ctx context.Context, d *emptyDir) {
	if err := e.unmount(ctx, d); err != nil {
		log.G(ctx).WithError(err).WithField("target", d.mountPoint).Warn("unmounting an emptyDir volume")
		return
	}
	delete(e.dirs, d.name)
}

// unmount unmounts d; e.root goes with its last volume, e.root's parent
// (storageRoot in the guest) stays.
func (e *emptyDirs) unmount(ctx context.Context, d *emptyDir) error {
	return e.unmountPoint(ctx, filepath.Dir(e.root), d.mountPoint)
}

// unmountAll unmounts every volume, when the sandbox is destroyed.
func (e *emptyDirs) unmountAll(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var errs []error
	for name, d := range e.dirs {
		if err := e.unmount(ctx, d); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(e.dirs, name)
	}
	return errors.Join(errs...)
}
