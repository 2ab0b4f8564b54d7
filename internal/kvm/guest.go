package kvm

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The probe guest walks the path every x86 Linux kernel takes at boot, and
// reports each step on an I/O port:
//
//	'R'  real mode, where the firmware and the kernel's setup code run
//	'P'  32-bit protected mode after lgdt and CR0.PE, as the decompressor
//	'L'  64-bit long mode, switched on by the guest itself: CR4.PAE, CR3,
//	     EFER.LME through wrmsr, CR0.PG, a far jump (startup_32 does this)
//	'H'  code running in the kernel half of the address space at
//	     0xffffffff80000000 (__START_KERNEL_map), where a standard kernel
//	     lives once decompressed
//	'c'  after each of calibrationRounds short calibration loops
//	'C'  after a loop of 20 million iterations, which takes milliseconds
//	     when the vCPU runs guest code natively and minutes when KVM
//	     emulates it instruction by instruction
//
// and then halts. The guest is about 150 bytes of hand-assembled code; the
// listings below give the instructions next to their encoding.

// Guest physical layout.
const (
	guestMemSize = 2 << 20
	pml4Addr     = 0x1000
	pdptLowAddr  = 0x2000
	pdAddr       = 0x3000
	pdptHighAddr = 0x4000
	gdtDescAddr  = 0x04f0
	gdtAddr      = 0x0500
	code16Addr   = 0x8000
	code32Addr   = 0x8100
	code64Addr   = 0x8200
	codeHighAddr = 0x8300
	kernelBase   = 0xffffffff80000000

	markerPort = 0x10
)

// Page table entry bits.
const (
	ptePresent = 1 << 0
	pteWrite   = 1 << 1
	pteHuge    = 1 << 7
)

// gdt holds the segments the guest loads: a flat 32-bit code segment (0x08),
// a flat data segment (0x10) and a 64-bit code segment (0x18).
var gdt = []uint64{
	0,
	0x00cf9a000000ffff,
	0x00cf92000000ffff,
	0x00af9a000000ffff,
}

var code16 = []byte{
	0xfa,      // cli
	0xb0, 'R', // mov al, 'R'
	0xba, markerPort, 0x00, // mov dx, port
	0xee,                         // out dx, al
	0x0f, 0x01, 0x16, 0xf0, 0x04, // lgdt [gdtDescAddr]
	0x0f, 0x20, 0xc0, // mov eax, cr0
	0x66, 0x83, 0xc8, 0x01, // or eax, 1 (PE)
	0x0f, 0x22, 0xc0, // mov cr0, eax
	0x66, 0xea, 0x00, 0x81, 0x00, 0x00, 0x08, 0x00, // jmp far 0x08:code32Addr
}

var code32 = []byte{
	0x66, 0xb8, 0x10, 0x00, // mov ax, 0x10
	0x8e, 0xd8, // mov ds, ax
	0x8e, 0xc0, // mov es, ax
	0x8e, 0xd0, // mov ss, ax
	0xb0, 'P', // mov al, 'P'
	0x66, 0xba, markerPort, 0x00, // mov dx, port
	0xee,             // out dx, al
	0x0f, 0x20, 0xe0, // mov eax, cr4
	0x83, 0xc8, 0x20, // or eax, 0x20 (PAE)
	0x0f, 0x22, 0xe0, // mov cr4, eax
	0xb8, 0x00, 0x10, 0x00, 0x00, // mov eax, pml4Addr
	0x0f, 0x22, 0xd8, // mov cr3, eax
	0xb9, 0x80, 0x00, 0x00, 0xc0, // mov ecx, 0xc0000080 (EFER)
	0x0f, 0x32, // rdmsr
	0x0d, 0x00, 0x01, 0x00, 0x00, // or eax, 0x100 (LME)
	0x0f, 0x30, // wrmsr
	0x0f, 0x20, 0xc0, // mov eax, cr0
	0x0d, 0x00, 0x00, 0x00, 0x80, // or eax, 0x80000000 (PG)
	0x0f, 0x22, 0xc0, // mov cr0, eax
	0xea, 0x00, 0x82, 0x00, 0x00, 0x18, 0x00, // jmp far 0x18:code64Addr
}

var code64 = []byte{
	0xb0, 'L', // mov al, 'L'
	0x66, 0xba, markerPort, 0x00, // mov dx, port
	0xee,       // out dx, al
	0x48, 0xb8, // mov rax, kernelBase+codeHighAddr
	0x00, 0x83, 0x00, 0x80, 0xff, 0xff, 0xff, 0xff,
	0xff, 0xe0, // jmp rax
}

var codeHigh = []byte{
	0xb0, 'H', // mov al, 'H'
	0x66, 0xba, markerPort, 0x00, // mov dx, port
	0xee,                         // out dx, al
	0xbb, 0x00, 0x00, 0x00, 0x00, // mov ebx, calibrationRounds (patched)
	0xb9, 0x00, 0x00, 0x00, 0x00, // 1: mov ecx, shortLoop (patched)
	0xff, 0xc9, // 2: dec ecx
	0x75, 0xfc, // jnz 2b
	0xb0, 'c', // mov al, 'c'
	0xee,       // out dx, al
	0xff, 0xcb, // dec ebx
	0x75, 0xf0, // jnz 1b
	0xb9, 0x00, 0x00, 0x00, 0x00, // mov ecx, longLoop (patched)
	0xff, 0xc9, // 1: dec ecx
	0x75, 0xfc, // jnz 1b
	0xb0, 'C', // mov al, 'C'
	0xee, // out dx, al
	0xf4, // hlt
}

