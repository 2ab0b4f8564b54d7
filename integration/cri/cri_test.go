package cri

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// TestCRI runs every case with each handler (runc first, to check the
// harness) on each containerd version, the hull pods' VMs booted or, with
// HULL_TEST_FACTORY set, from the VM factory (runCases).
func TestCRI(t *testing.T) {
	for _, version := range []string{"1.6", "2"} {
		t.Run("containerd-"+version, func(t *testing.T) { runCases(t, version, env.mode) })
	}
}

// factoryVMs is the suite's factory.vm_cache in cache mode: the most pods
// a case starts at once.
const factoryVMs = 2

// runCases runs the cases against a containerd of version whose hull pods
// get their VMs as mode says. With a factory, each hull case starts with
// the factory's pool full, each of its sandboxes must start from the
// factory but those the case's cold field names, and at the end the
// factory stops and leaves nothing.
func runCases(t *testing.T, version string, mode e2e.FactoryMode) {
	d, f := startModeDaemon(t, version, mode)
	tally := e2e.StartTally{}
	for _, h := range handlers {
		t.Run(h.name, func(t *testing.T) {
			for _, c := range cases {
				if c.vmOnly && !h.vm {
					// A property of VMs: runc has nothing to size.
					continue
				}
				t.Run(c.name, func(t *testing.T) {
					if h.vm {
						claims := f.BeginCase(t)
						from := d.logSize()
						// Registered first: runs after the case's pods
						// are gone and checked.
						t.Cleanup(func() { f.CheckStarts(t, d.logSince(from), c.cold, tally, claims) })
					}
					c.run(t, d.begin(t, h))
				})
			}
		})
	}
	f.CheckSuite(t, tally)
	f.Stop(t, d.stateRoot)
}

// startModeDaemon starts a daemon (startDaemon) whose hull shims take
// their VMs from a VM factory of mode (nil for e2e.ModeCold), started
// with the daemon's hull configuration and the suite's guest image.
func startModeDaemon(t *testing.T, version string, mode e2e.FactoryMode) (*daemon, *e2e.Factory) {
	t.Helper()
	if mode == e2e.ModeCold {
		return startDaemon(t, version), nil
	}
	hull.need(t)
	dir, err := os.MkdirTemp(env.workDir, "f")
	if err != nil {
		t.Fatal(err)
	}
	f := e2e.NewFactory(mode, dir, filepath.Base(dir), factoryVMs)
	d := startDaemonWith(t, version, daemonOptions{hullConfig: f.Config()})
	f.Start(t, factoryBinaries(t), d.hullConfigPath(), filepath.Join(env.binDir, hull.shim))
	d.factory = f
	return d, f
}

// sizedCold is why a pod sized at boot by its resources boots in template
// mode: the template is a VM of the configuration's default size.
var sizedCold = e2e.Cold{Pods: 1, Modes: []e2e.FactoryMode{e2e.ModeTemplate},
	Why: "the pod's resources size its VM at boot: a VM of another size than the template's"}

var cases = []struct {
	name   string
	run    func(*testing.T, *session)
	vmOnly bool
	// cold names the hull sandboxes of the case that cannot start from
	// a factory, and why.
	cold e2e.Cold
}{
	{name: "pod lifecycle", run: podLifecycle},
	{name: "pod namespaces", run: podNamespacesCase},
	{name: "unknown runtime handler", run: unknownHandler},
	{name: "missing image", run: missingImage},
	{name: "missing executable", run: missingExecutable},
	{name: "doc sample pod", run: docSamplePod, vmOnly: true},
	{name: "pod VM sizing", run: podSizing, vmOnly: true, cold: sizedCold},
	{name: "pod VM accounting", run: podAccounting, vmOnly: true, cold: sizedCold},
	{name: "pod VM killed", run: vmKilled, vmOnly: true},
	{name: "pod shim killed", run: shimKilled, vmOnly: true},
	{name: "containerd restarted", run: containerdRestarted, vmOnly: true},
	{name: "pod VM killed during stop", run: killedDuringStop("qemu-system"), vmOnly: true},
	{name: "pod shim killed during stop", run: killedDuringStop(hull.shim), vmOnly: true},
}

// page is what the web container serves.
const page = "hello from a hull-cri pod\n"

