package integration

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/sandbox"
	"github.com/hull-runtime/hull/internal/storage"
)

// podFiles makes host files as CRI gives a container: /etc/hosts,
// /etc/resolv.conf, /dev/termination-log and a configmap volume laid out
// as the kubelet lays it out (a versioned directory and links to it), with
// a link that points outside the volume.
func podFiles(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range map[string]string{
		"hosts":                  "127.0.0.1 localhost\n10.0.0.7 nofs-pod\n",
		"resolv.conf":            "nameserver 10.0.0.10\n",
		"termination-log":        "",
		"cm/..2026_12_07/key":    "configmap value\n",
		"cm/..2026_12_07/nested": "",
	} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range [][2]string{{"..2026_12_07", "cm/..data"}, {"..data/key", "cm/key"}, {"/etc/shadow", "cm/escape"}} {
		if err := os.Symlink(l[0], filepath.Join(dir, l[1])); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// withPodBinds adds the binds of podFiles' files to spec.
func withPodBinds(spec *specs.Spec, dir string) {
	spec.Mounts = append(spec.Mounts,
		specs.Mount{Destination: "/etc/hosts", Type: "bind", Source: filepath.Join(dir, "hosts"), Options: []string{"rbind", "rprivate", "rw"}},
		specs.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: filepath.Join(dir, "resolv.conf"), Options: []string{"rbind", "rprivate", "ro"}},
		specs.Mount{Destination: "/dev/termination-log", Type: "bind", Source: filepath.Join(dir, "termination-log"), Options: []string{"rbind", "rprivate", "rw"}},
		specs.Mount{Destination: "/etc/config", Type: "bind", Source: filepath.Join(dir, "cm"), Options: []string{"rbind", "rprivate", "ro"}},
	)
}

// noFSConfig is a container configuration whose sandboxes have no shared
// file system.
func noFSConfig(t *testing.T) *config.Config {
	c := containerConfig(t)
	c.Runtime.SharedFS = config.SharedFSNone
	c.Hypervisor.QEMU.HotplugDisks = 2
	return c
}

// TestNoSharedFS runs a sandbox with shared_fs = "none": no virtiofsd and
// no vhost-user-fs device; a container on a disk root gets its bind
// sources copied (files, a configmap through its links, the link out of
// the volume kept as a link); a root from a host directory and a device
// bind are refused with clear errors; nothing is left.
func TestNoSharedFS(t *testing.T) {
	c := noFSConfig(t)
	sb := startSandbox(t, c, "nofs")

	pids := processesMentioning(c.Runtime.StateDir)
	if len(pids) != 1 {
		var cmds []string
		for _, p := range pids {
			cmds = append(cmds, cmdline(p))
		}
		t.Fatalf("%d processes name the state dir, want QEMU alone: %q", len(pids), cmds)
	}
	if cl := cmdline(pids[0]); strings.Contains(cl, "virtiofsd") || strings.Contains(cl, "vhost-user-fs") {
		t.Fatalf("the VM has virtio-fs: %s", cl)
	}
	if _, err := os.Lstat(filepath.Join(sandbox.StateDir(c.Runtime.StateDir, "nofs"), "shared")); !os.IsNotExist(err) {
		t.Errorf("a shared tree exists: %v", err)
	}

	host := podFiles(t)
	bundle, _ := busyboxBundle(t, "true")
	t.Run("copied binds", func(t *testing.T) {
		ctx := withTimeout(t, 2*time.Minute)
		img := ext4Image(t, bundle)
		b, spec := busyboxBundle(t, "sh", "-c",
			"cat /etc/hosts /etc/resolv.conf /etc/config/key; readlink /etc/config/escape; "+
				"echo ended > /dev/termination-log && cat /dev/termination-log; "+
				"echo x > /etc/resolv.conf || echo resolv-ro")
		withPodBinds(spec, host)
		var stdout, stderr e2e.SyncBuffer
		ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{
			ID: "nofs-ctr", Bundle: b, Spec: spec,
			Rootfs: []storage.Mount{{Type: "ext4", Source: img, Options: []string{"loop", "rw"}}},
			Stdio:  sandbox.IO{Stdout: &stdout, Stderr: &stderr},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer deleteContainer(t, ctr)
		if err := ctr.Start(ctx); err != nil {
			t.Fatal(err)
		}
		st, err := ctr.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := "127.0.0.1 localhost\n10.0.0.7 nofs-pod\nnameserver 10.0.0.10\nconfigmap value\n/etc/shadow\nended\nresolv-ro\n"
		if st.Code != 0 || stdout.String() != want {
			t.Fatalf("status %d, stdout %q, stderr %q; want %q", st.Code, stdout.String(), stderr.String(), want)
		}
		// Host to guest only: the guest's write stays in the guest.
		if b, err := os.ReadFile(filepath.Join(host, "termination-log")); err != nil || len(b) != 0 {
			t.Errorf("host termination-log %q, %v: want it untouched", b, err)
		}
	})
	t.Run("root from a host directory refused", func(t *testing.T) {
		ctx := withTimeout(t, time.Minute)
		b, spec := busyboxBundle(t, "true")
		_, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{ID: "nofs-dir", Bundle: b, Spec: spec})
		if !errdefs.IsNotImplemented(err) || !errors.Is(err, sandbox.ErrNeedsSharedFS) || !strings.Contains(err.Error(), "blockfile or erofs snapshotter") {
			t.Fatalf("got %v, want the error naming the snapshotters that work", err)
		}
	})
	t.Run("device bind refused", func(t *testing.T) {
		ctx := withTimeout(t, time.Minute)
		b, spec := busyboxBundle(t, "true")
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/x", Type: "bind", Source: "/dev/null", Options: []string{"rbind"}})
		_, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{
			ID: "nofs-dev", Bundle: b, Spec: spec,
			Rootfs: []storage.Mount{{Type: "ext4", Source: ext4Image(t, bundle), Options: []string{"loop", "rw"}}},
		})
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "a character device") {
			t.Fatalf("got %v, want an invalid argument naming the device", err)
		}
	})
	t.Run("writable directory and procfs binds refused", func(t *testing.T) {
		for _, tc := range []struct {
			m    specs.Mount
			want func(error) bool
			text string
		}{
			{specs.Mount{Destination: "/data", Type: "bind", Source: t.TempDir(), Options: []string{"rbind", "rw"}}, errdefs.IsNotImplemented, "shared_fs"},
			{specs.Mount{Destination: "/env", Type: "bind", Source: "/proc/self/environ", Options: []string{"rbind", "ro"}}, errdefs.IsInvalidArgument, "procfs"},
		} {
			ctx := withTimeout(t, time.Minute)
			b, spec := busyboxBundle(t, "true")
			spec.Mounts = append(spec.Mounts, tc.m)
			_, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{
				ID: "nofs-refused", Bundle: b, Spec: spec,
				Rootfs: []storage.Mount{{Type: "ext4", Source: ext4Image(t, bundle), Options: []string{"loop", "rw"}}},
			})
			if !tc.want(err) || !strings.Contains(err.Error(), tc.text) {
				t.Errorf("%s from %s: got %v, want an error naming %s", tc.m.Destination, tc.m.Source, err, tc.text)
			}
		}
	})
	t.Run("source over the copy limit refused", func(t *testing.T) {
		ctx := withTimeout(t, time.Minute)
		big := filepath.Join(t.TempDir(), "big")
		if err := os.WriteFile(big, make([]byte, c.Runtime.CopyMaxFileBytes+1), 0o644); err != nil {
			t.Fatal(err)
		}
		b, spec := busyboxBundle(t, "true")
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/big", Type: "bind", Source: big, Options: []string{"rbind"}})
		_, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{
			ID: "nofs-big", Bundle: b, Spec: spec,
			Rootfs: []storage.Mount{{Type: "ext4", Source: ext4Image(t, bundle), Options: []string{"loop", "rw"}}},
		})
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "larger than") {
			t.Fatalf("got %v, want an invalid argument naming the limit", err)
		}
	})
}

