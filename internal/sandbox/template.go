package sandbox

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/agentclient"
	"github.com/hull-runtime/hull/internal/channel"
	"github.com/hull-runtime/hull/internal/hypervisor"
)

// VM templates at the sandbox level. A template is a VM of the sandbox's
// exact VM configuration (kernel, initrd, kernel command line, vCPUs,
// memory, NIC slots, driver options) booted until its agent answers and
// saved by the driver (hypervisor.Snapshotter); a sandbox whose
// configuration has a template starts its VM from it instead of booting,
// then reseeds the guest RNG (clones share the template's RNG state), sets
// the guest clock and creates the guest sandbox as after a boot. Templates
// live in TemplateConfig.Root, one directory per key, a digest of that
// configuration: a sandbox never picks a template by anything the guest or
// an image says.

// TemplateConfig enables VM templates for a sandbox.
type TemplateConfig struct {
	// Root is the host-owned directory holding the templates, one
	// directory per key.
	Root string
	// Memory is how a clone maps the template RAM. A sandbox with the
	// shared file system (virtio-fs) works only with
	// hypervisor.TemplateMemoryPrivate; one without it (SharedFSNone)
	// with either.
	Memory hypervisor.TemplateMemory
	// DriverKey describes the driver options a saved state depends on
	// (machine, accelerator, CPU model); it is part of the key.
	DriverKey string
	// DriverBoot describes how the driver boots a template of a VM
	// configuration beyond the configuration itself (the firmware, the
	// kernel parameters it adds); its result is part of the key. Nil adds
	// nothing.
	DriverBoot func(vc hypervisor.Config) string
}

// templateKeyPattern is what a template directory's name looks like.
var templateKeyPattern = regexp.MustCompile(`^[0-9a-f]{64}$`)

// IsTemplateKey reports whether name can be a template key.
func IsTemplateKey(name string) bool { return templateKeyPattern.MatchString(name) }

// entropyBytes is how much host randomness a clone gets.
const entropyBytes = 64

// guestVMConfig is the VM configuration of cfg without its per-sandbox
// devices: the kernel command line that tells the agent its endpoint and
// options, added before the configured parameters.
func guestVMConfig(cfg Config, ep hypervisor.AgentEndpoint) hypervisor.Config {
	vc := cfg.VM
	vc.Agent = ep
	params := agentclient.KernelParams(ep, cfg.AgentLogLevel)
	if cfg.DebugConsole {
		params = append(params, channel.ParamDebugConsole+"=1")
	}
	if cfg.Tracing != nil {
		params = append(params, channel.ParamTracing+"=1")
	}
	vc.KernelParams = append(params, vc.KernelParams...)
	return vc
}

// fileID names a file's version in a template key: its path and its
// identity (identify) but the device number, which may change across
// reboots. A replaced file gets a new inode and change time, whatever
// size and modification time it keeps: rebuilt guest assets get a new
// template key.
type fileID struct {
	Path  string `json:"path"`
	Ino   uint64 `json:"ino"`
	Size  int64  `json:"size"`
	MTime int64  `json:"mtime"`
	CTime int64  `json:"ctime"`
}

func idOf(path string) (fileID, error) {
	if path == "" {
		return fileID{}, nil
	}
	ids, err := identify([]string{path})
	if err != nil {
		return fileID{}, err
	}
	id := ids[path]
	return fileID{Path: path, Ino: id.ino, Size: id.size, MTime: id.mtime.Nano(), CTime: id.ctime.Nano()}, nil
}

