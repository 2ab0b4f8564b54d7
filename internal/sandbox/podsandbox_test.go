package sandbox

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hull-runtime/hull/internal/storage"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestPodSandboxRoot checks that nothing of a pod sandbox container's root
// or mounts reaches the guest, with the shared file system (nothing
// mounted in the shared tree) and without it (no disk hot-added, nothing
// copied, no emptyDir volume made): its request carries no storages,
// files or emptyDir volumes, and its guest spec no root and no mounts. An
// ordinary container with the same configuration gets them, so that the
// checks can fail.
func TestPodSandboxRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root: it mounts the shared tree")
	}
	bundle := t.TempDir()
	if err := os.WriteFile(filepath.Join(bundle, "hosts"), []byte("127.0.0.1 localhost\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// An emptyDir volume of the pod, as the kubelet keeps it: a pod
	// sandbox's spec has none, but were one there it must not be made.
	pods := t.TempDir()
	vol := filepath.Join(pods, "uid-1", "volumes", "kubernetes.io~empty-dir", "scratch")
	if err := os.MkdirAll(vol, 0o755); err != nil {
		t.Fatal(err)
	}
	image := filepath.Join(t.TempDir(), "rootfs.img")
	if err := os.WriteFile(image, []byte("image"), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := func() *specs.Spec {
		return &specs.Spec{
			Root:    &specs.Root{Path: "rootfs"},
			Process: &specs.Process{Args: []string{"/pause"}, Cwd: "/"},
			Mounts: []specs.Mount{
				{Destination: "/etc/hosts", Type: "bind", Source: filepath.Join(bundle, "hosts"), Options: []string{"rbind", "ro"}},
				{Destination: "/scratch", Type: "bind", Source: vol, Options: []string{"rbind", "rw"}},
			},
			Linux: &specs.Linux{},
		}
	}
	for _, tc := range []struct {
		name   string
		shared bool
		rootfs []storage.Mount
	}{
		{"shared tree, bind root", true, []storage.Mount{{Type: "bind", Source: t.TempDir(), Options: []string{"rbind", "ro"}}}},
		{"shared tree, block root", true, []storage.Mount{{Type: "ext4", Source: image, Options: []string{"loop"}}}},
		{"no shared fs, block root", false, []storage.Mount{{Type: "ext4", Source: image, Options: []string{"loop"}}}},
	} {
		for _, pod := range []bool{true, false} {
			t.Run(tc.name+map[bool]string{true: ", pod sandbox", false: ", container"}[pod], func(t *testing.T) {
				a := newFakeAgent()
				s := testSandbox(t, a, time.Second)
				vm := &diskVM{}
				s.vm, s.hotplugBlocks, s.copyLimits, s.kubeletPods = vm, 1, storage.DefaultCopyLimits, pods
				if tc.shared {
					sh, err := storage.New(context.Background(), s.stateDir)
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() {
						if err := sh.Close(context.Background()); err != nil {
							t.Error(err)
						}
					})
					s.storage = sh
				}
				c, err := s.CreateContainer(t.Context(), ContainerConfig{ID: "c1", Bundle: bundle, Spec: spec(), Rootfs: tc.rootfs, PodUID: "uid-1", PodSandbox: pod})
				if err != nil {
					t.Fatal(err)
				}
				if len(a.created) != 1 {
					t.Fatalf("%d creates sent, want 1", len(a.created))
				}
				req := a.created[0]
				var g specs.Spec
				if err := json.Unmarshal(req.GetSpec(), &g); err != nil {
					t.Fatal(err)
				}
				mounted, err := storage.MountsUnder(filepath.Join(s.stateDir, "mounts", "c1"))
				if err != nil {
					t.Fatal(err)
				}
				got := received{storages: len(req.GetStorages()), files: len(req.GetFiles()), emptyDirs: len(req.GetEmptyDirs()), disks: len(vm.added),
					root: g.Root != nil, mounts: len(g.Mounts), hostMounts: len(mounted), podSandbox: req.GetPodSandbox()}
				if pod {
					if want := (received{podSandbox: true}); got != want {
						t.Errorf("a pod sandbox's create made %+v, want %+v", got, want)
					}
				} else if !got.root || got.mounts != 2 || got.hostMounts+got.files == 0 || got.podSandbox ||
					(got.emptyDirs == 1) == tc.shared {
					t.Errorf("a container's create made %+v: want its root, its mounts shared or copied, its emptyDir made in the guest without the shared tree", got)
				}
				if err := c.Delete(t.Context(), true); err != nil {
					t.Fatal(err)
				}
				if _, err := os.Stat(filepath.Join(s.stateDir, "mounts", "c1")); !os.IsNotExist(err) {
					t.Errorf("the container's shared directory after delete: %v", err)
				}
				if wantRemoved := min(1, len(vm.added)); len(vm.removed) != wantRemoved {
					t.Errorf("disks added %v, removed %v: want %d removal", vm.added, vm.removed, wantRemoved)
				}
			})
		}
	}
}

// received is what a container's create put into the guest and the shared
// tree.
type received struct {
	storages, files, emptyDirs, disks int
	root                              bool
	mounts, hostMounts                int
	podSandbox                        bool
}
