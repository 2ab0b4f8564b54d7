package cri

import (
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
	if err := syscall.Kill(vms[0].pid, syscall.SIGKILL); err != nil {
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
	if err := syscall.Kill(shims[0].pid, syscall.SIGKILL); err != nil {
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
