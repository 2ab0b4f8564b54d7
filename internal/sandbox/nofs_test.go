package sandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/bootslot"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/storage"
)

// TestNoSharedFS checks a sandbox without the shared file system: its
// start's steps make no shared storage and no virtiofsd, its VM has no
// virtio-fs device and no shared RAM, a warm start runs no warm-up (whose
// container needs a host directory root), and a container whose root is a
// host directory is refused before anything is made, with the error
// naming the snapshotters that work.
func TestNoSharedFS(t *testing.T) {
	for _, tc := range []struct {
		sharedFS string
		want     bool
	}{{SharedFSNone, false}, {"", true}} {
		cfg := Config{ID: "sb", SharedFS: tc.sharedFS, WarmUp: true, WarmUpBinary: "/bin/true", VM: hypervisor.Config{VCPUs: 1, MemoryMiB: 256}}
		if got := warmsUp(cfg, true); got != tc.want {
			t.Errorf("shared fs %q: warm start runs the warm-up: %v, want %v", tc.sharedFS, got, tc.want)
		}
	}
	var made []hypervisor.Config
	cfg := Config{ID: "sb", SharedFS: SharedFSNone, VM: hypervisor.Config{VCPUs: 1, MemoryMiB: 256},
		NewVM: func(vc hypervisor.Config) (hypervisor.VM, error) {
			made = append(made, vc)
			return &staticVM{}, nil
		}}
	s := &Sandbox{id: "sb", stateDir: t.TempDir()}
	var (
		slot *bootslot.Slot
		undo cleanups
	)
	ran := map[string]bool{}
	for _, st := range s.bootSteps(cfg, hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial}, &slot, &undo) {
		switch st.name {
		case "create shared storage", "start virtiofsd", "create vm":
			if err := st.run(context.Background()); err != nil {
				t.Fatalf("step %q: %v", st.name, err)
			}
			ran[st.name] = true
		}
	}
	if len(ran) != 3 {
		t.Fatalf("steps run: %v, want the shared storage's, virtiofsd's and the vm's", ran)
	}
	if s.storage != nil || s.virtiofs != nil || len(undo) != 0 {
		t.Errorf("shared storage %v, virtiofsd %v, %d undo steps: want none", s.storage, s.virtiofs, len(undo))
	}
	if len(made) != 1 || len(made[0].Filesystems) != 0 || made[0].SharedMemory {
		t.Fatalf("vms made %+v: want one, without filesystems or shared memory", made)
	}

	s = testSandbox(t, newFakeAgent(), time.Second)
	spec := &specs.Spec{
		Root:    &specs.Root{Path: "rootfs"},
		Process: &specs.Process{Args: []string{"true"}, Cwd: "/"},
		Linux:   &specs.Linux{},
	}
	_, err := s.CreateContainer(t.Context(), ContainerConfig{ID: "c1", Bundle: t.TempDir(), Spec: spec})
	if !errors.Is(err, ErrNeedsSharedFS) || !errdefs.IsNotImplemented(err) {
		t.Fatalf("got %v, want ErrNeedsSharedFS", err)
	}
	if len(s.containers) != 0 {
		t.Errorf("containers left: %v", s.containers)
	}
	if err := validate(Config{ID: "x", StateRoot: "/run/x", NewVM: func(hypervisor.Config) (hypervisor.VM, error) { return nil, nil },
		Transport: hypervisor.TransportSerial, DialTimeout: time.Second, CallTimeout: time.Second, SharedFS: "9p"}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("shared fs 9p: %v, want invalid argument", err)
	}
}

// TestWarmUpNeedsSharedFS: warmUp itself refuses a VM without the shared
// file system, before any agent call.
func TestWarmUpNeedsSharedFS(t *testing.T) {
	s := testSandbox(t, newFakeAgent(), time.Second)
	err := s.warmUp(t.Context(), Config{ID: "sb", SharedFS: SharedFSNone, WarmUpBinary: "/bin/true", DialTimeout: time.Second})
	if !errdefs.IsNotImplemented(err) {
		t.Fatalf("warm-up without shared fs: %v, want not implemented", err)
	}
}