// Offsets of the patched counts in codeHigh.
const (
	roundsOff    = 8
	shortLoopOff = 13
	longLoopOff  = 29
)

// The loops. Each calibration round of shortLoop iterations takes a few
// microseconds when the vCPU runs guest code natively (two instructions per
// iteration, plus one exit to the host) and tens of milliseconds when KVM
// emulates each instruction; a stall of the host thread (steal time, a
// loaded host) can stretch one round, but not every round, so the fastest
// round tells the guest's speed. longLoop is the real test: a few
// milliseconds natively, minutes under emulation.
const (
	calibrationRounds = 5
	shortLoop         = 5_000
	longLoop          = 20_000_000
)

// wantMarkers is what a guest that completed every step wrote.
var wantMarkers = "RPLH" + strings.Repeat("c", calibrationRounds) + "C"

// describeMarkers says how far a guest that wrote markers got.
func describeMarkers(markers string) string {
	if !strings.HasPrefix(wantMarkers, markers) {
		return "wrote unexpected markers " + strconv.Quote(markers)
	}
	switch n := len(markers); {
	case n == 0:
		return "did not run real-mode code"
	case n == 1:
		return "stopped entering 32-bit protected mode"
	case n == 2:
		return "stopped entering long mode with standard 4-level paging"
	case n == 3:
		return "stopped jumping to the kernel half of the address space (0xffffffff80000000)"
	case n < 4+calibrationRounds:
		return fmt.Sprintf("did not finish calibration loop %d of %d", n-3, calibrationRounds)
	case n == 4+calibrationRounds:
		return fmt.Sprintf("did not finish a loop of %d iterations", longLoop)
	default:
		return "ran every step"
	}
}

// load writes page tables, GDT and code into guest memory.
func load(mem []byte) {
	le := binary.LittleEndian
	// Identity map the first GiB with 2 MiB pages, and map it again at
	// kernelBase: PML4[511] -> PDPT[510] -> the same page directory.
	le.PutUint64(mem[pml4Addr:], pdptLowAddr|ptePresent|pteWrite)
	le.PutUint64(mem[pml4Addr+511*8:], pdptHighAddr|ptePresent|pteWrite)
	le.PutUint64(mem[pdptLowAddr:], pdAddr|ptePresent|pteWrite)
	le.PutUint64(mem[pdptHighAddr+510*8:], pdAddr|ptePresent|pteWrite)
	for i := uint64(0); i < 512; i++ {
		le.PutUint64(mem[pdAddr+i*8:], i<<21|ptePresent|pteWrite|pteHuge)
	}
	for i, d := range gdt {
		le.PutUint64(mem[gdtAddr+i*8:], d)
	}
	le.PutUint16(mem[gdtDescAddr:], uint16(len(gdt)*8-1))
	le.PutUint32(mem[gdtDescAddr+2:], gdtAddr)
	copy(mem[code16Addr:], code16)
	copy(mem[code32Addr:], code32)
	copy(mem[code64Addr:], code64)
	copy(mem[codeHighAddr:], codeHigh)
	le.PutUint32(mem[codeHighAddr+roundsOff:], calibrationRounds)
	le.PutUint32(mem[codeHighAddr+shortLoopOff:], shortLoop)
	le.PutUint32(mem[codeHighAddr+longLoopOff:], longLoop)
}

// runGuest boots the probe guest on dev and returns the markers it wrote,
// calling mark for each as it comes with the time since the guest started
// and the time the guest ran since its previous exit (the KVM_RUN call that
// ended with this marker, which leaves out the host's own work between
// exits).
// A guest that hangs makes runGuest hang: the caller runs it in a process it
// can kill.
func runGuest(dev string, mark func(marker byte, at, ran time.Duration)) (markers string, err error) {
	m, err := newMachine(dev, guestMemSize)
	if err != nil {
		return "", err
	}
	defer m.close()
	load(m.mem)

	s, err := m.getSregs()
	if err != nil {
		return "", err
	}
	// Real mode at 0000:code16Addr, as after a firmware hands over.
	for _, seg := range []*segment{&s.CS, &s.DS, &s.ES, &s.FS, &s.GS, &s.SS} {
		seg.Base, seg.Selector = 0, 0
	}
	if err := m.setSregs(&s); err != nil {
		return "", err
	}
	if err := m.setRegs(&regs{RIP: code16Addr, RFLAGS: 0x2, RSP: 0x7000}); err != nil {
		return "", err
	}
	start := time.Now()
	for i := 0; i < 2*len(wantMarkers); i++ {
		entered := time.Now()
		reason, err := m.runOnce()
		ran := time.Since(entered)
		if err != nil {
			return markers, err
		}
		switch reason {
		case exitIO:
			out, port, data := m.ioExit()
			if !out || port != markerPort {
				return markers, fmt.Errorf("unexpected I/O exit on port %#x", port)
			}
			markers += string(data)
			mark(data, time.Since(start), ran)
		case exitHLT:
			return markers, nil
		default:
			return markers, fmt.Errorf("unexpected exit %s", exitName(reason))
		}
	}
	return markers, fmt.Errorf("guest did not halt")
}