// Key returns the template key of the VM configuration vc: the SHA-256 of
// everything that a clone must share with its template.
func (t *TemplateConfig) Key(vc hypervisor.Config) (string, error) {
	kernel, err := idOf(vc.Kernel)
	if err != nil {
		return "", fmt.Errorf("template key: %w", err)
	}
	initrd, err := idOf(vc.Initrd)
	if err != nil {
		return "", fmt.Errorf("template key: %w", err)
	}
	var root fileID
	if vc.RootImage != nil {
		if root, err = idOf(vc.RootImage.Path); err != nil {
			return "", fmt.Errorf("template key: %w", err)
		}
	}
	var boot string
	if t.DriverBoot != nil {
		boot = t.DriverBoot(vc)
	}
	b, err := json.Marshal(struct {
		Kernel, Initrd fileID
		RootImage      fileID
		Params         []string
		VCPUs, Memory  uint32
		MaxVCPUs       uint32
		MaxMemory      uint32
		HotplugNICs    uint32
		HotplugBlocks  uint32
		Debug          bool
		Transport      hypervisor.Transport
		PortName       string
		Driver         string
		DriverBoot     string
	}{kernel, initrd, root, vc.KernelParams, vc.VCPUs, vc.MemoryMiB, vc.MaxVCPUs, vc.MaxMemoryMiB, vc.HotplugNICs, vc.HotplugBlocks, vc.Debug,
		vc.Agent.Transport, vc.Agent.PortName, t.DriverKey, boot})
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// find returns the template a sandbox of VM configuration vc starts from,
// or nil when there is none (the VM boots, with a warning). sharedFS says
// that the sandbox's VM has virtio-fs.
func (t *TemplateConfig) find(ctx context.Context, vc hypervisor.Config, sharedFS bool) (*hypervisor.Template, error) {
	if vc.Agent.Transport != hypervisor.TransportSerial {
		log.G(ctx).WithField("transport", vc.Agent.Transport).Warn("vm templates need the serial agent transport: booting")
		return nil, nil
	}
	if len(vc.Networks) > 0 {
		// NICs on the command line, which a template has not: the
		// clone's devices would not be its template's (Start attaches
		// a pod network before and hot-adds it after the restore).
		log.G(ctx).WithField("nics", len(vc.Networks)).Warn("vm templates cannot carry NICs at boot: booting")
		return nil, nil
	}
	if t.Memory == hypervisor.TemplateMemoryShared && sharedFS {
		return nil, fmt.Errorf("template memory %q maps guest RAM copy-on-write, and virtio-fs (shared_fs = %q) needs it shared; "+
			"a sandbox with shared_fs = %q can use it: %w",
			t.Memory, SharedFSVirtioFS, SharedFSNone, errdefs.ErrNotImplemented)
	}
	key, err := t.Key(vc)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(t.Root, key)
	if _, err := os.Lstat(filepath.Join(dir, "state")); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			log.G(ctx).WithField("key", key).Warn("no vm template for this configuration (hull factory template create makes one): booting")
			return nil, nil
		}
		return nil, fmt.Errorf("template %s: %w", key, err)
	}
	return &hypervisor.Template{Dir: dir, Restore: true, Memory: t.Memory}, nil
}

// findTemplate is Start's "find vm template" step: it sets s.template to
// the template of cfg's VM configuration (agent endpoint ep), if cfg asks
// for templates and one exists. A template has no NIC of the pod: the pod
// network, attached before this step, is then hot-added into the VM's
// reserved NIC slots once the clone runs (s.nicsAfterRestore). A network
// with more interfaces than slots is attached at boot, and the VM boots.
func (s *Sandbox) findTemplate(ctx context.Context, cfg Config, ep hypervisor.AgentEndpoint) error {
	if cfg.Template == nil {
		return nil
	}
	tpl, err := cfg.Template.find(ctx, guestVMConfig(cfg, ep), sharesFS(cfg))
	if err != nil || tpl == nil {
		return err
	}
	if net := s.podNetwork(); net != nil {
		if n := uint32(len(net.Devices())); n > cfg.VM.HotplugNICs {
			log.G(ctx).WithFields(log.Fields{"nics": n, "slots": cfg.VM.HotplugNICs}).
				Warn("the pod network has more interfaces than a vm restored from a template can hot-add: booting")
			return nil
		}
		s.nicsAfterRestore = len(net.Devices()) > 0
	}
	s.template = tpl
	return nil
}

