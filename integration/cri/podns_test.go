package cri

import (
	"strings"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// podNamespacesCase runs a pod that shares its process namespace
// (shareProcessNamespace), with a hostname and IPC sysctls, and two
// containers: they meet the pod sandbox's process as PID 1 of the pod's
// PID namespace, each other's processes, one IPC namespace that holds the
// pod's sysctls, and the pod's hostname. ContainerStats and
// ListPodSandboxStats answer; the pod stops and goes.
func podNamespacesCase(t *testing.T, s *session) {
	config := s.podConfig("podns")
	config.Linux.SecurityContext.NamespaceOptions.Pid = runtime.NamespaceMode_POD
	config.Linux.Sysctls = map[string]string{"kernel.shmmni": "2345", "kernel.shm_rmid_forced": "1"}
	p := s.runPodWith(config)
	shared := func(c *runtime.ContainerConfig) *runtime.ContainerConfig {
		c.Linux.SecurityContext.NamespaceOptions.Pid = runtime.NamespaceMode_POD
		return c
	}
	a := p.run(shared(containerConfig("a", untilTerm("echo a up")...)))
	b := p.run(shared(containerConfig("b", untilTerm("sleep 7777 & echo b up")...)))

	out := func(id string, cmd ...string) string {
		t.Helper()
		r := p.execSync(id, 20, cmd...)
		if r.ExitCode != 0 {
			t.Fatalf("ExecSync %q in %s: exit %d, stdout %q, stderr %q", cmd, id, r.ExitCode, r.Stdout, r.Stderr)
		}
		return string(r.Stdout)
	}
	// PID 1 of the pod's PID namespace is the sandbox's process: under
	// runc the pause image's command (the suite's image runs a shell
	// loop), under hull the light process's waiting stage (hull-pause,
	// bound at /pause).
	init := out(a, "cat", "/proc/1/cmdline")
	t.Logf("PID 1 of the pod as a container sees it: %q; its status:\n%s", init, out(a, "cat", "/proc/1/status"))
	if s.h.vm && init != "/pause\x00" {
		t.Errorf("PID 1 of the pod: %q, want the light process's /pause", init)
	}
	if ps := out(a, "ps", "-o", "pid,args"); !strings.Contains(ps, "sleep 7777") {
		t.Errorf("container a does not see container b's process:\n%s", ps)
	}
	// One IPC namespace, the sandbox's: the pod's sysctls are in it.
	if ipcA, ipcB := out(a, "readlink", "/proc/self/ns/ipc"), out(b, "readlink", "/proc/self/ns/ipc"); ipcA != ipcB {
		t.Errorf("IPC namespaces %q and %q, want one", ipcA, ipcB)
	}
	for _, id := range []string{a, b} {
		if got := out(id, "cat", "/proc/sys/kernel/shmmni", "/proc/sys/kernel/shm_rmid_forced"); got != "2345\n1\n" {
			t.Errorf("IPC sysctls in %s: %q, want the pod's 2345 and 1", id, got)
		}
		if got := out(id, "hostname"); got != config.Hostname+"\n" {
			t.Errorf("hostname in %s: %q, want %q", id, got, config.Hostname)
		}
	}

	ctx, cancel := s.ctx(quickCall)
	defer cancel()
	if r, err := s.d.rt.ContainerStats(ctx, &runtime.ContainerStatsRequest{ContainerId: a}); err != nil || r.GetStats().GetMemory() == nil {
		t.Errorf("ContainerStats of a: %v, %v", r, err)
	}
	ps, err := s.d.rt.ListPodSandboxStats(ctx, &runtime.ListPodSandboxStatsRequest{Filter: &runtime.PodSandboxStatsFilter{Id: p.id}})
	switch {
	case err != nil && s.d.version == "1.6" && strings.Contains(err.Error(), "not implemented"):
		t.Logf("ListPodSandboxStats on containerd 1.6: %v", err)
	case err != nil:
		t.Errorf("ListPodSandboxStats: %v", err)
	case len(ps.GetStats()) != 1:
		t.Errorf("ListPodSandboxStats: %d pods, want 1", len(ps.GetStats()))
	default:
		t.Logf("pod stats: %v", ps.GetStats()[0].GetLinux().GetCpu())
	}

	// Each container leaves a sleep behind in the pod's PID namespace
	// (untilTerm's): its init's exit on SIGTERM ends it, and the stop
	// completes with the init's status.
	p.deleteGracefully(a, b)
}
