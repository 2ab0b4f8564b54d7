// Package qemu is hull's QEMU driver: it runs each VM as one
// qemu-system-x86_64 process and implements hypervisor.VM and
// hypervisor.Pauser. It does not hotplug or snapshot yet; the As* helpers of
// package hypervisor report that as ErrNotImplemented.
//
// The driver is split by concern: options.go validates the configuration,
// cmdline.go builds the argv with typed option builders (golden files in
// testdata/), qmp.go is a small QMP client, process.go starts, watches and
// stops the process, cgroup.go places it in its cgroup, console.go reads the
// serial console log and host.go reads host facts (TSC frequency, QEMU
// version).
//
// Start runs QEMU with -S, moves it into <CgroupParent>/<VM ID> (cgroup v1
// in every mounted hierarchy, or v2 when unified), connects to QMP and only
// then resumes the vCPUs, so the guest never runs outside its cgroup. The
// process gets SIGKILL from the kernel if the shim dies (Pdeathsig, forked
// from a thread that stays locked until QEMU is reaped; see launch), runs in
// its own process group, and is stopped with QMP quit, then SIGKILL.
//
// With Accel "auto" the driver uses KVM only when package kvm's probe says
// it runs a standard guest at native speed; otherwise it falls back to TCG
// and says so in Describe's warnings. Under TCG it passes the host TSC
// frequency to the guest (tsc_early_khz, tsc=reliable), without which the
// guest's TSC calibration is slow or, on microvm, hangs.
//
// State directory files: qmp.sock, qemu.pid, the agent socket for the
// serial transport when the config gives none (agent.sock), and
// console.log. Stop removes all but console.log.
package qemu
