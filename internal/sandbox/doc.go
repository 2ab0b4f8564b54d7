// Package sandbox is hull's core: a Sandbox is one VM with its agent, and
// (next) the containers and processes inside it. It drives the VM through the
// hypervisor contract and the guest through the agent client, and knows no
// driver: the caller hands it a constructor for the VM.
//
// Start runs the boot as an ordered list of named steps; each step that
// acquires something pushes its undo on a cleanup stack, and a failed start
// unwinds the stack so that nothing is left behind: no hypervisor process,
// no cgroup, no state directory.
package sandbox