// reseedGuest gives a clone's kernel RNG fresh host randomness.
func reseedGuest(ctx context.Context, c *agentclient.Client) error {
	b := make([]byte, entropyBytes)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	_, err := c.System().AddEntropy(ctx, &agent.AddEntropyRequest{Data: b})
	return err
}

// templateVMConfig is the VM configuration of cfg's template, on the
// serial transport.
func templateVMConfig(cfg Config) hypervisor.Config {
	ep, _ := endpoint(hypervisor.TransportSerial, 0) // no error for serial
	return guestVMConfig(cfg, ep)
}

// TemplateKeyOf returns the template key of cfg's VM configuration
// (cfg.Template set), as CreateTemplate and Start compute it.
func TemplateKeyOf(cfg Config) (string, error) {
	if cfg.Template == nil {
		return "", fmt.Errorf("no template configuration: %w", errdefs.ErrInvalidArgument)
	}
	return cfg.Template.Key(templateVMConfig(cfg))
}

// Restored reports whether the sandbox's VM started from a template.
func (s *Sandbox) Restored() bool { return s.restored }

// CreateTemplate boots a VM of cfg's VM configuration (cfg.Template set,
// serial agent transport), waits for its agent to answer and saves it as
// the template of that configuration in cfg.Template.Root, whose key it
// returns. The VM runs in a state directory of its own under
// cfg.StateRoot; the template is written to a temporary directory renamed
// into place once saved, so a failed creation leaves nothing. An existing
// template of the key is an ErrAlreadyExists-class error.
func CreateTemplate(ctx context.Context, cfg Config) (key string, retErr error) {
	if cfg.Template == nil {
		return "", fmt.Errorf("creating a template: no template configuration: %w", errdefs.ErrInvalidArgument)
	}
	if cfg.ID == "" {
		cfg.ID = "template"
	}
	if err := validate(cfg); err != nil {
		return "", err
	}
	vc := templateVMConfig(cfg)
	key, err := cfg.Template.Key(vc)
	if err != nil {
		return "", err
	}
	final := filepath.Join(cfg.Template.Root, key)
	if _, err := os.Lstat(final); err == nil {
		return key, fmt.Errorf("template %s exists: %w", key, errdefs.ErrAlreadyExists)
	}
	if err := os.MkdirAll(cfg.Template.Root, 0o700); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(cfg.Template.Root, ".new-")
	if err != nil {
		return "", err
	}
	defer func() {
		if retErr != nil {
			_ = os.RemoveAll(tmp)
		}
	}()
	if err := os.MkdirAll(cfg.StateRoot, 0o711); err != nil { //nolint:gosec // G301: search-only root, as Start makes it
		return "", err
	}
	stateDir, err := os.MkdirTemp(cfg.StateRoot, "template-")
	if err != nil {
		return "", err
	}
	defer func() { _ = os.RemoveAll(stateDir) }()
	vc.ID = "template-" + key[:12]
	vc.StateDir = stateDir
	vc.Template = &hypervisor.Template{Dir: tmp}
	vm, err := cfg.NewVM(vc)
	if err != nil {
		return "", err
	}
	snap, err := hypervisor.AsSnapshotter(vm)
	if err != nil {
		return "", err
	}
	if err := vm.Start(ctx); err != nil {
		return "", err
	}
	defer func() {
		if err := vm.Stop(context.WithoutCancel(ctx)); err != nil {
			retErr = errors.Join(retErr, err)
		}
	}()
	c, err := agentclient.Dial(ctx, vm.Agent(), agentclient.Options{
		DialTimeout: cfg.DialTimeout, CallTimeout: cfg.CallTimeout, Abort: vm.Done(),
	})
	if err != nil {
		return "", fmt.Errorf("template vm: %w", err)
	}
	if _, err := c.System().Health(ctx, &agent.HealthRequest{}); err != nil {
		_ = c.Close()
		return "", fmt.Errorf("template vm: %w", err)
	}
	if err := c.Close(); err != nil {
		return "", err
	}
	if err := snap.Snapshot(ctx); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", err
	}
	log.G(ctx).WithFields(log.Fields{"key": key, "dir": final}).Info("vm template created")
	return key, nil
}
