package cri

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// Timeouts of the CRI calls: VMs boot under TCG on a shared machine here,
// so the calls that start or stop one get minutes.
const (
	slowCall  = 3 * time.Minute
	quickCall = 30 * time.Second
)

// dnsServer is the pods' name server: only written to resolv.conf, never
// asked.
const dnsServer = "198.19.255.53"

// session is one case: a daemon, a handler, and the traces of the case's
// pods it must find gone at the end.
type session struct {
	t testing.TB
	d *daemon
	h handler
	// taps are the host's tap devices before the case.
	taps map[string]bool
	// netns are the network namespaces of the case's pods.
	netns []string
}

// begin starts a case. At its end, after the pods the case left have been
// removed, it checks that nothing is left.
func (d *daemon) begin(t testing.TB, h handler) *session {
	s := d.session(t, h)
	// Registered before any pod's, so it runs after their removal.
	t.Cleanup(s.checkClean)
	return s
}

// session starts a session whose user calls checkClean itself.
func (d *daemon) session(t testing.TB, h handler) *session {
	h.need(t)
	return &session{t: t, d: d, h: h, taps: tapDevices()}
}

// ctx returns a context for one call.
func (s *session) ctx(limit time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), limit)
}

// fail ends the case with a call's error and what the daemon logged
// during the call.
func (s *session) fail(logFrom int64, format string, args ...any) {
	s.t.Helper()
	s.t.Fatalf("%s\ncontainerd log during the call:\n%s", fmt.Sprintf(format, args...), e2e.LastLines(s.d.logSince(logFrom), 60))
}

// podConfig is a pod's configuration as the kubelet would write it for
// its cgroupfs driver: metadata, hostname, log directory, DNS, a cgroup
// parent, and the network namespace shared by the pod's containers.
func (s *session) podConfig(name string) *runtime.PodSandboxConfig {
	uid := fmt.Sprintf("%s-%d", name, time.Now().UnixNano())
	logDir := filepath.Join(s.d.dir, "pods", "hull-e2e_"+name+"_"+uid)
	if err := os.MkdirAll(logDir, 0o750); err != nil {
		s.t.Fatal(err)
	}
	return &runtime.PodSandboxConfig{
		Metadata:     &runtime.PodSandboxMetadata{Name: name, Uid: uid, Namespace: "hull-e2e"},
		Hostname:     name,
		LogDirectory: logDir,
		DnsConfig: &runtime.DNSConfig{
			Servers:  []string{dnsServer},
			Searches: []string{"hull-e2e.svc.cluster.local"},
			Options:  []string{"ndots:5"},
		},
		Labels:      map[string]string{"app": name},
		Annotations: map[string]string{"hull.test/case": s.t.Name()},
		Linux: &runtime.LinuxPodSandboxConfig{
			CgroupParent: filepath.Join(s.d.cgroupParent, "pod"+uid),
			SecurityContext: &runtime.LinuxSandboxSecurityContext{
				NamespaceOptions: podNamespaces(),
			},
		},
	}
}

func podNamespaces() *runtime.NamespaceOption {
	return &runtime.NamespaceOption{
		Network: runtime.NamespaceMode_POD,
		Pid:     runtime.NamespaceMode_CONTAINER,
		Ipc:     runtime.NamespaceMode_POD,
	}
}

// containerConfig is a busybox container running cmd, logging to
// <name>.log in the pod's log directory.
func containerConfig(name string, cmd ...string) *runtime.ContainerConfig {
	return &runtime.ContainerConfig{
		Metadata: &runtime.ContainerMetadata{Name: name},
		Image:    &runtime.ImageSpec{Image: busyboxImage},
		Command:  cmd,
		LogPath:  name + ".log",
		Linux: &runtime.LinuxContainerConfig{
			SecurityContext: &runtime.LinuxContainerSecurityContext{NamespaceOptions: podNamespaces()},
		},
	}
}

// untilTerm is a shell command that runs script, then sleeps until SIGTERM
// and exits 0: a container that stops at once and cleanly.
func untilTerm(script string) []string {
	return []string{"sh", "-c", `trap 'exit 0' TERM; ` + script + `; while :; do sleep 3600 & wait $!; done`}
}

