package hostcgroup

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestSelfDirs checks the cgroup directories of this process as read from
// a stand-in /proc: every mounted hierarchy, named and empty v2 ones too,
// below a mounted subtree's root.
func TestSelfDirs(t *testing.T) {
	const hybridMounts = `30 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
36 30 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,memory
`
	cases := []struct {
		name, cgroup, mounts string
		want                 []string
	}{
		{
			name:   "v1 hierarchies and the empty v2 one",
			cgroup: "12:memory:/system.slice/containerd.service\n4:cpu,cpuacct:/system.slice/containerd.service\n1:name=systemd:/system.slice/containerd.service\n0::/system.slice/containerd.service\n",
			mounts: hybridMounts,
			want: []string{
				"/sys/fs/cgroup/memory/system.slice/containerd.service",
				"/sys/fs/cgroup/cpu,cpuacct/system.slice/containerd.service",
				"/sys/fs/cgroup/systemd/system.slice/containerd.service",
				"/sys/fs/cgroup/unified/system.slice/containerd.service",
			},
		},
		{
			name:   "unified",
			cgroup: "0::/system.slice/containerd.service\n",
			mounts: "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
			want:   []string{"/sys/fs/cgroup/system.slice/containerd.service"},
		},
		{
			name:   "a mounted subtree",
			cgroup: "0::/kubepods/pod1/ctr\n",
			mounts: "29 23 0:26 /kubepods /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			want:   []string{"/sys/fs/cgroup/pod1/ctr"},
		},
		{
			name:   "outside the mounted subtree",
			cgroup: "0::/kubepodsX/ctr\n",
			mounts: "29 23 0:26 /kubepods /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			want:   nil,
		},
		{
			name:   "a v1 line does not match the v2 mount, nor v2 a v1 one",
			cgroup: "5:pids:/x\n0::/y\n",
			mounts: "29 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n36 30 0:32 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,memory\n",
			want:   []string{"/sys/fs/cgroup/y"},
		},
		{
			name:   "a hierarchy without a mount is skipped",
			cgroup: "9:pids:/x\n12:memory:/x\n",
			mounts: hybridMounts,
			want:   []string{"/sys/fs/cgroup/memory/x"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			must(t, os.MkdirAll(filepath.Join(dir, "self"), 0o755))
			write(t, filepath.Join(dir, "self/mountinfo"), c.mounts)
			write(t, filepath.Join(dir, "self/cgroup"), c.cgroup)
			old := procRoot
			procRoot = dir
			defer func() { procRoot = old }()
			got, err := SelfDirs()
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("got %q, want %q", got, c.want)
			}
		})
	}
}

// TestSelfDirsOnThisHost reads the real tables: each directory found is a
// cgroup (it has cgroup.procs) that lists this process.
func TestSelfDirsOnThisHost(t *testing.T) {
	dirs, err := SelfDirs()
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) == 0 {
		t.Fatal("no cgroup directory found for this process")
	}
	self := strconv.Itoa(os.Getpid())
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(strings.Fields(string(b)), self) {
			t.Errorf("%s/cgroup.procs does not list this process (%s)", d, self)
		}
	}
}