// podLifecycle is the kubelet's path through one pod with two containers:
// a web server and a client that reaches it over the pod's localhost,
// while the host reaches it at the pod's IP; then everything is stopped
// and removed, and nothing may be left.
func podLifecycle(t *testing.T, s *session) {
	p := s.runPod("web")
	if p.ip == "" {
		t.Fatal("PodSandboxStatus: no pod IP")
	}
	if s.h.vm {
		// The members join the namespaces of /proc/<this pid>: the host
		// process of the pod, its VMM, never a guest PID.
		_, info := p.status()
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", info.Pid))
		if err != nil || !strings.Contains(filepath.Base(exe), "qemu-system") {
			t.Errorf("the sandbox's reported pid %d is %q (%v), not the VMM", info.Pid, exe, err)
		}
	}
	if !s.d.net.subnet.Contains(mustAddr(t, p.ip)) {
		t.Errorf("pod IP %s outside the network's %s", p.ip, s.d.net.subnet)
	}
	pods := s.listPods(p.id)
	if len(pods) != 1 || pods[0].State != runtime.PodSandboxState_SANDBOX_READY || pods[0].RuntimeHandler != s.h.name {
		t.Errorf("ListPodSandbox: %v, want pod %s ready with handler %s", pods, p.id, s.h.name)
	}
	// httpd runs in the background of a shell that exits 0 on SIGTERM.
	web := containerConfig("web", untilTerm(
		`mkdir -p /www && printf '`+page+`' > /www/index.html; httpd -f -p 8080 -h /www & echo serving on 8080; echo to stderr >&2`)...)
	webID := p.run(web)
	client := containerConfig("client", untilTerm("echo client up")...)
	clientID := p.run(client)

	// One pod: one shim and, with hull, one VM.
	for _, proc := range s.d.processes() {
		t.Logf("pod process %d: %.200s", proc.Pid, proc.Cmdline)
	}
	if shims := s.processesOf(s.h.shim); len(shims) != 1 {
		t.Errorf("%d %s processes for the pod, want 1: %v", len(shims), s.h.shim, shims)
	}
	if s.h.vm {
		// The pod's VMM is the one the CRI reports (a warm VM's command
		// line names the warm sandbox, not the pod).
		vms := s.processesOf("qemu-system")
		if _, info := p.status(); len(vms) != 1 {
			t.Errorf("%d qemu processes for the pod, want 1: %v", len(vms), vms)
		} else if vms[0].Pid != info.Pid {
			t.Errorf("the pod's qemu %v is not the sandbox's VMM %d", vms[0], info.Pid)
		}
		t.Logf("links in the pod's network namespace:\n%s", netnsLinks(p.netns))
	}

	for _, id := range []string{webID, clientID} {
		if st := p.containerStatus(id); st.State != runtime.ContainerState_CONTAINER_RUNNING {
			t.Errorf("container %s: %v, want CONTAINER_RUNNING", st.Metadata.GetName(), st.State)
		}
	}

	// The client reaches the server on the pod's localhost.
	var got *runtime.ExecSyncResponse
	waitFor(t, time.Minute, "the web container to answer on 127.0.0.1:8080", func() bool {
		got = p.execSync(clientID, 10, "wget", "-qO-", "http://127.0.0.1:8080/")
		return got.ExitCode == 0
	})
	if string(got.Stdout) != page {
		t.Errorf("wget in the client: got %q, want %q", got.Stdout, page)
	}

	// The host reaches it at the pod's IP.
	if body, err := httpGet(fmt.Sprintf("http://%s:8080/", p.ip), time.Minute); err != nil {
		t.Errorf("from the host: %v", err)
	} else if body != page {
		t.Errorf("from the host: got %q, want %q", body, page)
	}

	// ExecSync: status and both streams; the pod's hostname, DNS and IP
	// as the containers see them.
	for _, c := range []struct {
		cmd                    []string
		code                   int32
		stdout, stderr, within string
	}{
		{cmd: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}, code: 3, stdout: "out\n", stderr: "err\n"},
		{cmd: []string{"hostname"}, stdout: p.config.Hostname + "\n"},
		{cmd: []string{"cat", "/etc/resolv.conf"}, within: "nameserver " + dnsServer},
		{cmd: []string{"cat", "/etc/resolv.conf"}, within: "search hull-e2e.svc.cluster.local"},
		{cmd: []string{"cat", "/etc/resolv.conf"}, within: "options ndots:5"},
		{cmd: []string{"ip", "-4", "-o", "addr", "show"}, within: " " + p.ip + "/"},
	} {
		r := p.execSync(webID, 10, c.cmd...)
		switch {
		case r.ExitCode != c.code:
			t.Errorf("ExecSync %q: exit %d, want %d (stdout %q stderr %q)", c.cmd, r.ExitCode, c.code, r.Stdout, r.Stderr)
		case c.within != "" && !strings.Contains(string(r.Stdout), c.within):
			t.Errorf("ExecSync %q: stdout %q lacks %q", c.cmd, r.Stdout, c.within)
		case c.within == "" && (string(r.Stdout) != c.stdout || string(r.Stderr) != c.stderr):
			t.Errorf("ExecSync %q: stdout %q stderr %q, want %q %q", c.cmd, r.Stdout, r.Stderr, c.stdout, c.stderr)
		}
	}

	// The container's output is in its CRI log file.
	st := p.containerStatus(webID)
	if st.LogPath != p.logPath(web) {
		t.Errorf("ContainerStatus: log path %q, want %q", st.LogPath, p.logPath(web))
	}
	var stdout, stderr string
	waitFor(t, 30*time.Second, "the web container's output in "+p.logPath(web), func() bool {
		stdout, _ = criLog(p.logPath(web), "stdout")
		stderr, _ = criLog(p.logPath(web), "stderr")
		return strings.Contains(stdout, "serving on 8080\n") && strings.Contains(stderr, "to stderr\n")
	})

	// Stop and remove, as the kubelet does when the pod is deleted.
	p.deleteGracefully(webID, clientID)
	ctx, cancel := s.ctx(quickCall)
	defer cancel()
	if _, err := s.d.rt.PodSandboxStatus(ctx, &runtime.PodSandboxStatusRequest{PodSandboxId: p.id}); !isNotFound(err) {
		t.Errorf("PodSandboxStatus after RemovePodSandbox: %v, want NotFound", err)
	}
}