// pod is a running pod sandbox.
type pod struct {
	s      *session
	id     string
	config *runtime.PodSandboxConfig
	// ip is the pod's IP (PodSandboxStatus.network.ip) and netns its
	// network namespace.
	ip, netns string
}

// waitPool waits, in the VM factory's cache mode, until the factory's pool
// is full again. A case starts with a full pool (e2e.Factory.BeginCase);
// one that starts more pods, one after another, than the pool holds calls
// it before each pod past the pool's size, so that every claim finds a
// warm VM and a miss stays an error. Other modes have nothing to wait for.
func (s *session) waitPool() {
	s.t.Helper()
	if s.h.vm {
		s.d.factory.WaitFull(s.t)
	}
}

// runPod runs a pod sandbox with the session's handler. The case's end
// removes it if the case did not.
func (s *session) runPod(name string) *pod {
	s.t.Helper()
	return s.runPodWith(s.podConfig(name))
}

// runPodWith runs a pod sandbox of the given configuration.
func (s *session) runPodWith(config *runtime.PodSandboxConfig) *pod {
	s.t.Helper()
	name := config.GetMetadata().GetName()
	p := &pod{s: s, config: config}
	id, err := s.runPodSandbox(p.config, s.h.name)
	if err != nil {
		s.fail(id.logFrom, "RunPodSandbox %s with handler %s: %v", name, s.h.name, err)
	}
	p.id = id.id
	s.t.Cleanup(func() { s.d.forgetPod(s.t, p.id) })
	st, info := p.status()
	if st.State != runtime.PodSandboxState_SANDBOX_READY {
		s.t.Fatalf("pod %s: state %v, want SANDBOX_READY", name, st.State)
	}
	p.ip = st.GetNetwork().GetIp()
	p.netns = info.netns()
	if p.netns != "" {
		s.netns = append(s.netns, p.netns)
	}
	s.t.Logf("pod %s: id %s, ip %s, netns %s", name, p.id, p.ip, p.netns)
	return p
}

type started struct {
	id      string
	logFrom int64
}

// runPodSandbox is the bare call, for cases that expect it to fail.
func (s *session) runPodSandbox(config *runtime.PodSandboxConfig, handler string) (started, error) {
	from := s.d.logSize()
	ctx, cancel := s.ctx(slowCall)
	defer cancel()
	resp, err := s.d.rt.RunPodSandbox(ctx, &runtime.RunPodSandboxRequest{Config: config, RuntimeHandler: handler})
	return started{id: resp.GetPodSandboxId(), logFrom: from}, err
}

// sandboxInfo is the part of the CRI plugin's verbose sandbox status the
// suite reads (containerd 1.6 and 2.x agree on it).
type sandboxInfo struct {
	// Pid is the PID the runtime reported for the sandbox container.
	Pid            int    `json:"pid"`
	RuntimeHandler string `json:"runtimeHandler"`
	RuntimeSpec    struct {
		Linux struct {
			Namespaces []struct{ Type, Path string }
		}
	} `json:"runtimeSpec"`
}

func (i sandboxInfo) netns() string {
	for _, ns := range i.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" {
			return ns.Path
		}
	}
	return ""
}

// status is PodSandboxStatus, verbose.
func (p *pod) status() (*runtime.PodSandboxStatus, sandboxInfo) {
	p.s.t.Helper()
	ctx, cancel := p.s.ctx(quickCall)
	defer cancel()
	resp, err := p.s.d.rt.PodSandboxStatus(ctx, &runtime.PodSandboxStatusRequest{PodSandboxId: p.id, Verbose: true})
	if err != nil {
		p.s.t.Fatalf("PodSandboxStatus %s: %v", p.id, err)
	}
	var info sandboxInfo
	if raw := resp.Info["info"]; raw != "" {
		if err := json.Unmarshal([]byte(raw), &info); err != nil {
			p.s.t.Fatalf("PodSandboxStatus %s: verbose info: %v", p.id, err)
		}
	}
	return resp.Status, info
}

// createContainer creates a container in the pod and returns its id.
func (p *pod) createContainer(config *runtime.ContainerConfig) string {
	p.s.t.Helper()
	id, from, err := p.tryCreateContainer(config)
	if err != nil {
		p.s.fail(from, "CreateContainer %s: %v", config.Metadata.Name, err)
	}
	return id
}