// TestRequestSize: a CreateContainer request over what one ttRPC message
// carries is refused before it is sent, naming copy_max_bytes.
func TestRequestSize(t *testing.T) {
	small := &agent.CreateContainerRequest{ContainerId: "c1", Files: []*agent.CopiedFile{{Path: "f", Data: make([]byte, 1<<20)}}}
	if err := checkRequestSize(small); err != nil {
		t.Errorf("1 MiB: %v", err)
	}
	big := &agent.CreateContainerRequest{ContainerId: "c1", Spec: make([]byte, 1<<20), Files: []*agent.CopiedFile{
		{Path: "a", Data: make([]byte, 2<<20)}, {Path: "b", Data: make([]byte, 1<<20)},
	}}
	if err := checkRequestSize(big); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "copy_max_bytes") {
		t.Errorf("4 MiB: %v, want an invalid-argument error naming copy_max_bytes", err)
	}
}

// TestNoSharedFSEmptyDir: in a sandbox without the shared file system, a
// CRI pod container's bind of one of its pod's emptyDir volumes (the
// kubelet's directory, by its exact path) becomes a guest directory the
// request asks the agent to make, with the kubelet directory's mode and
// owner; nothing of it is copied. Another pod's volume, or any bind of a
// container without a pod UID, is an ordinary bind: a writable directory,
// refused.
func TestNoSharedFSEmptyDir(t *testing.T) {
	pods := t.TempDir()
	vol := filepath.Join(pods, "uid-1", "volumes", "kubernetes.io~empty-dir", "scratch")
	if err := os.MkdirAll(vol, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(vol, 0o777); err != nil {
		t.Fatal(err)
	}
	spec := &specs.Spec{
		Root:    &specs.Root{Path: "rootfs"},
		Process: &specs.Process{Args: []string{"true"}, Cwd: "/"},
		Mounts: []specs.Mount{
			{Destination: "/work", Type: "bind", Source: vol, Options: []string{"rbind", "rw"}},
			{Destination: "/etc/app", Type: "bind", Source: vol, Options: []string{"rbind", "ro"}},
		},
	}
	s := &Sandbox{id: "sb", kubeletPods: pods, copyLimits: storage.DefaultCopyLimits}
	cfg := ContainerConfig{ID: "c1", Bundle: t.TempDir(), Spec: spec, PodUID: "uid-1"}
	var undo cleanups
	guest, files, dirs, err := s.containerFiles(t.Context(), cfg, true, &undo)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 0 || len(undo) != 0 {
		t.Errorf("%d files copied, %d undo steps: want none", len(files), len(undo))
	}
	want := []*agent.EmptyDir{{Name: "scratch", Mode: 0o777}}
	if len(dirs) != 1 || !proto.Equal(dirs[0], want[0]) {
		t.Errorf("emptyDirs %v, want %v", dirs, want)
	}
	for _, m := range guest.Mounts {
		if m.Source != "/run/hull/emptydir/scratch" {
			t.Errorf("mount %s: source %q, want the guest directory", m.Destination, m.Source)
		}
	}
	for _, uid := range []string{"uid-2", ""} {
		cfg.PodUID = uid
		if _, _, _, err := s.containerFiles(t.Context(), cfg, true, &undo); !errdefs.IsNotImplemented(err) {
			t.Errorf("pod uid %q: %v, want the writable directory refused", uid, err)
		}
	}
}

// TestKubeletRootDir: the pods directory where emptyDir volumes are
// recognised follows Config.KubeletRootDir (the default's when unset),
// and a relative or unclean root is refused.
func TestKubeletRootDir(t *testing.T) {
	if got := kubeletPods(Config{}); got != "/var/lib/kubelet/pods" {
		t.Errorf("default: %q", got)
	}
	if got := kubeletPods(Config{KubeletRootDir: "/var/lib/k0s/kubelet"}); got != "/var/lib/k0s/kubelet/pods" {
		t.Errorf("k0s: %q", got)
	}
	base := Config{ID: "x", StateRoot: "/run/x", NewVM: func(hypervisor.Config) (hypervisor.VM, error) { return nil, nil },
		Transport: hypervisor.TransportSerial, DialTimeout: time.Second, CallTimeout: time.Second, SharedFS: SharedFSNone}
	for root, ok := range map[string]bool{
		"": true, "/var/lib/k0s/kubelet": true,
		"var/lib/kubelet": false, "/var/lib/kubelet/": false, "/var/lib/x/../kubelet": false, "/": false,
	} {
		c := base
		c.KubeletRootDir = root
		if err := validate(c); (err == nil) != ok || (err != nil && !errdefs.IsInvalidArgument(err)) {
			t.Errorf("root %q: %v, want ok %v", root, err, ok)
		}
	}
}
