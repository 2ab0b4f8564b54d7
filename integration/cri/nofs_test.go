package cri

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// TestCRINoSharedFS runs a kubelet-style pod through containerd 2.x's CRI
// with hull's runtime.shared_fs = "none" and the hull handler on the
// blockfile snapshotter: the pod and a container run with no virtiofsd,
// the container's root on a disk and none hot-added for the pod's sandbox
// (pause) container, which uses no root of its image; the files the
// CRI binds from the host (/etc/hosts, /etc/hostname, /etc/resolv.conf,
// /dev/termination-log) are there, copied; nothing is left after the
// pod's removal. Then, with the template `hull factory template create`
// saves (template_memory = "shared", the configuration's since the start:
// the first pod found no template and booted), a second pod's VM is
// restored from it copy-on-write, gets its disks and NIC hot-added, and
// serves its web page at the pod's IP; nothing is left after it either.
func TestCRINoSharedFS(t *testing.T) {
	hull.need(t)
	tdir, err := os.MkdirTemp(env.workDir, "t")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(tdir) })
	d := startNoFSDaemon(t, "", fmt.Sprintf("[hypervisor]\nfree_page_reporting = false\n[factory]\ntemplate = true\ntemplate_memory = \"shared\"\ntemplate_dir = %q\n", tdir))
	s := d.begin(t, hull)
	p := s.runPod("nofs")
	cfg := containerConfig("app", untilTerm("true")...)
	// The kubelet binds the termination log and a secret volume.
	host := t.TempDir()
	if err := os.WriteFile(filepath.Join(host, "termination-log"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(host, "secret"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(host, "secret", "token"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Mounts = []*runtime.Mount{
		{ContainerPath: "/dev/termination-log", HostPath: filepath.Join(host, "termination-log")},
		{ContainerPath: "/var/run/secrets/app", HostPath: filepath.Join(host, "secret"), Readonly: true},
	}
	id := p.run(cfg)
	// The guest's hot-added root disks (serial hull<disk>): the app's
	// alone, the pause container gets none.
	disks := "for f in /sys/block/vd*/serial; do cat $f; echo; done | grep -c '^hull'"
	r := p.execSync(id, 60, "sh", "-c", "cat /etc/hostname; grep -c "+dnsServer+" /etc/resolv.conf; test -f /dev/termination-log && echo termlog; cat /var/run/secrets/app/token; grep -c virtiofs /proc/mounts; "+disks+"; grep ' / ' /proc/mounts")
	out := string(r.GetStdout())
	if r.GetExitCode() != 0 || !strings.HasPrefix(out, "nofs\n1\ntermlog\ns3cret\n0\n1\n/dev/vd") {
		t.Fatalf("exec: exit %d, stdout %q, stderr %q; want the hostname, the DNS server, the termination log, no virtiofs mount, one root disk (the app's) and / on a disk",
			r.GetExitCode(), out, r.GetStderr())
	}
	for _, pr := range d.processes() {
		if strings.Contains(pr.Cmdline, "virtiofsd") {
			t.Errorf("virtiofsd runs: %s", pr.Cmdline)
		}
	}
	p.stopContainer(id, 10)
	p.removeContainer(id)
	p.stop()
	p.remove()
	waitNothingLeft(t, s, func(string) bool { return false })

	hullBin := factoryBinaries(t)
	tout, err := exec.Command(hullBin, "--config", d.hullConfigPath(), "factory", "template", "create").CombinedOutput()
	if err != nil {
		t.Fatalf("hull factory template create: %v\n%s", err, tout)
	}
	from := d.logSize()
	p = s.runPod("nofstpl")
	if log := d.logSince(from); !strings.Contains(log, "start=restored") || !strings.Contains(log, "vm restored from its template") {
		t.Errorf("the shim's log does not say the sandbox was restored from its template:\n%s", e2e.LastLines(log, 40))
	}
	// The clone's QEMU maps the template's own memory file (a private
	// clone maps a copy in its state directory).
	mapped := false
	for _, pr := range d.processes() {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pr.Pid))
		mapped = mapped || strings.Contains(string(b), tdir+"/")
	}
	if !mapped {
		t.Error("no process of the pod maps the template's memory file: the clone does not share it")
	}
	servePodWeb(t, p)
	p.stop()
	p.remove()
	waitNothingLeft(t, s, func(string) bool { return false })
}

// startNoFSDaemon starts containerd 2.x with hull's runtime.shared_fs =
// "none" (runtime added to hull's [runtime] table, hullConfig to its
// configuration) and the blockfile snapshotter on an ext4 scratch file.
func startNoFSDaemon(t *testing.T, runtime, hullConfig string) *daemon {
	t.Helper()
	return startDaemonWith(t, "2", daemonOptions{
		assetsDir:   soakAssets(t),
		runtime:     "shared_fs = \"none\"\n" + runtime,
		hullConfig:  hullConfig,
		snapshotter: "blockfile",
		containerd:  e2e.BlockfileSnapshotter(t),
	})
}

// TestCRINoSharedFSEmptyDir runs a pod whose two containers bind the same
// emptyDir volume (its kubelet directory, made here as the kubelet makes
// it: <root>/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>, below a
// kubelet root other than the default, as k0s's, given as
// runtime.kubelet_root_dir) with shared_fs = "none": the volume is one tmpfs in the guest that both
// see, with the kubelet directory's mode and group (an fsGroup, which a
// new file inherits), a file written by either is read by the other, a
// container made after both were removed still finds the files, the host
// directory receives nothing, and nothing is left after the pod's removal.
func TestCRINoSharedFSEmptyDir(t *testing.T) {
	hull.need(t)
	root := filepath.Join(t.TempDir(), "var", "lib", "k0s", "kubelet")
	d := startNoFSDaemon(t, fmt.Sprintf("kubelet_root_dir = %q\n", root), "")
	s := d.begin(t, hull)
	p := s.runPod("nofsed")
	vol := kubeletEmptyDir(t, root, p.config.GetMetadata().GetUid(), "scratch")
	// The pod's fsGroup, as the kubelet applies it: group-owned,
	// set-group-ID.
	if err := os.Chown(vol, 0, 2000); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(vol, 0o777|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	writer := containerConfig("writer", untilTerm("true")...)
	writer.Mounts = []*runtime.Mount{{ContainerPath: "/data", HostPath: vol}}
	reader := containerConfig("reader", untilTerm("true")...)
	reader.Mounts = []*runtime.Mount{{ContainerPath: "/shared", HostPath: vol}}
	wid, rid := p.run(writer), p.run(reader)

	sh := func(id, script, want string) {
		t.Helper()
		r := p.execSync(id, 60, "sh", "-c", script)
		if out := string(r.GetStdout()); r.GetExitCode() != 0 || out != want {
			t.Fatalf("%s: exit %d, stdout %q, stderr %q; want %q", script, r.GetExitCode(), out, r.GetStderr(), want)
		}
	}
	sh(wid, "echo from-writer > /data/msg && awk '$2 == \"/data\" {print $3}' /proc/mounts && stat -c '%a %g' /data && stat -c %g /data/msg",
		"tmpfs\n2777 2000\n2000\n")
	sh(rid, "cat /shared/msg && echo from-reader > /shared/back", "from-writer\n")
	sh(wid, "cat /data/back", "from-reader\n")
	if ents, err := os.ReadDir(vol); err != nil || len(ents) != 0 {
		t.Errorf("the host directory holds %v (%v): want it untouched", ents, err)
	}
	for _, id := range []string{wid, rid} {
		p.stopContainer(id, 10)
		p.removeContainer(id)
	}
	// The volume lives as long as the pod: a container made after both
	// were removed (a restart) finds their files.
	later := containerConfig("later", untilTerm("true")...)
	later.Mounts = []*runtime.Mount{{ContainerPath: "/data", HostPath: vol, Readonly: true}}
	lid := p.run(later)
	sh(lid, "cat /data/msg /data/back", "from-writer\nfrom-reader\n")
	p.stopContainer(lid, 10)
	p.removeContainer(lid)
	p.stop()
	p.remove()
	waitNothingLeft(t, s, func(string) bool { return false })
	if ents, err := os.ReadDir(vol); err != nil || len(ents) != 0 {
		t.Errorf("the host directory holds %v (%v) after the pod: want it untouched", ents, err)
	}
}

// kubeletEmptyDir makes the directory of emptyDir volume name of pod uid
// of a kubelet whose root is kubelet (mode 0777, as the kubelet makes it),
// removed with what it needed to make above it when the test ends.
func kubeletEmptyDir(t *testing.T, kubelet, uid, name string) string {
	t.Helper()
	// The top-most directory made here is removed at the end.
	top := filepath.Join(kubelet, "pods", uid)
	for _, d := range []string{filepath.Join(kubelet, "pods"), kubelet} {
		if _, err := os.Lstat(d); os.IsNotExist(err) {
			top = d
		}
	}
	vol := filepath.Join(kubelet, "pods", uid, "volumes", "kubernetes.io~empty-dir", name)
	if err := os.MkdirAll(vol, 0o750); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(top); err != nil {
			t.Errorf("removing %s: %v", top, err)
		}
	})
	if err := os.Chmod(vol, 0o777); err != nil {
		t.Fatal(err)
	}
	return vol
}
