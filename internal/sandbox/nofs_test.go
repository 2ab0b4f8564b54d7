package sandbox

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/internal/bootslot"
	"github.com/hull-runtime/hull/internal/hypervisor"
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
