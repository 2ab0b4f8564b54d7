package guestimage

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/channel"
)

// debugShellAdvice ends the errors of a debug shell the guest cannot run.
const debugShellAdvice = "use a static shell such as busybox-static's /bin/busybox"

// readDebugShell reads the debug shell at p (symbolic links followed) and
// checks that the guest can run it: a regular file holding a static x86-64
// ELF executable. The guest has no libc and no dynamic loader, so a shell
// with a PT_INTERP header could never start. The file is read once, so the
// bytes checked, hashed and packed are the same even if p changes meanwhile.
func readDebugShell(p string) ([]byte, *DebugShellInfo, error) {
	data, err := readRegular("debug shell", p, "")
	if err != nil {
		return nil, nil, err
	}
	if err := checkDebugShellELF(p, data); err != nil {
		return nil, nil, err
	}
	sum := sha256.Sum256(data)
	return data, &DebugShellInfo{
		Path:   channel.DebugShellPath,
		SHA256: hex.EncodeToString(sum[:]),
		Size:   int64(len(data)),
	}, nil
}

// checkDebugShellELF refuses anything but a static x86-64 ELF executable
// (ET_EXEC, or ET_DYN without an interpreter: static-pie). p only names the
// file in errors.
func checkDebugShellELF(p string, data []byte) error {
	return checkStaticELF("debug shell", p, debugShellAdvice, data)
}

// checkStaticELF refuses anything but a static x86-64 ELF executable
// (ET_EXEC, or ET_DYN without an interpreter: static-pie). what and p
// name the file in errors, advice says how to get a good one.
func checkStaticELF(what, p, advice string, data []byte) error {
	if !bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
		is := "is not an ELF executable"
		if bytes.HasPrefix(data, []byte("#!")) {
			is = "is a script, not an ELF executable"
		}
		return fmt.Errorf("%s %s %s; %s: %w", what, p, is, advice, errdefs.ErrInvalidArgument)
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%s %s is not a valid ELF file (%w); %s: %w", what, p, err, advice, errdefs.ErrInvalidArgument)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("%s %s is an ELF for %v (%v), the guest runs x86-64; %s: %w",
			what, p, f.Machine, f.Class, advice, errdefs.ErrInvalidArgument)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("%s %s is an ELF %v, not an executable: %w", what, p, f.Type, errdefs.ErrInvalidArgument)
	}
	for _, prog := range f.Progs {
		if prog.Type != elf.PT_INTERP {
			continue
		}
		interp, err := io.ReadAll(io.LimitReader(prog.Open(), 4096))
		if err != nil {
			return fmt.Errorf("%s %s: reading its interpreter: %w", what, p, errors.Join(err, errdefs.ErrInvalidArgument))
		}
		return fmt.Errorf("%s %s is dynamically linked (interpreter %s); the guest has no libc: %s: %w",
			what, p, bytes.TrimRight(interp, "\x00"), advice, errdefs.ErrInvalidArgument)
	}
	return nil
}
