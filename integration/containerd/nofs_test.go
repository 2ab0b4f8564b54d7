package containerd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// TestNoSharedFS runs containers through containerd 2.x with hull's
// runtime.shared_fs = "none": a root from the blockfile snapshotter runs
// with its bind mounts copied into the guest (a file, and a directory laid
// out as a Kubernetes configmap, links and all), no virtiofsd runs, a root
// from the overlayfs snapshotter (a host directory) and a device bind are
// refused with errors that say why, and nothing is left after each; a
// warm VM from the factory's cache (which runs no warm-up container
// without virtio-fs) is adopted by such a pod.
func TestNoSharedFS(t *testing.T) {
	d := startBlockfileDaemonWith(t, daemonOptions{runtime: `shared_fs = "none"`})
	host := t.TempDir()
	for name, data := range map[string]string{
		"hosts":               "127.0.0.1 localhost\n10.0.0.7 nofs-pod\n",
		"cm/..2026_12_07/key": "configmap value\n",
	} {
		p := filepath.Join(host, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range [][2]string{{"..2026_12_07", "cm/..data"}, {"..data/key", "cm/key"}} {
		if err := os.Symlink(l[0], filepath.Join(host, l[1])); err != nil {
			t.Fatal(err)
		}
	}
	binds := []string{
		"--mount", "type=bind,src=" + filepath.Join(host, "hosts") + ",dst=/etc/hosts,options=rbind:ro",
		"--mount", "type=bind,src=" + filepath.Join(host, "cm") + ",dst=/etc/config,options=rbind:ro",
	}

	t.Run("blockfile root, copied binds", func(t *testing.T) {
		defer d.checkClean(t)
		args := append(append([]string{"run", "--rm", "--snapshotter", blockfileSnapshotter, "--runtime", runtimeName}, binds...),
			imageName, "nofs-one", "sh", "-c", "cat /etc/hosts /etc/config/key && grep -c virtiofs /proc/mounts; cat /proc/mounts")
		out, errOut, code := d.ctr(t, args...)
		want := "127.0.0.1 localhost\n10.0.0.7 nofs-pod\nconfigmap value\n0\n"
		if code != 0 || !strings.HasPrefix(out, want) || !rootMount.MatchString(out) {
			t.Fatalf("got exit %d, stdout %q, stderr %q; want %q, no virtiofs mount and / on /dev/vdX ext4", code, out, errOut, want)
		}
	})
	t.Run("overlayfs root refused", func(t *testing.T) {
		defer d.checkClean(t, "nofs-ovl")
		_, errOut, code := d.ctr(t, "run", "--rm", "--runtime", runtimeName, imageName, "nofs-ovl", "true")
		if code == 0 || !strings.Contains(errOut, "blockfile or erofs snapshotter") {
			t.Fatalf("got exit %d, stderr %q; want the error naming the snapshotters that work", code, errOut)
		}
		d.forget(t, "nofs-ovl")
	})
	t.Run("device bind refused", func(t *testing.T) {
		defer d.checkClean(t, "nofs-dev")
		_, errOut, code := d.ctr(t, "run", "--rm", "--snapshotter", blockfileSnapshotter, "--runtime", runtimeName,
			"--mount", "type=bind,src=/dev/null,dst=/x,options=rbind", imageName, "nofs-dev", "true")
		if code == 0 || !strings.Contains(errOut, "a character device") {
			t.Fatalf("got exit %d, stderr %q; want the device named", code, errOut)
		}
		d.forget(t, "nofs-dev")
	})
	// Warm VMs without virtio-fs skip the warm-up container (whose root
	// is a host directory): the factory's VM gets ready and a pod adopts
	// it.
	t.Run("warm VM from the factory", func(t *testing.T) {
		f := e2e.NewFactory(e2e.ModeCache, d.dir, filepath.Base(d.dir), 1)
		d.setHullConfig(t, daemonOptions{assetsDir: factoryAssets(), runtime: `shared_fs = "none"`, tables: f.Config()})
		f.Start(t, filepath.Join(env.binDir, "hull"), d.hullConfigPath(), filepath.Join(env.shimDir, "containerd-shim-hull-v2"))
		d.factory = f
		warm, _ := f.WaitReady(t)
		t.Logf("warm VM %s ready after %.1fs", warm.Id, warm.AgeSeconds)
		defer d.checkClean(t)
		args := append(append([]string{"run", "--rm", "--snapshotter", blockfileSnapshotter, "--runtime", runtimeName}, binds...),
			imageName, "nofs-warm", "cat", "/etc/config/key")
		if out := d.mustCtr(t, args...); out != "configmap value\n" {
			t.Errorf("got %q, want the copied configmap", out)
		}
		if st, err := f.Status(); err != nil || st.Hits != 1 {
			t.Errorf("factory status %v (%v), want 1 hit", st, err)
		}
		if !strings.Contains(d.log.String(), "start=adopted") {
			t.Errorf("the shim's log does not say the sandbox was adopted")
		}
	})
}
