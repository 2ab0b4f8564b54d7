package cri

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
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
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Fatalf("mkfs.ext4 not found (apt-get install e2fsprogs): %v", err)
	}
	scratch := filepath.Join(t.TempDir(), "scratch.ext4")
	if out, err := exec.Command("truncate", "-s", "128M", scratch).CombinedOutput(); err != nil {
		t.Fatalf("truncate: %v: %s", err, out)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", scratch).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	tdir, err := os.MkdirTemp(env.workDir, "t")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(tdir) })
	d := startDaemonWith(t, "2", daemonOptions{
		assetsDir:   soakAssets(t),
		runtime:     "shared_fs = \"none\"\n",
		hullConfig:  fmt.Sprintf("[hypervisor]\nfree_page_reporting = false\n[factory]\ntemplate = true\ntemplate_memory = \"shared\"\ntemplate_dir = %q\n", tdir),
		snapshotter: "blockfile",
		containerd:  fmt.Sprintf("[plugins.'io.containerd.snapshotter.v1.blockfile']\n  scratch_file = %q\n  fs_type = 'ext4'\n  mount_options = []\n", scratch),
	})
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
		t.Errorf("the shim's log does not say the sandbox was restored from its template:\n%s", lastLines(log, 40))
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
