package cri

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// exitWait bounds how long the kubelet's view may take to see a container
// whose VM or shim died.
const exitWait = 60 * time.Second

// vmKilled kills the pod's QEMU: the containers must be seen exited, and
// stopping and removing the pod must leave nothing (tap, netns, virtiofsd,
// shim, mounts, state).
func vmKilled(t *testing.T, s *session) {
	p := s.runPod("vm-killed")
	id := p.run(containerConfig("victim", untilTerm("true")...))
	vms := s.processesOf("qemu-system")
	if len(vms) != 1 {
		t.Fatalf("%d qemu processes for the pod, want 1: %v", len(vms), vms)
	}
	if err := syscall.Kill(vms[0].Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitExited(t, p, id)
	p.stop()
	p.remove()
}

// shimKilled kills the pod's shim: containerd runs `shim delete`, which must
// clean up after it (VM, virtiofsd, the network mirror, mounts, state).
func shimKilled(t *testing.T, s *session) {
	p := s.runPod("shim-killed")
	id := p.run(containerConfig("victim", untilTerm("true")...))
	shims := s.processesOf(s.h.shim)
	if len(shims) != 1 {
		t.Fatalf("%d shims for the pod, want 1: %v", len(shims), shims)
	}
	if err := syscall.Kill(shims[0].Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitExited(t, p, id)
	p.stop()
	p.remove()
}

// waitExited waits until the CRI reports the container exited.
func waitExited(t *testing.T, p *pod, id string) {
	t.Helper()
	deadline := time.Now().Add(exitWait)
	for {
		st := p.containerStatus(id)
		if st.State == runtime.ContainerState_CONTAINER_EXITED {
			t.Logf("container %s exited: code %d, reason %q", id, st.ExitCode, st.Reason)
			if st.ExitCode == 0 {
				t.Errorf("container %s: exit code 0 after its runtime was killed", id)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s still %v %s after its runtime was killed", id, st.State, exitWait)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// containerdRestarted restarts containerd (SIGTERM, then the same command
// again) while two pods run, each with a container that wrote a file:
// after the restart the CRI lists both pods ready with their containers
// running, an exec in each reads the file back, and stopping and removing
// them leaves nothing (the session's leftover check). The shims and VMs
// live through the restart; the new containerd reconnects to them.
func containerdRestarted(t *testing.T, s *session) {
	type member struct {
		p  *pod
		id string
	}
	var ms []member
	for i := range 2 {
		p := s.runPod(fmt.Sprintf("restart-%d", i))
		id := p.run(containerConfig("app", untilTerm(fmt.Sprintf("echo before-%d > /tmp/f", i))...))
		ms = append(ms, member{p, id})
	}
	vms := s.processesOf("qemu-system")
	s.d.restart(t)
	if after := s.processesOf("qemu-system"); len(after) != len(vms) {
		t.Errorf("%d VMs before the restart, %d after", len(vms), len(after))
	}
	for i, m := range ms {
		if got := s.listPods(m.p.id); len(got) != 1 || got[0].State != runtime.PodSandboxState_SANDBOX_READY {
			t.Errorf("ListPodSandbox after the restart: %v, want pod %s ready", got, m.p.id)
		}
		if st := m.p.containerStatus(m.id); st.State != runtime.ContainerState_CONTAINER_RUNNING {
			t.Errorf("container %s after the restart: %v, want CONTAINER_RUNNING", m.id, st.State)
		}
		want := fmt.Sprintf("before-%d\n", i)
		if r := m.p.execSync(m.id, 30, "cat", "/tmp/f"); r.ExitCode != 0 || string(r.Stdout) != want {
			t.Errorf("ExecSync after the restart: exit %d stdout %q stderr %q, want %q", r.ExitCode, r.Stdout, r.Stderr, want)
		}
	}
	for _, m := range ms {
		m.p.stopContainer(m.id, 10)
		if st := m.p.containerStatus(m.id); st.State != runtime.ContainerState_CONTAINER_EXITED || st.ExitCode != 0 {
			t.Errorf("after StopContainer: %v exit %d, want CONTAINER_EXITED exit 0", st.State, st.ExitCode)
		}
		m.p.removeContainer(m.id)
		m.p.stop()
		m.p.remove()
	}
}

// killedDuringStop returns a case that kills the pod's process named
// victim (its command line contains it) during StopPodSandbox, at a
// point the test sees: the pod's guest is frozen (QEMU stopped with
// SIGSTOP) when the stop goes out, the stop has not ended 3 s later (it
// waits on the guest to kill the container), and then the victim gets
// SIGKILL and QEMU is let go. The stop must end within slowCall: done
// when the shim lives, else done or failed with a reason, and then a stop
// and removal retried as the kubelet does (removeLikeKubelet) end it;
// RemovePodSandbox then works and nothing is left (the session's leftover
// check: processes, mounts, state, netns, taps, CNI, cgroups).
func killedDuringStop(victim string) func(*testing.T, *session) {
	return func(t *testing.T, s *session) {
		p := s.runPod("stop-killed")
		p.run(containerConfig("app", untilTerm("true")...))
		vms := s.processesOf("qemu-system")
		targets := s.processesOf(victim)
		if len(vms) != 1 || len(targets) != 1 {
			t.Fatalf("the pod's processes: VMs %v, %s %v; want one each", vms, victim, targets)
		}
		vm := vms[0].Pid
		if err := syscall.Kill(vm, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = syscall.Kill(vm, syscall.SIGCONT) }() // it may be gone
		done := make(chan error, 1)
		start := time.Now()
		go func() {
			ctx, cancel := s.ctx(slowCall)
			defer cancel()
			_, err := s.d.rt.StopPodSandbox(ctx, &runtime.StopPodSandboxRequest{PodSandboxId: p.id})
			done <- err
		}()
		select {
		case err := <-done:
			t.Fatalf("StopPodSandbox ended (%v) while the guest was frozen", err)
		case <-time.After(3 * time.Second):
		}
		if err := syscall.Kill(targets[0].Pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = syscall.Kill(vm, syscall.SIGCONT) // it may be gone
		select {
		case err := <-done:
			t.Logf("StopPodSandbox after %s killed: %v, after %s", victim, err, time.Since(start).Round(time.Millisecond))
			if victim != s.h.shim {
				// The shim lives: it sees the containers gone with
				// their VM, and the stop is done.
				if err != nil {
					t.Errorf("StopPodSandbox failed although the pod's shim lives: %v", err)
				}
				p.stop()
				p.remove()
				return
			}
			if err != nil && strings.TrimSpace(err.Error()) == "" {
				t.Error("StopPodSandbox failed without saying why")
			}
		case <-time.After(slowCall + 10*time.Second):
			t.Fatalf("StopPodSandbox did not end within %s after %s was killed", slowCall, victim)
		}
		removeLikeKubelet(t, p, exitWait)
	}
}

// removeLikeKubelet stops and removes pod p, retrying both for up to limit
// as the kubelet's pod workers and garbage collector do: after the pod's
// shim died, containerd 2's CRI may report the stop done before it has
// handled the containers' exits, and refuse the removal ("container is
// still running") until it has.
func removeLikeKubelet(t *testing.T, p *pod, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ctx, cancel := p.s.ctx(slowCall)
		_, err := p.s.d.rt.StopPodSandbox(ctx, &runtime.StopPodSandboxRequest{PodSandboxId: p.id})
		if err == nil {
			_, err = p.s.d.rt.RemovePodSandbox(ctx, &runtime.RemovePodSandboxRequest{PodSandboxId: p.id})
		}
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s not stopped and removed within %s: %v", p.id, limit, err)
		}
		t.Logf("stopping and removing pod %s, again in 1s: %v", p.id, err)
		time.Sleep(time.Second)
	}
}
