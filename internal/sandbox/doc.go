// Package sandbox is hull's core: a Sandbox is one VM with its agent, the
// shared storage that virtiofsd serves to it, and the containers and
// processes inside it. It drives the VM through the hypervisor contract and
// the guest through the agent client, and knows no driver: the caller hands
// it a constructor for the VM.
//
// Start runs the boot as an ordered list of named steps (state directory,
// shared storage, host cgroup, virtiofsd, VM, agent connection, clock,
// guest sandbox); the host cgroup (cgroup.go) holds virtiofsd and the VMM
// with limits that follow the VM's size, so the VM is charged to its pod;
// each step that acquires something pushes its undo on a cleanup stack, and
// a failed start unwinds the stack so that nothing is left behind: no
// hypervisor or virtiofsd process, no mount, no cgroup, no state directory.
// Cleanup does the same for a sandbox whose runtime died.
//
// Containers (created → running ⇄ paused → stopped → deleted) and processes
// (created → running → exited) have explicit states. Their stdio travels in
// stdio streams of the agent connection, opened before the call that names
// them; a process's Wait returns once the agent reported its exit and its
// output has been copied to the host's writers. One background loop per
// sandbox reports the guest's OOM kills (OOMEvents), and one per process
// waits for its exit; they live on the sandbox's own context, which Stop
// cancels.
package sandbox