// mappedMem sums Rss and Pss, in KiB, of the mappings of file in process
// pid (/proc/PID/smaps), pages the process copied on write included.
func mappedMem(pid int, file string) (rss, pss uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0, 0, err
	}
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			in = len(fields) >= 6 && fields[5] == file
			continue
		}
		if !in || len(fields) < 2 {
			continue
		}
		v, _ := strconv.ParseUint(fields[1], 10, 64)
		switch fields[0] {
		case "Rss:":
			rss += v
		case "Pss:":
			pss += v
		}
	}
	return rss, pss, nil
}

// TestTemplateSharedNoFS restores two pod sandboxes without a shared file
// system from one template with template_memory = "shared": both restore
// (no virtio-fs, RAM mapped copy-on-write from the template file), each
// runs a container on a disk root with its bind sources copied, the
// template file's pages are shared between the two running clones (the
// mapping's PSS well below its RSS) and unchanged after, and nothing is
// left.
func TestTemplateSharedNoFS(t *testing.T) {
	c, _ := hullKernelConfig(t)
	c.Runtime.SharedFS = config.SharedFSNone
	c.Hypervisor.QEMU.HotplugDisks = 2
	c.Hypervisor.FreePageReporting = false
	c.Factory.Template = true
	c.Factory.TemplateMemory = "shared"
	c.Factory.TemplateDir = t.TempDir()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx := withTimeout(t, 8*time.Minute)
	key := createPodTemplate(t, ctx, c, "tplcreate")
	memFile := filepath.Join(c.Factory.TemplateDir, key, "memory")
	before := fileDigest(t, memFile)

	host := podFiles(t)
	bundle, _ := busyboxBundle(t, "true")
	var sbs []*sandbox.Sandbox
	for _, id := range []string{"tplnofs1", "tplnofs2"} {
		sb := startSandbox(t, c, id)
		sbs = append(sbs, sb)
		if !sb.Restored() {
			t.Fatalf("%s booted instead of restoring from template %s", id, key)
		}
		if pids := processesMentioning(sb.StateDir() + "/"); len(pids) != 1 || strings.Contains(cmdline(pids[0]), "vhost-user-fs") {
			t.Fatalf("%s: processes %v, want QEMU alone and without virtio-fs", id, pids)
		}
		b, spec := busyboxBundle(t, "sh", "-c", "cat /etc/hosts; exec sleep 100000")
		withPodBinds(spec, host)
		var stdout e2e.SyncBuffer
		ctr, err := sb.CreateContainer(ctx, sandbox.ContainerConfig{
			ID: "c-" + id, Bundle: b, Spec: spec,
			Rootfs: []storage.Mount{{Type: "ext4", Source: ext4Image(t, bundle), Options: []string{"loop", "rw"}}},
			Stdio:  sandbox.IO{Stdout: &stdout},
		})
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		defer deleteContainer(t, ctr)
		if err := ctr.Start(ctx); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		for !strings.Contains(stdout.String(), "nofs-pod") {
			if ctx.Err() != nil {
				t.Fatalf("%s: container printed %q, want the copied /etc/hosts", id, stdout.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	time.Sleep(3 * time.Second) // the guests settle
	for _, sb := range sbs {
		rss, pss, err := mappedMem(sb.VM().Describe().PID, memFile)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: template memory mapping: RSS %.1f MiB, PSS %.1f MiB (%.0f%%)", sb.ID(), float64(rss)/1024, float64(pss)/1024, 100*float64(pss)/float64(max(rss, 1)))
		// Two clones: pages neither wrote count half in each one's PSS.
		if rss == 0 || pss*100 > rss*80 {
			t.Errorf("%s: PSS %d KiB of RSS %d KiB of the template memory: want the pages shared (PSS below 80%% of RSS)", sb.ID(), pss, rss)
		}
	}
	for _, sb := range sbs {
		if err := sb.Stop(ctx); err != nil {
			t.Errorf("stopping %s: %v", sb.ID(), err)
		}
	}
	if after := fileDigest(t, memFile); after != before {
		t.Error("the template memory file changed: a clone wrote it")
	}
}
