// Package qemu is hull's QEMU driver: it runs each VM as one
// qemu-system-x86_64 process and implements hypervisor.VM,
// hypervisor.Pauser, hypervisor.Resizer, hypervisor.NetworkAdder and
// hypervisor.Snapshotter (VM templates: template.go boots a VM whose RAM is
// a template file, saves its device state, and starts clones from it). It
// does not implement hypervisor.Hotplugger; AsHotplugger reports that as
// ErrNotImplemented.
//
// The driver is split by concern: options.go validates the configuration,
// cmdline.go builds the argv with typed option builders (golden files in
// testdata/), qmp.go is a small QMP client, process.go starts, watches and
// stops the process, cgroup.go places it in its cgroup, hotplug.go grows a
// running VM by CPU and memory hotplug, console.go copies the serial
// console into its bounded log and reads its tail, and host.go reads host
// facts (TSC frequency, QEMU version).
//
// The guest's serial console is untrusted output of any volume. QEMU writes
// it to a unix socket (serial.sock, server=on,wait=on: QEMU waits for the
// driver before it opens its monitor, so nothing is lost); one goroutine
// copies it through a fixed buffer into console.log, which child.LogFile
// rotates to console.log.1 at Options.ConsoleMax bytes. When the copy
// falls behind, QEMU's serial port stops taking bytes and the guest's
// console stalls: neither host memory nor the state directory grows with
// what the guest writes.
//
// Resize works on q35 only. When the config sets limits above the boot size
// the VM starts with room to grow (-smp N,maxcpus=M and -m N,slots=S,maxmem=M,
// maxmem rounded down to whole 128 MiB guest memory blocks); Resize then adds
// vCPUs with device_add in the free slots that query-hotpluggable-cpus lists,
// and memory as one pc-dimm per call over a memfd backend (shared like boot
// memory, for vhost-user), deleting the backend again when the DIMM is
// refused. The guest must bring both online (the agent does). microvm has no
// hotplug: its argv ignores the limits and Resize answers ErrNotImplemented.
//
// Start runs QEMU with -S in the cgroup the Config names (the sandbox's,
// with its limits), or in one of its own, <CgroupParent>/<VM ID>, when the
// Config names none (cgroup v1 in every mounted hierarchy, or v2 when
// unified; see package hostcgroup): started there on v2
// (CLONE_INTO_CGROUP), moved there with all its threads at once otherwise
// (child.StartIn). It connects to QMP and only then resumes the vCPUs, so the
// guest never runs outside its cgroup. The
// process gets SIGKILL from the kernel if the shim dies (Pdeathsig, forked
// from a thread that stays locked until QEMU is reaped; see launch), runs in
// its own process group, and is stopped with QMP quit, then SIGKILL.
//
// With Accel "auto" the driver uses KVM only when package kvm's probe says
// it runs a standard guest at native speed; otherwise it falls back to TCG
// and says so in Describe's warnings. Under TCG it passes the host TSC
// frequency to the guest (tsc_early_khz, tsc=reliable), without which the
// guest's TSC calibration is slow or, on microvm, hangs, and runs all vCPUs
// in one host thread (thread=single), because multi-vCPU guests hung now
// and then with a thread per vCPU.
//
// QEMU runs under its own seccomp filter (-sandbox, see sandboxOpt) and,
// with Options.RunAsUIDBase, drops root after start-up to a user ID leased
// for the VM alone (runas.go).
//
// State directory files: qmp.sock, serial.sock, qemu.pid, the agent
// socket for the serial transport when the config gives none (agent.sock),
// and console.log (with console.log.1 once it rotated). Stop removes all
// but the console log.
package qemu
