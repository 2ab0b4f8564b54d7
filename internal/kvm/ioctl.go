package kvm

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The few KVM ioctls and structures the probe needs, from
// include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h.
const (
	kvmGetAPIVersion       = 0xAE00
	kvmCreateVM            = 0xAE01
	kvmGetVCPUMmapSize     = 0xAE04
	kvmGetSupportedCPUID   = 0xC008AE05
	kvmCreateVCPU          = 0xAE41
	kvmSetUserMemoryRegion = 0x4020AE46
	kvmSetTSSAddr          = 0xAE47
	kvmRun                 = 0xAE80
	kvmSetRegs             = 0x4090AE82
	kvmGetSregs            = 0x8138AE83
	kvmSetSregs            = 0x4138AE84
	kvmSetCPUID2           = 0x4008AE90

	kvmAPIVersion = 12
)

// Exit reasons (kvm_run.exit_reason) the probe tells apart.
const (
	exitUnknown       = 0
	exitException     = 1
	exitIO            = 2
	exitHLT           = 5
	exitMMIO          = 6
	exitShutdown      = 8
	exitFailEntry     = 9
	exitInternalError = 17
)

var exitNames = map[uint32]string{
	exitUnknown:       "UNKNOWN",
	exitException:     "EXCEPTION",
	exitIO:            "IO",
	exitHLT:           "HLT",
	exitMMIO:          "MMIO",
	exitShutdown:      "SHUTDOWN",
	exitFailEntry:     "FAIL_ENTRY",
	exitInternalError: "INTERNAL_ERROR",
}

func exitName(r uint32) string {
	if n, ok := exitNames[r]; ok {
		return n
	}
	return fmt.Sprintf("exit reason %d", r)
}

type userMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

type regs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

type segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
	_        uint8
}

type dtable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

type sregs struct {
	CS, DS, ES, FS, GS, SS, TR, LDT segment
	GDT, IDT                        dtable
	CR0, CR2, CR3, CR4, CR8         uint64
	EFER                            uint64
	APICBase                        uint64
	InterruptBitmap                 [4]uint64
}

type cpuidEntry struct {
	Function, Index, Flags, EAX, EBX, ECX, EDX uint32
	_                                          [3]uint32
}

// cpuid2 is struct kvm_cpuid2 with room for maxCPUID entries.
type cpuid2 struct {
	NEnt    uint32
	_       uint32
	Entries [maxCPUID]cpuidEntry
}

const maxCPUID = 256

// kvm_run header offsets.
const (
	runImmediateExit = 1
	runExitReason    = 8
	runIO            = 32 // union: struct { u8 direction, size; u16 port; u32 count; u64 data_offset }
)

func init() {
	// Catch a layout mistake at once rather than with EINVAL in the guest.
	if unsafe.Sizeof(regs{}) != 144 || unsafe.Sizeof(sregs{}) != 312 ||
		unsafe.Sizeof(userMemoryRegion{}) != 32 || unsafe.Sizeof(cpuidEntry{}) != 40 {
		panic("kvm: ioctl structure layout mismatch")
	}
}

func ioctl(fd int, req uintptr, arg uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

func ioctlPtr[T any](fd int, req uintptr, p *T) error {
	_, err := ioctl(fd, req, uintptr(unsafe.Pointer(p)))
	return err
}

// machine is one VM with one vCPU and one slot of guest memory at 0.
type machine struct {
	sys, vm, vcpu int
	mem           []byte
	run           []byte
}

func newMachine(dev string, memSize int) (_ *machine, retErr error) {
	m := &machine{sys: -1, vm: -1, vcpu: -1}
	defer func() {
		if retErr != nil {
			m.close()
		}
	}()
	var err error
	if m.sys, err = unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0); err != nil {
		return nil, &os.PathError{Op: "open", Path: dev, Err: err}
	}
	v, err := ioctl(m.sys, kvmGetAPIVersion, 0)
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_API_VERSION: %w", err)
	}
	if v != kvmAPIVersion {
		return nil, fmt.Errorf("KVM API version %d, want %d", v, kvmAPIVersion)
	}
	fd, err := ioctl(m.sys, kvmCreateVM, 0)
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	m.vm = int(fd)
	// Needed on Intel for real mode; harmless or refused elsewhere.
	_, _ = ioctl(m.vm, kvmSetTSSAddr, 0xfffbd000)

	m.mem, err = unix.Mmap(-1, 0, memSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("mapping guest memory: %w", err)
	}
	region := userMemoryRegion{
		MemorySize:    uint64(memSize),
		UserspaceAddr: uint64(uintptr(unsafe.Pointer(&m.mem[0]))),
	}
	if err := ioctlPtr(m.vm, kvmSetUserMemoryRegion, &region); err != nil {
		return nil, fmt.Errorf("KVM_SET_USER_MEMORY_REGION: %w", err)
	}
	fd, err = ioctl(m.vm, kvmCreateVCPU, 0)
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU: %w", err)
	}
	m.vcpu = int(fd)
	size, err := ioctl(m.sys, kvmGetVCPUMmapSize, 0)
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	m.run, err = unix.Mmap(m.vcpu, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mapping kvm_run: %w", err)
	}
	if err := m.setSupportedCPUID(); err != nil {
		return nil, err
	}
	return m, nil
}

// setSupportedCPUID gives the vCPU every CPUID leaf KVM supports, as a VMM
// does; without it KVM refuses EFER.LME.
func (m *machine) setSupportedCPUID() error {
	var c cpuid2
	c.NEnt = maxCPUID
	if err := ioctlPtr(m.sys, kvmGetSupportedCPUID, &c); err != nil {
		return fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
	}
	if err := ioctlPtr(m.vcpu, kvmSetCPUID2, &c); err != nil {
		return fmt.Errorf("KVM_SET_CPUID2: %w", err)
	}
	return nil
}

func (m *machine) close() {
	if m.run != nil {
		_ = unix.Munmap(m.run)
	}
	if m.mem != nil {
		_ = unix.Munmap(m.mem)
	}
	for _, fd := range []int{m.vcpu, m.vm, m.sys} {
		if fd >= 0 {
			_ = unix.Close(fd)
		}
	}
}

func (m *machine) getSregs() (sregs, error) {
	var s sregs
	if err := ioctlPtr(m.vcpu, kvmGetSregs, &s); err != nil {
		return s, fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	return s, nil
}

func (m *machine) setSregs(s *sregs) error {
	if err := ioctlPtr(m.vcpu, kvmSetSregs, s); err != nil {
		return fmt.Errorf("KVM_SET_SREGS: %w", err)
	}
	return nil
}

func (m *machine) setRegs(r *regs) error {
	if err := ioctlPtr(m.vcpu, kvmSetRegs, r); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	return nil
}

// runOnce enters the guest and returns the exit reason.
func (m *machine) runOnce() (uint32, error) {
	for {
		_, err := ioctl(m.vcpu, kvmRun, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("KVM_RUN: %w", err)
		}
		return *(*uint32)(unsafe.Pointer(&m.run[runExitReason])), nil
	}
}

// ioExit decodes kvm_run.io after an IO exit: direction (1 = out), port,
// and the first data byte.
func (m *machine) ioExit() (out bool, port uint16, data byte) {
	io := m.run[runIO:]
	out = io[0] == 1
	port = *(*uint16)(unsafe.Pointer(&io[2]))
	off := *(*uint64)(unsafe.Pointer(&io[8]))
	if off < uint64(len(m.run)) {
		data = m.run[off]
	}
	return out, port, data
}