func (p *pod) tryCreateContainer(config *runtime.ContainerConfig) (string, int64, error) {
	from := p.s.d.logSize()
	ctx, cancel := p.s.ctx(slowCall)
	defer cancel()
	resp, err := p.s.d.rt.CreateContainer(ctx, &runtime.CreateContainerRequest{PodSandboxId: p.id, Config: config, SandboxConfig: p.config})
	return resp.GetContainerId(), from, err
}

// startContainer starts a created container.
func (p *pod) startContainer(id string) {
	p.s.t.Helper()
	if from, err := p.tryStartContainer(id); err != nil {
		p.s.fail(from, "StartContainer %s: %v", id, err)
	}
}

func (p *pod) tryStartContainer(id string) (int64, error) {
	from := p.s.d.logSize()
	ctx, cancel := p.s.ctx(slowCall)
	defer cancel()
	_, err := p.s.d.rt.StartContainer(ctx, &runtime.StartContainerRequest{ContainerId: id})
	return from, err
}

// run creates and starts a container and returns its id.
func (p *pod) run(config *runtime.ContainerConfig) string {
	p.s.t.Helper()
	id := p.createContainer(config)
	p.startContainer(id)
	return id
}

// containerStatus is ContainerStatus.
func (p *pod) containerStatus(id string) *runtime.ContainerStatus {
	p.s.t.Helper()
	ctx, cancel := p.s.ctx(quickCall)
	defer cancel()
	resp, err := p.s.d.rt.ContainerStatus(ctx, &runtime.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		p.s.t.Fatalf("ContainerStatus %s: %v", id, err)
	}
	return resp.Status
}

// execSync runs cmd in a container, with a timeout in seconds.
func (p *pod) execSync(id string, timeout int64, cmd ...string) *runtime.ExecSyncResponse {
	p.s.t.Helper()
	from := p.s.d.logSize()
	ctx, cancel := p.s.ctx(time.Duration(timeout)*time.Second + quickCall)
	defer cancel()
	resp, err := p.s.d.rt.ExecSync(ctx, &runtime.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: timeout})
	if err != nil {
		p.s.fail(from, "ExecSync %q in %s: %v", cmd, id, err)
	}
	return resp
}

// stopContainer stops a container, giving it timeout seconds after
// SIGTERM.
func (p *pod) stopContainer(id string, timeout int64) {
	p.s.t.Helper()
	from := p.s.d.logSize()
	ctx, cancel := p.s.ctx(time.Duration(timeout)*time.Second + slowCall)
	defer cancel()
	if _, err := p.s.d.rt.StopContainer(ctx, &runtime.StopContainerRequest{ContainerId: id, Timeout: timeout}); err != nil {
		p.s.fail(from, "StopContainer %s: %v", id, err)
	}
}

// removeContainer removes a container.
func (p *pod) removeContainer(id string) {
	p.s.t.Helper()
	from := p.s.d.logSize()
	ctx, cancel := p.s.ctx(slowCall)
	defer cancel()
	if _, err := p.s.d.rt.RemoveContainer(ctx, &runtime.RemoveContainerRequest{ContainerId: id}); err != nil {
		p.s.fail(from, "RemoveContainer %s: %v", id, err)
	}
}

// deleteGracefully deletes the pod as the kubelet does: each of ids
// stopped (30 s after SIGTERM), which must end it with exit 0, and
// removed; then the pod stopped, which must leave it not ready, and
// removed.
func (p *pod) deleteGracefully(ids ...string) {
	t := p.s.t
	t.Helper()
	for _, id := range ids {
		p.stopContainer(id, 30)
		if st := p.containerStatus(id); st.State != runtime.ContainerState_CONTAINER_EXITED || st.ExitCode != 0 {
			t.Errorf("after StopContainer, %s: %v exit %d (%s), want CONTAINER_EXITED exit 0", st.Metadata.GetName(), st.State, st.ExitCode, st.Reason)
		}
		p.removeContainer(id)
	}
	p.stop()
	if st, _ := p.status(); st.State != runtime.PodSandboxState_SANDBOX_NOTREADY {
		t.Errorf("after StopPodSandbox: %v, want SANDBOX_NOTREADY", st.State)
	}
	p.remove()
}

