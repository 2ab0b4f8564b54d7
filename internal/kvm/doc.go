// Package kvm tells whether /dev/kvm can really run hull's guests.
//
// An open /dev/kvm that accepts KVM_CREATE_VM proves little. Some hosts
// (cloud sandboxes among them) offer a paravirtual KVM, kvm_pvm, with no
// vmx or svm in /proc/cpuinfo. It creates VMs and runs a few instructions of
// any guest correctly, but it runs only PVM-enabled guest kernels natively:
// a standard guest's code is emulated instruction by instruction, at about
// half a million simple instructions per second. A standard kernel under
// QEMU -accel kvm then spends minutes in SeaBIOS and in the kernel's
// decompressor, which looks like a hang.
//
// So a probe that runs a tiny guest writing to a port and halting says
// "usable" there, wrongly; we measured that such a guest, even one that
// switches itself from real mode to protected and long mode with standard
// 4-level page tables and jumps to 0xffffffff80000000 like a standard kernel,
// runs fine under kvm_pvm. What tells the two apart is speed. Probe boots a
// hand-assembled guest (guest.go) that takes the steps a standard kernel
// takes (real mode, protected mode, long mode by itself, the kernel half of
// the address space) and then runs five short calibration loops and a loop
// of 20 million iterations. Native guest code finishes in milliseconds.
// Under emulation every calibration loop runs at a few hundred thousand
// iterations per second, and Probe stops once all five did (about 150 ms
// on a kvm_pvm host). A stall of the host thread (steal time on a cloud VM,
// a loaded host at boot) stretches one loop, never makes one faster: one
// loop at native speed means the vCPU runs guest code natively, and Probe
// then waits for the long loop, up to its time limit.
//
// The guest runs in a child process: the running binary re-executed through
// /proc/self/exe with an environment variable that this package's init
// function recognizes, so every binary that links the package, test
// binaries included, can serve as the child without help from its main. A
// vCPU stuck in KVM_RUN cannot hold up the caller: the parent kills the
// child at the deadline and does not wait for it to be reaped.
//
// ProbeCached keeps a conclusive result in /run/hull, keyed by the boot ID
// and the identity of /dev/kvm, so a reboot or a reloaded KVM module probes
// again. A negative verdict that the time limit decided (a guest that hung,
// or showed native speed and did not finish in time) is not conclusive and
// never cached: the next call probes again.
package kvm