// unknownHandler asks for a runtime handler the daemon does not have.
func unknownHandler(t *testing.T, s *session) {
	const name = "no-such-handler"
	started, err := s.runPodSandbox(s.podConfig("unknown-handler"), name)
	if err == nil {
		s.d.forgetPod(t, started.id)
		t.Fatalf("RunPodSandbox with handler %q succeeded", name)
	}
	t.Logf("RunPodSandbox with handler %q: %v", name, err)
	if !strings.Contains(err.Error(), name) {
		t.Errorf("RunPodSandbox with handler %q: %v, want an error naming the handler", name, err)
	}
}

// missingImage creates a container from an image the node does not have.
func missingImage(t *testing.T, s *session) {
	const image = "docker.io/hull/absent:latest"
	p := s.runPod("missing-image")
	config := containerConfig("absent", "true")
	config.Image.Image = image
	_, _, err := p.tryCreateContainer(config)
	if err == nil {
		t.Fatalf("CreateContainer with image %s succeeded", image)
	}
	t.Logf("CreateContainer with image %s: %v", image, err)
	if !strings.Contains(err.Error(), image) {
		t.Errorf("CreateContainer with image %s: %v, want an error naming the image", image, err)
	}
	p.stop()
	p.remove()
}

// missingExecutable starts a container whose program does not exist: the
// runtime refuses it at StartContainer.
func missingExecutable(t *testing.T, s *session) {
	const program = "/no/such/program"
	p := s.runPod("missing-exec")
	// A container beside it keeps the pod busy, as in a real pod.
	p.run(containerConfig("sidecar", untilTerm("true")...))
	id := p.createContainer(containerConfig("bad", program))
	from, err := p.tryStartContainer(id)
	if err == nil {
		t.Fatalf("StartContainer of %s succeeded", program)
	}
	t.Logf("StartContainer of %s: %v", program, err)
	if !strings.Contains(err.Error(), program) {
		t.Errorf("StartContainer of %s: %v, want an error naming the program\ncontainerd log:\n%s", program, err, e2e.LastLines(s.d.logSince(from), 40))
	}
	if st := p.containerStatus(id); st.State == runtime.ContainerState_CONTAINER_RUNNING {
		t.Errorf("after a failed StartContainer: %v", st.State)
	}
	p.removeContainer(id)
	p.stop()
	p.remove()
}

// listPods is ListPodSandbox filtered by id.
func (s *session) listPods(id string) []*runtime.PodSandbox {
	s.t.Helper()
	ctx, cancel := s.ctx(quickCall)
	defer cancel()
	resp, err := s.d.rt.ListPodSandbox(ctx, &runtime.ListPodSandboxRequest{Filter: &runtime.PodSandboxFilter{Id: id}})
	if err != nil {
		s.t.Fatalf("ListPodSandbox: %v", err)
	}
	return resp.Items
}

// processesOf lists the daemon's processes whose command line contains
// name.
func (s *session) processesOf(name string) []process {
	var ps []process
	for _, p := range s.d.processes() {
		if strings.Contains(p.Cmdline, name) {
			ps = append(ps, p)
		}
	}
	return ps
}

// httpGet fetches url from the host, retrying for up to limit.
func httpGet(url string, limit time.Duration) (string, error) {
	client := &http.Client{Timeout: 3 * time.Second}
	deadline := time.Now().Add(limit)
	for {
		body, err := fetch(client, url)
		if err == nil || time.Now().After(deadline) {
			return body, err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func fetch(client *http.Client, url string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), client.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer func() { _ = resp.Body.Close() }() // read to the end below
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}
