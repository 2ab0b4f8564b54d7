package storage

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestValidateID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"abc", true},
		{"a1_b-c.d", true},
		{"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", true},
		{"", false},
		{".", false},
		{"..", false},
		{"../x", false},
		{"a/b", false},
		{"-x", false},
		{"a b", false},
		{string(make([]byte, 129)), false},
	} {
		t.Run(tc.id, func(t *testing.T) {
			err := ValidateID(tc.id)
			if tc.ok && err != nil {
				t.Fatal(err)
			}
			if !tc.ok && !errdefs.IsInvalidArgument(err) {
				t.Fatalf("got %v, want an invalid-argument error", err)
			}
		})
	}
}

func TestGuestSpec(t *testing.T) {
	proc := specs.Mount{Destination: "/proc", Type: "proc", Source: "proc"}
	tmpfs := specs.Mount{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "size=64m"}}
	for _, tc := range []struct {
		name        string
		spec        specs.Spec
		wantRoot    string
		wantMount   []specs.Mount
		wantVols    []volume
		wantErr     func(error) bool
		wantHooks   *specs.Hooks
		guestMounts []int
	}{
		{
			name:     "relative root, no binds",
			spec:     specs.Spec{Root: &specs.Root{Path: "rootfs"}, Mounts: []specs.Mount{proc, tmpfs}},
			wantRoot: "/run/hull/shared/c1/rootfs", wantMount: []specs.Mount{proc, tmpfs},
		},
		{
			name:     "absolute read-only root",
			spec:     specs.Spec{Root: &specs.Root{Path: "/var/lib/x/rootfs", Readonly: true}},
			wantRoot: "/run/hull/shared/c1/rootfs",
		},
		{
			name: "binds",
			spec: specs.Spec{Root: &specs.Root{Path: "rootfs"}, Mounts: []specs.Mount{
				proc,
				{Destination: "/data", Type: "bind", Source: "/srv/data", Options: []string{"rbind", "rw"}},
				{Destination: "/etc/hosts", Source: "/var/lib/c1/hosts", Options: []string{"bind", "ro"}},
				{Destination: "/cfg", Type: "none", Source: "/srv/my cfg!", Options: []string{"ro", "rw", "bind"}},
				tmpfs,
				{Destination: "/all", Type: "bind", Source: "/", Options: []string{"ro"}},
			}},
			wantRoot: "/run/hull/shared/c1/rootfs",
			wantMount: []specs.Mount{
				proc,
				{Destination: "/data", Type: "bind", Source: "/run/hull/shared/c1/volumes/1-data", Options: []string{"rbind", "rw"}},
				{Destination: "/etc/hosts", Source: "/run/hull/shared/c1/volumes/2-hosts", Options: []string{"bind", "ro"}},
				{Destination: "/cfg", Type: "none", Source: "/run/hull/shared/c1/volumes/3-my_cfg_", Options: []string{"ro", "rw", "bind"}},
				tmpfs,
				{Destination: "/all", Type: "bind", Source: "/run/hull/shared/c1/volumes/5-root", Options: []string{"ro"}},
			},
			wantVols: []volume{
				{index: 1, source: "/srv/data", name: "1-data", recursive: true},
				{index: 2, source: "/var/lib/c1/hosts", name: "2-hosts", readOnly: true},
				{index: 3, source: "/srv/my cfg!", name: "3-my_cfg_"},
				{index: 5, source: "/", name: "5-root", readOnly: true},
			},
		},
		{
			name: "guest mount kept",
			spec: specs.Spec{Root: &specs.Root{Path: "rootfs"}, Mounts: []specs.Mount{
				{Destination: "/dev/shm", Type: "bind", Source: "/run/hull/shm", Options: []string{"rbind", "rw"}},
				{Destination: "/etc/hosts", Type: "bind", Source: "/var/lib/c1/hosts", Options: []string{"rbind", "ro"}},
			}},
			guestMounts: []int{0},
			wantRoot:    "/run/hull/shared/c1/rootfs",
			wantMount: []specs.Mount{
				{Destination: "/dev/shm", Type: "bind", Source: "/run/hull/shm", Options: []string{"rbind", "rw"}},
				{Destination: "/etc/hosts", Type: "bind", Source: "/run/hull/shared/c1/volumes/1-hosts", Options: []string{"rbind", "ro"}},
			},
			wantVols: []volume{{index: 1, source: "/var/lib/c1/hosts", name: "1-hosts", recursive: true, readOnly: true}},
		},
		{
			name: "guest mount outside the runtime dir",
			spec: specs.Spec{Root: &specs.Root{Path: "rootfs"}, Mounts: []specs.Mount{
				{Destination: "/dev/shm", Type: "bind", Source: "/dev/shm", Options: []string{"rbind"}},
			}},
			guestMounts: []int{0},
			wantErr:     errdefs.IsInvalidArgument,
		},
		{
			name: "guest mount escaping",
			spec: specs.Spec{Root: &specs.Root{Path: "rootfs"}, Mounts: []specs.Mount{
				{Destination: "/dev/shm", Type: "bind", Source: "/run/hull/../../etc", Options: []string{"rbind"}},
			}},
			guestMounts: []int{0},
			wantErr:     errdefs.IsInvalidArgument,
		},
		{
			name:        "guest mount index out of range",
			spec:        specs.Spec{Root: &specs.Root{Path: "rootfs"}},
			guestMounts: []int{3},
			wantErr:     errdefs.IsInvalidArgument,
		},
		{
			name:    "bind without source",
			spec:    specs.Spec{Root: &specs.Root{Path: "rootfs"}, Mounts: []specs.Mount{{Destination: "/x", Type: "bind"}}},
			wantErr: errdefs.IsInvalidArgument,
		},
		{
			name:      "start container hooks pass",
			spec:      specs.Spec{Root: &specs.Root{Path: "rootfs"}, Hooks: &specs.Hooks{StartContainer: []specs.Hook{{Path: "/bin/true"}}}},
			wantRoot:  "/run/hull/shared/c1/rootfs",
			wantHooks: &specs.Hooks{StartContainer: []specs.Hook{{Path: "/bin/true"}}},
		},
		{
			name:     "empty hooks dropped",
			spec:     specs.Spec{Root: &specs.Root{Path: "rootfs"}, Hooks: &specs.Hooks{}},
			wantRoot: "/run/hull/shared/c1/rootfs",
		},
		{
			name:    "create runtime hook",
			spec:    specs.Spec{Root: &specs.Root{Path: "rootfs"}, Hooks: &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/usr/bin/nvidia-ctk"}}}},
			wantErr: errdefs.IsNotImplemented,
		},
		{
			name:    "prestart hook",
			spec:    specs.Spec{Root: &specs.Root{Path: "rootfs"}, Hooks: &specs.Hooks{Prestart: []specs.Hook{{Path: "/x"}}}}, //nolint:staticcheck // testing the deprecated field
			wantErr: errdefs.IsNotImplemented,
		},
		{
			name:    "poststop hook",
			spec:    specs.Spec{Root: &specs.Root{Path: "rootfs"}, Hooks: &specs.Hooks{Poststop: []specs.Hook{{Path: "/x"}}}},
			wantErr: errdefs.IsNotImplemented,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := json.Marshal(tc.spec)
			g, vols, err := guestSpec("c1", &tc.spec, tc.guestMounts)
			if after, _ := json.Marshal(tc.spec); string(after) != string(before) {
				t.Errorf("input spec modified:\n%s\n%s", before, after)
			}
			if tc.wantErr != nil {
				if !tc.wantErr(err) {
					t.Fatalf("got error %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if g.Root.Path != tc.wantRoot {
				t.Errorf("root %q, want %q", g.Root.Path, tc.wantRoot)
			}
			if g.Root.Readonly != tc.spec.Root.Readonly {
				t.Errorf("root read-only %v, want %v", g.Root.Readonly, tc.spec.Root.Readonly)
			}
			if !reflect.DeepEqual(g.Mounts, tc.wantMount) {
				t.Errorf("mounts\n got %+v\nwant %+v", g.Mounts, tc.wantMount)
			}
			if !reflect.DeepEqual(vols, tc.wantVols) {
				t.Errorf("volumes\n got %+v\nwant %+v", vols, tc.wantVols)
			}
			if !reflect.DeepEqual(g.Hooks, tc.wantHooks) {
				t.Errorf("hooks %+v, want %+v", g.Hooks, tc.wantHooks)
			}
		})
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	if got := unescapeMountinfo(`/tmp/a\040b\\c`); got != `/tmp/a b\\c` {
		// \\ is not an octal escape: kept as is.
		t.Errorf("unescape: %q", got)
	}
}