// stop is StopPodSandbox.
func (p *pod) stop() {
	p.s.t.Helper()
	from := p.s.d.logSize()
	ctx, cancel := p.s.ctx(slowCall)
	defer cancel()
	if _, err := p.s.d.rt.StopPodSandbox(ctx, &runtime.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
		p.s.fail(from, "StopPodSandbox %s: %v", p.id, err)
	}
}

// remove is RemovePodSandbox.
func (p *pod) remove() {
	p.s.t.Helper()
	from := p.s.d.logSize()
	ctx, cancel := p.s.ctx(slowCall)
	defer cancel()
	if _, err := p.s.d.rt.RemovePodSandbox(ctx, &runtime.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil {
		p.s.fail(from, "RemovePodSandbox %s: %v", p.id, err)
	}
}

// logPath is a container's CRI log file.
func (p *pod) logPath(config *runtime.ContainerConfig) string {
	return filepath.Join(p.config.LogDirectory, config.LogPath)
}

// criLog reads a CRI log file (lines "<time> <stream> <P|F> <text>") and
// returns the text of one stream, partial lines joined.
func criLog(path, stream string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }() // read-only
	var b strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.SplitN(sc.Text(), " ", 4)
		if len(fields) < 3 {
			return "", fmt.Errorf("%s: malformed CRI log line %q", path, sc.Text())
		}
		if _, err := time.Parse(time.RFC3339Nano, fields[0]); err != nil {
			return "", fmt.Errorf("%s: line %q: %w", path, sc.Text(), err)
		}
		if fields[1] != stream {
			continue
		}
		if len(fields) == 4 {
			b.WriteString(fields[3])
		}
		if fields[2] == "F" {
			b.WriteString("\n")
		}
	}
	return b.String(), sc.Err()
}

// checkClean fails the case when it left anything, after giving shims and
// VMs a moment to go.
func (s *session) checkClean() {
	s.t.Helper()
	e2e.CheckClean(s.t, 30*time.Second, s.leftovers)
}

// leftovers lists what of the case's pods is still there. The VM factory
// and the warm VMs of its pool are not the pods' (e2e.Factory.Filter).
func (s *session) leftovers() []string {
	return s.d.factory.Filter(s.allLeftovers)
}

func (s *session) allLeftovers() []string {
	var left []string
	ctx, cancel := s.ctx(quickCall)
	defer cancel()
	if pods, err := s.d.rt.ListPodSandbox(ctx, &runtime.ListPodSandboxRequest{}); err != nil {
		left = append(left, fmt.Sprintf("ListPodSandbox: %v", err))
	} else {
		for _, p := range pods.Items {
			left = append(left, fmt.Sprintf("pod %s (%s) %v", p.Id, p.Metadata.GetName(), p.State))
		}
	}
	if cs, err := s.d.rt.ListContainers(ctx, &runtime.ListContainersRequest{}); err != nil {
		left = append(left, fmt.Sprintf("ListContainers: %v", err))
	} else {
		for _, c := range cs.Containers {
			left = append(left, fmt.Sprintf("container %s (%s) %v", c.Id, c.Metadata.GetName(), c.State))
		}
	}
	for _, p := range s.d.processes() {
		left = append(left, p.String())
	}
	for _, dir := range []string{s.d.dir, s.d.stateRoot} {
		ms, err := e2e.MountsUnder(dir)
		if err != nil {
			left = append(left, err.Error())
		}
		for _, m := range ms {
			left = append(left, "mount "+m)
		}
	}
	if des, err := os.ReadDir(s.d.stateRoot); err == nil {
		for _, de := range des {
			if p := filepath.Join(s.d.stateRoot, de.Name()); !sandbox.IsNodeState(de.Name()) {
				left = append(left, "hull state "+p)
			}
		}
	}
	for _, ns := range s.netns {
		if _, err := os.Lstat(ns); err == nil {
			left = append(left, "network namespace "+ns)
		}
	}
	for tap := range tapDevices() {
		if !s.taps[tap] {
			left = append(left, "tap device "+tap)
		}
	}
	left = append(left, s.d.net.leftovers()...)
	cgs, err := containerCgroups(s.d.cgroupParent)
	if err != nil {
		left = append(left, err.Error())
	}
	for _, cg := range cgs {
		left = append(left, "cgroup "+cg)
	}
	return left
}

func mustAddr(t testing.TB, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
