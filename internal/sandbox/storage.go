package sandbox

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/storage"
	"github.com/hull-runtime/hull/internal/virtiofs"
)

const (
	// virtiofsSocketName is virtiofsd's vhost-user socket in the state
	// directory.
	virtiofsSocketName = "virtiofs.sock"
	// virtiofsLogName receives virtiofsd's stderr.
	virtiofsLogName = "virtiofsd.log"
	// oomBuffer is how many OOM events wait for a reader before the OOM
	// loop stops asking the agent for more.
	oomBuffer = 64
)

// VirtiofsConfig says how to run the sandbox's virtiofsd. The zero value
// runs the first virtiofsd found with cache "auto" in a namespace sandbox.
type VirtiofsConfig struct {
	// Binary is the daemon; empty searches virtiofs.Binaries, then PATH.
	Binary string
	// Cache is virtiofs.CacheAuto (the default), CacheNone or CacheAlways.
	Cache string
	// ThreadPoolSize of the daemon; zero keeps its default.
	ThreadPoolSize int
	// LogMax bounds the daemon's log, virtiofsd.log (virtiofs.Config.LogMax).
	LogMax int64
}

// The values of Config.SharedFS.
const (
	SharedFSVirtioFS = "virtio-fs"
	SharedFSNone     = "none"
)

// sharesFS reports whether cfg's VM has the shared file system.
func sharesFS(cfg Config) bool { return cfg.SharedFS != SharedFSNone }

// kubeletPods is the kubelet's pods directory of cfg.KubeletRootDir, or of
// the default root.
func kubeletPods(cfg Config) string {
	if cfg.KubeletRootDir == "" {
		return storage.KubeletPodsDir(storage.DefaultKubeletRootDir)
	}
	return storage.KubeletPodsDir(cfg.KubeletRootDir)
}

// copyLimits are cfg.CopyLimits, each zero field the default's.
func copyLimits(cfg Config) storage.CopyLimits {
	l, d := cfg.CopyLimits, storage.DefaultCopyLimits
	if l.Total == 0 {
		l.Total = d.Total
	}
	if l.File == 0 {
		l.File = d.File
	}
	if l.Entries == 0 {
		l.Entries = d.Entries
	}
	return l
}

// createStorage makes the shared tree under the state directory.
func (s *Sandbox) createStorage(ctx context.Context, undo *cleanups) error {
	sh, err := storage.New(ctx, s.stateDir)
	if err != nil {
		return err
	}
	s.storage = sh
	undo.push(sh.Close)
	return nil
}

// startVirtiofs runs the daemon that serves the shared tree. It is separate
// from the VM's boot: a VM restored from a template gets the share by
// hot-plug after the daemon has started.
func (s *Sandbox) startVirtiofs(ctx context.Context, cfg VirtiofsConfig, undo *cleanups) error {
	cache := cfg.Cache
	if cache == "" {
		cache = virtiofs.CacheAuto
	}
	d, err := virtiofs.Start(ctx, virtiofs.Config{
		Binary:         cfg.Binary,
		SocketPath:     filepath.Join(s.stateDir, virtiofsSocketName),
		SharedDir:      s.storage.Dir(),
		Cache:          cache,
		Sandbox:        virtiofs.SandboxNamespace,
		ThreadPoolSize: cfg.ThreadPoolSize,
		LogPath:        filepath.Join(s.stateDir, virtiofsLogName),
		LogMax:         cfg.LogMax,
		Cgroup:         s.childCgroup(),
	})
	if err != nil {
		return err
	}
	s.virtiofs = d
	undo.push(d.Stop)
	return nil
}

// filesystemDevice is the VM device of the share.
func (s *Sandbox) filesystemDevice() hypervisor.FilesystemDevice {
	return hypervisor.FilesystemDevice{Tag: storage.FSTag, SocketPath: s.virtiofs.SocketPath()}
}

// createGuestSandbox has the agent set the hostname, mount the share and
// the pod's /dev/shm.
func (s *Sandbox) createGuestSandbox(ctx context.Context, hostname string, shmSize uint64) error {
	if shmSize == 0 {
		shmSize = defaultShmSize
	}
	var storages []*agent.Storage
	if s.virtiofs != nil {
		storages = append(storages, &agent.Storage{
			Source:     storage.FSTag,
			Fstype:     "virtiofs",
			MountPoint: storage.GuestSharedDir,
		})
	}
	storages = append(storages, &agent.Storage{
		Source:     "shm",
		Fstype:     "tmpfs",
		Options:    []string{"nosuid", "nodev", "noexec", "mode=1777", fmt.Sprintf("size=%dk", (shmSize+1023)/1024)},
		MountPoint: GuestShmDir,
	})
	_, err := s.client.Containers().CreateSandbox(ctx, &agent.CreateSandboxRequest{
		SandboxId: s.id,
		Hostname:  hostname,
		Storages:  storages,
	})
	if err != nil {
		return s.guestError(err)
	}
	return nil
}

// OOMEvents delivers the ID of a container each time the guest kernel kills
// one of its processes for lack of memory. One loop per sandbox asks the
// agent; the channel is closed when the sandbox stops or its VM is gone.
// While nobody reads, up to 64 events wait and the loop pauses.
//
// The guest names the container, so only the IDs of the sandbox's own live
// containers are delivered, each at most oomPerContainer times per
// oomWindow; the rest are dropped and counted (oomFilter).
func (s *Sandbox) OOMEvents() <-chan string { return s.oom }

// oomLoop keeps one WaitOOM call outstanding for the life of the sandbox.
// However fast the guest answers, it asks at most oomPerLoop times per
// oomWindow.
// Its log lines name the sandbox by id, its ID when the loop started
// (an adoption changes the ID while the loop runs).
func (s *Sandbox) oomLoop(id string) {
	defer close(s.oom)
	ctx := s.bg
	logger := log.G(ctx).WithField("sandbox", id)
	delay := 100 * time.Millisecond
	f := oomFilter{owned: s.liveContainer, logger: logger}
	pace := window{n: oomPerLoop, period: oomWindow}
	for {
		if wait := pace.wait(time.Now()); wait > 0 {
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return
			}
		}
		resp, err := s.client.Containers().WaitOOM(ctx, &agent.WaitOOMRequest{})
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			delay = 100 * time.Millisecond
			id := resp.GetContainerId()
			if !f.admit(id, time.Now()) {
				continue
			}
			select {
			case s.oom <- id:
			case <-ctx.Done():
				return
			}
			continue
		case errdefs.IsNotImplemented(err), errdefs.IsUnavailable(err), !s.vmAlive():
			logger.WithError(err).Debug("oom loop ends")
			return
		}
		logger.WithError(err).Warn("waiting for oom events")
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// guestError explains an agent error: when the VM has gone it says so, with
// the end of the console.
func (s *Sandbox) guestError(err error) error {
	if err == nil {
		return nil
	}
	if errdefs.IsUnavailable(err) || errors.Is(err, context.DeadlineExceeded) || !s.vmAlive() {
		return s.withConsole(err)
	}
	return err
}
