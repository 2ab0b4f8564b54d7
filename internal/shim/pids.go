package shim

import (
	"github.com/hull-runtime/hull/internal/sandbox"
)

// The PIDs this shim reports to containerd (Create, Start, State, Exec
// start, Delete, Connect and the task events) are host PIDs: every task of
// the pod reports the PID of the pod's VMM (QEMU), as Kata Containers does.
// A process's PID in the guest names an unrelated process on the host (a
// kernel thread, another user's program), which tools that act on the
// reported PID (`ctr task ls`, kill, nsenter, CNI for /proc/<pid>/ns/net)
// must never see. The VMM is the host process that holds the task, and
// what the pod's resources are charged to.
//
// containerd builds the namespace paths of a pod's other containers from
// the PID reported for the sandbox container: /proc/<vmm pid>/ns/ipc and so
// on. guestNsPid maps exactly that PID to the sandbox container's init in
// the guest; a path with any other PID is refused. Since every task
// reports the same PID, a path names the sandbox container's namespaces
// even where containerd meant another container's (the PID namespace of a
// target container, for an ephemeral debug container): those join the
// sandbox container's.
//
// Pids (ctr task ps) lists guest PIDs, the only way to tell a container's
// processes apart; they are documented as such and name nothing on the
// host.

// hostPid is the PID reported for a process the host created (an init
// after Create, an exec after its Start): the VMM's. What the guest says a
// process's PID is plays no part, so a guest that reports 0, 1 or a host
// daemon's PID changes nothing containerd is told.
func (s *service) hostPid() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.vmPid
}

// pidOf is hostPid for p, or 0 while p is an exec not started: the host's
// own record (p.prepared), not the guest, tells which.
func (s *service) pidOf(p *proc) uint32 {
	if !p.prepared() {
		return 0
	}
	return s.hostPid()
}

// guestNsPid maps the PID reported for the pod's sandbox container, the
// VMM's, to that container's init PID in the guest.
func (s *service) guestNsPid(pid uint32) (uint32, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if pid == 0 || pid != s.vmPid {
		return 0, false
	}
	c := s.containers[s.sandboxID]
	if c == nil {
		return 0, false
	}
	guest := c.init.getPid()
	return guest, guest != 0
}

// vmPid is the host PID of sb's VMM, 0 when it has none.
func vmPid(sb *sandbox.Sandbox) uint32 {
	pid := sb.VM().Describe().PID
	if pid <= 0 || pid > 1<<22 {
		return 0
	}
	return uint32(pid)
}
