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

	"github.com/hull-runtime/hull/internal/hypervisor"
)

func TestStartWarmRefusesWarmUpWithoutBinary(t *testing.T) {
	newVM := func(hypervisor.Config) (hypervisor.VM, error) {
		t.Fatal("a refused warm start made a vm")
		return nil, errdefs.ErrNotImplemented
	}
	for _, tc := range []struct {
		name   string
		binary string
	}{
		{"no binary", ""},
		{"relative binary", "bin/hull-agent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			_, err := StartWarm(context.Background(), Config{
				StateRoot: root, Transport: hypervisor.TransportSerial, NewVM: newVM,
				DialTimeout: time.Second, CallTimeout: time.Second,
				Cgroup: CgroupConfig{Path: "/hull-test/warm"},
				WarmUp: true, WarmUpBinary: tc.binary,
			})
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "warm-up binary") {
				t.Fatalf("got %v, want an invalid-argument error about the warm-up binary", err)
			}
			if ents, _ := os.ReadDir(root); len(ents) != 0 {
				t.Errorf("the state root holds %v after a refused start", ents)
			}
		})
	}
}

func TestWarmUpRootfs(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(bin, []byte("binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(t.TempDir(), warmUpDirName)
	rootfs, err := warmUpRootfs(bundle, bin)
	if err != nil {
		t.Fatal(err)
	}
	if rootfs != filepath.Join(bundle, "rootfs") {
		t.Errorf("rootfs %s, want in %s", rootfs, bundle)
	}
	copied := filepath.Join(rootfs, warmUpBinaryName)
	b, err := os.ReadFile(copied)
	if err != nil || string(b) != "binary" {
		t.Fatalf("the copy holds %q (%v)", b, err)
	}
	src, _ := os.Stat(bin)
	dst, _ := os.Stat(copied)
	if os.SameFile(src, dst) {
		t.Error("the rootfs links the host's binary instead of copying it")
	}
	if dst.Mode().Perm()&0o222 != 0 {
		t.Errorf("the copy is writable: %v", dst.Mode())
	}
	spec := warmUpSpec()
	for _, m := range spec.Mounts {
		if st, err := os.Stat(filepath.Join(rootfs, m.Destination)); err != nil || !st.IsDir() {
			t.Errorf("no mount point for %s in the rootfs: %v", m.Destination, err)
		}
	}
	if spec.Process.Args[0] != "/"+warmUpBinaryName {
		t.Errorf("the process runs %s, not the copy", spec.Process.Args[0])
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == "pid" {
			t.Error("a pid namespace makes the agent binary the container's PID 1, which runs as the guest's init")
		}
	}
	if _, err := warmUpRootfs(bundle, bin); err == nil {
		t.Error("a second warm-up bundle over the first was made")
	}
}
