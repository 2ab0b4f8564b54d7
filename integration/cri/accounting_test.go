package cri

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	factoryapi "github.com/hull-runtime/hull/api/factory/v1"
	"github.com/hull-runtime/hull/integration/internal/e2e"
)

// podAccounting checks that a pod's VM is charged to the pod: QEMU and
// virtiofsd, every thread, live in the sandbox container's cgroup below
// the pod's cgroup (as containerd sets it: <cgroup parent>/<sandbox id>),
// whose memory limit is the VM's memory (base 512 MiB and the pod's 256
// MiB) plus the default 256 MiB overhead, and follows the VM when it grows
// by hotplug; that cgroup goes with the pod, the pod's own stays. A pod asking for more than the VM size cap is
// refused with a clear error and leaves nothing, and with a VM factory
// claims no warm VM.
func podAccounting(t *testing.T, s *session) {
	config := s.podConfig("charged")
	config.Linux.Resources = &runtime.LinuxContainerResources{MemoryLimitInBytes: sizingMemory, CpuPeriod: sizingCPUPeriod, CpuQuota: sizingCPUPeriod}
	p := s.runPodWith(config)
	want := config.Linux.CgroupParent + "/" + p.id

	// The pod's VMM is the one the CRI reports (a warm VM's command line
	// names the warm sandbox, not the pod).
	_, info := p.status()
	var qemu, virtiofsd []int
	for _, pr := range s.d.processes() {
		switch comm := processComm(pr.Pid); {
		case comm == "qemu-system-x86" && pr.Pid == info.Pid:
			qemu = append(qemu, pr.Pid)
		case comm == "virtiofsd":
			virtiofsd = append(virtiofsd, pr.Pid)
		}
	}
	if len(qemu) != 1 || len(virtiofsd) == 0 {
		t.Fatalf("found qemu %v and virtiofsd %v, want one QEMU and virtiofsd", qemu, virtiofsd)
	}
	pids := append(qemu, virtiofsd...)
	for _, pid := range pids {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
		for _, task := range tasks {
			if got := memoryCgroupOf(t, task); got != want {
				t.Errorf("%s: memory cgroup %q, want %q", task, got, want)
			}
		}
	}
	limitFile := filepath.Join("/sys/fs/cgroup/memory", want, "memory.limit_in_bytes")
	b, err := os.ReadFile(limitFile)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); got != (512+256+256)<<20 {
		t.Errorf("%s = %d, want 1 GiB (768 MiB of VM, 256 MiB overhead)", limitFile, got)
	}
	p.stop()
	p.remove()
	if _, err := os.Stat(filepath.Join("/sys/fs/cgroup/memory", want)); err == nil {
		t.Errorf("sandbox cgroup %s left after the pod", want)
	}
	if _, err := os.Stat(filepath.Join("/sys/fs/cgroup/memory", config.Linux.CgroupParent)); err != nil {
		t.Errorf("the pod's cgroup %s, the kubelet's, was removed: %v", config.Linux.CgroupParent, err)
	}

	// The limit follows the VM when it grows by hotplug for a container
	// with limits.
	config = s.podConfig("grown-charged")
	p = s.runPodWith(config)
	c := containerConfig("limited", untilTerm("true")...)
	c.Linux.Resources = &runtime.LinuxContainerResources{MemoryLimitInBytes: sizingMemory, CpuPeriod: sizingCPUPeriod, CpuQuota: sizingCPUPeriod}
	id := p.run(c)
	checkGuestSize(t, p, id)
	dir := filepath.Join("/sys/fs/cgroup/memory", config.Linux.CgroupParent, p.id)
	for _, f := range []string{"memory.limit_in_bytes", "memory.memsw.limit_in_bytes"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); got < (512+256+256)<<20 {
			t.Errorf("after growing to 768 MiB, %s = %d, want at least 1 GiB", f, got)
		}
	}
	p.stop()
	p.remove()

	// A third pod, beyond the cap: its create refuses it and, with a VM
	// factory, its shim claims no warm VM for it (a warm VM cannot grow
	// to its size): the factory's hits and misses stay and its pool
	// stays full, with nothing refilling.
	s.waitPool()
	before := s.cacheStatus()
	big := s.podConfig("too-big")
	big.Linux.Resources = &runtime.LinuxContainerResources{MemoryLimitInBytes: 1 << 40}
	if st, err := s.runPodSandbox(big, s.h.name); err == nil || !strings.Contains(err.Error(), "beyond the cap") {
		t.Errorf("a pod of 1 TiB: id %q, err %v; want a refusal naming the cap", st.id, err)
	}
	if after := s.cacheStatus(); before != nil && after != nil {
		if after.Hits != before.Hits || after.Misses != before.Misses || after.Ready != before.Ready || after.Booting != 0 {
			t.Errorf("factory around a pod too big for a warm VM: before %d hits, %d misses, %d ready; after %d hits, %d misses, %d ready, %d booting; want no claim",
				before.Hits, before.Misses, before.Ready, after.Hits, after.Misses, after.Ready, after.Booting)
		} else {
			t.Logf("factory around a pod too big for a warm VM: %d hits, %d misses, %d ready before and after", after.Hits, after.Misses, after.Ready)
		}
	}
}

// cacheStatus is the status of the session's ModeCache VM factory; nil
// without one.
func (s *session) cacheStatus() *factoryapi.StatusResponse {
	s.t.Helper()
	f := s.d.factory
	if !s.h.vm || f == nil || f.Mode != e2e.ModeCache {
		return nil
	}
	st, err := f.Status()
	if err != nil {
		s.t.Fatalf("factory status: %v", err)
	}
	return st
}

// processComm is a process's command name.
func processComm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// memoryCgroupOf reads a task's cgroup in the v1 memory hierarchy.
func memoryCgroupOf(t *testing.T, task string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(task, "cgroup"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.SplitN(l, ":", 3); len(f) == 3 && f[1] == "memory" {
			return f[2]
		}
	}
	return ""
}
