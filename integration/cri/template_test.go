package cri

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// TestCRITemplate runs a kubelet-style pod with the suite's CNI network
// from a VM template, with containerd 1.6's and 2.x's CRI (one daemon
// each): `hull factory template create` saves the template of the
// daemon's hull configuration (factory.template = true), the pod's VM is
// restored from it ("start=restored" in the shim's log and hull monitor's
// hull_sandbox_start) with its NIC hot-added after the restore, the
// container runs, exec and the CRI log work, and the host reaches the
// container's server at the pod's IP. Stopped and removed, the pod leaves
// nothing. With containerd 2.x a VM factory of one warm VM then fills its
// cache by restoring from the same template, and a second pod adopts it.
func TestCRITemplate(t *testing.T) {
	for _, version := range []string{"1.6", "2"} {
		t.Run("containerd-"+version, func(t *testing.T) { templatePod(t, version) })
	}
}

func templatePod(t *testing.T, version string) {
	hull.need(t)
	var f *e2e.Factory
	var factoryConfig string
	if version == "2" {
		// The factory's socket and cgroup parent, unused until it starts.
		var fopts daemonOptions
		fopts, f = factoryOptions(t, 1)
		factoryConfig = fopts.hullConfig
	}
	d, err := startTemplateDaemon(t, version, factoryConfig)
	if err != nil {
		t.Fatal(err)
	}
	hullBin := factoryBinaries(t)
	hullToml := d.hullConfigPath()

	s := d.session(t, hull)
	from := d.logSize()
	start := time.Now()
	p := s.runPod("tpl")
	t.Logf("RunPodSandbox from the template: %.1fs", time.Since(start).Seconds())
	if log := d.logSince(from); !strings.Contains(log, "start=restored") || !strings.Contains(log, "vm restored from its template") {
		t.Errorf("the shim's log does not say the sandbox was restored from its template:\n%s", e2e.LastLines(log, 40))
	}
	metrics, err := httpGet("http://"+startMonitor(t, hullBin, hullToml)+"/metrics", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if l := podStartLine(metrics, p); !strings.Contains(l, `start="restored"`) || !strings.HasSuffix(l, " 1") {
		t.Errorf("hull monitor: the pod's hull_sandbox_start is %q, want start=\"restored\" 1", l)
	}
	servePodWeb(t, p)
	p.stop()
	p.remove()
	waitNothingLeft(t, s, func(string) bool { return false })

	if f == nil {
		return
	}
	// The factory's warm VM is restored from the template, and adopted.
	startFactory(t, f, d)
	warm, _ := f.WaitReady(t)
	if b, _ := os.ReadFile(f.LogPath); !strings.Contains(string(b), "vm restored from its template") {
		t.Errorf("the warm VM was not restored from the template; factory log:\n%s", e2e.LastLines(string(b), 40))
	}
	from = d.logSize()
	p = s.runPod("tplwarm")
	if log := d.logSince(from); !strings.Contains(log, "start=adopted") {
		t.Errorf("the shim's log does not say the sandbox was adopted:\n%s", e2e.LastLines(log, 40))
	}
	servePodWeb(t, p)
	p.stop()
	p.remove()
	next, _ := f.WaitReady(t, warm.Id)
	factoryProcess := fmt.Sprintf("process %d:", f.Cmd.Process.Pid)
	waitNothingLeft(t, s, func(l string) bool {
		return strings.Contains(l, next.Id) || strings.HasPrefix(l, factoryProcess)
	})
	if e2e.Alive(int(warm.Pid)) {
		t.Errorf("the claimed shim %d still runs after its pod's removal", warm.Pid)
	}
}

// podStartLine is the hull_sandbox_start line of pod p in metrics.
func podStartLine(metrics string, p *pod) string {
	for _, l := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(l, "hull_sandbox_start{") && strings.Contains(l, `pod_uid="`+p.config.Metadata.Uid+`"`) {
			return l
		}
	}
	return ""
}

// servePodWeb runs a web server container in p: exec in it sees the pod's
// hostname and IP, its output reaches the CRI log, and the host fetches
// its page at the pod's IP. The container is stopped and removed after.
func servePodWeb(t *testing.T, p *pod) {
	t.Helper()
	web := containerConfig("web", untilTerm(
		`mkdir -p /www && printf '`+page+`' > /www/index.html; httpd -f -p 8080 -h /www & echo serving on 8080`)...)
	id := p.run(web)
	if cs := p.containerStatus(id); cs.State != runtime.ContainerState_CONTAINER_RUNNING {
		t.Errorf("container: %v, want CONTAINER_RUNNING", cs.State)
	}
	if r := p.execSync(id, 10, "hostname"); r.ExitCode != 0 || string(r.Stdout) != p.config.Hostname+"\n" {
		t.Errorf("ExecSync hostname: exit %d stdout %q stderr %q, want %q", r.ExitCode, r.Stdout, r.Stderr, p.config.Hostname)
	}
	if r := p.execSync(id, 10, "ip", "-4", "-o", "addr", "show"); !strings.Contains(string(r.Stdout), " "+p.ip+"/") {
		t.Errorf("ExecSync ip addr: %q lacks the pod IP %s", r.Stdout, p.ip)
	}
	waitFor(t, 30*time.Second, "the container's output in "+p.logPath(web), func() bool {
		out, _ := criLog(p.logPath(web), "stdout")
		return strings.Contains(out, "serving on 8080\n")
	})
	if body, err := httpGet(fmt.Sprintf("http://%s:8080/", p.ip), time.Minute); err != nil {
		t.Errorf("from the host: %v", err)
	} else if body != page {
		t.Errorf("from the host: got %q, want %q", body, page)
	}
	p.stopContainer(id, 30)
	p.removeContainer(id)
}

// waitNothingLeft waits up to 30 seconds for the session's leftovers, but
// those keep says are expected, to be gone.
func waitNothingLeft(t *testing.T, s *session, keep func(string) bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		var left []string
		for _, l := range s.leftovers() {
			if !keep(l) {
				left = append(left, l)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pod left:\n  %s", strings.Join(left, "\n  "))
		}
	}
}
