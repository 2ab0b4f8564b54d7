package guestimage

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
)

// Kernel is an unpacked kernel package.
type Kernel struct {
	// Package is the versioned Debian package, e.g. linux-image-6.1.0-56-cloud-amd64.
	Package string
	// PackageVersion is the Debian version of Package, e.g. 6.1.192-2.
	PackageVersion string
	// Release is the kernel's `uname -r`.
	Release string
	// Deb is the path of the .deb file.
	Deb string
	// Dir is the root of the unpacked package (it holds boot/ and lib/modules/).
	Dir string
}

// BzImage is the path of the package's compressed kernel.
func (k *Kernel) BzImage() string {
	return filepath.Join(k.Dir, "boot", "vmlinuz-"+k.Release)
}

// ModulesDir is the package's module directory, lib/modules/<release>.
func (k *Kernel) ModulesDir() string {
	return filepath.Join(k.Dir, "lib", "modules", k.Release)
}

// ExtractVmlinux writes the PVH-bootable ELF kernel found in the package's
// bzImage to dst, atomically.
func (k *Kernel) ExtractVmlinux(dst string) error {
	bz, err := os.ReadFile(k.BzImage())
	if err != nil {
		return fmt.Errorf("reading bzImage: %w", err)
	}
	vmlinux, err := ExtractVmlinux(bz)
	if err != nil {
		return fmt.Errorf("extracting vmlinux from %s: %w", k.BzImage(), err)
	}
	_, err = writeFileAtomic(dst, 0o644, func(w io.Writer) error {
		_, err := w.Write(vmlinux)
		return err
	})
	return err
}

// ErrNotPVH is returned for a kernel ELF without the Xen PVH entry note.
var ErrNotPVH = fmt.Errorf("kernel has no PVH entry note: %w", errdefs.ErrNotImplemented)

// Offsets into the real-mode kernel header, from the x86 boot protocol
// (Documentation/arch/x86/boot.rst).
const (
	offSetupSects    = 0x1f1 // u8, number of 512-byte setup sectors after the boot sector; 0 means 4
	offHeaderMagic   = 0x202 // "HdrS"
	offVersion       = 0x206 // u16 boot protocol version
	offPayloadOffset = 0x248 // u32, from the start of the protected-mode code (2.08+)
	offPayloadLength = 0x24c // u32
	setupHeaderEnd   = 0x250

	// maxVmlinux bounds the decompressed kernel so a corrupt length cannot
	// make the builder allocate without limit.
	maxVmlinux = 1 << 30
)

// setupHeader is the part of the bzImage header the builder needs.
type setupHeader struct {
	Version       uint16
	SetupSects    int
	PayloadOffset uint32 // from the start of the file
	PayloadLength uint32
}

// parseSetupHeader reads the bzImage header and locates the payload.
func parseSetupHeader(bz []byte) (setupHeader, error) {
	var h setupHeader
	if len(bz) < setupHeaderEnd {
		return h, fmt.Errorf("bzImage too short (%d bytes): %w", len(bz), errdefs.ErrInvalidArgument)
	}
	if string(bz[offHeaderMagic:offHeaderMagic+4]) != "HdrS" {
		return h, fmt.Errorf("no HdrS setup header: %w", errdefs.ErrInvalidArgument)
	}
	h.Version = binary.LittleEndian.Uint16(bz[offVersion:])
	if h.Version < 0x208 {
		return h, fmt.Errorf("boot protocol %d.%02d has no payload fields (need 2.08): %w",
			h.Version>>8, h.Version&0xff, errdefs.ErrNotImplemented)
	}
	h.SetupSects = int(bz[offSetupSects])
	if h.SetupSects == 0 {
		h.SetupSects = 4
	}
	pmStart := uint64(h.SetupSects+1) * 512
	off := pmStart + uint64(binary.LittleEndian.Uint32(bz[offPayloadOffset:]))
	length := uint64(binary.LittleEndian.Uint32(bz[offPayloadLength:]))
	if length < 4 || off+length > uint64(len(bz)) {
		return h, fmt.Errorf("payload [%d, +%d) outside the %d-byte image: %w",
			off, length, len(bz), errdefs.ErrInvalidArgument)
	}
	h.PayloadOffset, h.PayloadLength = uint32(off), uint32(length)
	return h, nil
}

// Compression formats of a bzImage payload, by magic.
var payloadMagics = []struct {
	name  string
	magic []byte
}{
	{"gzip", []byte{0x1f, 0x8b}},
	{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}},
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}},
	{"lz4", []byte{0x02, 0x21, 0x4c, 0x18}}, // legacy frame
}

// payloadCompression names the compression of a bzImage payload.
func payloadCompression(p []byte) (string, error) {
	for _, m := range payloadMagics {
		if bytes.HasPrefix(p, m.magic) {
			return m.name, nil
		}
	}
	n := min(len(p), 6)
	return "", fmt.Errorf("unknown payload compression (magic % x): %w", p[:n], errdefs.ErrNotImplemented)
}

// ExtractVmlinux returns the ELF kernel inside a bzImage. It fails with
// ErrNotPVH when the ELF has no PVH entry point.
func ExtractVmlinux(bz []byte) ([]byte, error) {
	h, err := parseSetupHeader(bz)
	if err != nil {
		return nil, err
	}
	payload := bz[h.PayloadOffset : h.PayloadOffset+h.PayloadLength]
	comp, err := payloadCompression(payload)
	if err != nil {
		return nil, err
	}
	// The kernel build appends the decompressed size as a little-endian
	// u32 to every payload; for gzip it is the ISIZE trailer itself.
	want := binary.LittleEndian.Uint32(payload[len(payload)-4:])
	if want > maxVmlinux {
		return nil, fmt.Errorf("payload claims %d bytes decompressed: %w", want, errdefs.ErrInvalidArgument)
	}
	out, err := decompressPayload(comp, payload, int(want))
	if err != nil {
		return nil, fmt.Errorf("decompressing %s payload: %w", comp, err)
	}
	if len(out) != int(want) {
		return nil, fmt.Errorf("%s payload decompressed to %d bytes, header says %d: %w",
			comp, len(out), want, errdefs.ErrDataLoss)
	}
	if err := checkPVH(out); err != nil {
		return nil, err
	}
	return out, nil
}

func decompressPayload(comp string, payload []byte, size int) ([]byte, error) {
	// Preallocate what a real kernel needs (they compress about 4:1) without
	// trusting the size word of a corrupt image with a large allocation.
	prealloc := min(size, 16*len(payload))
	var r io.Reader
	switch comp {
	case "gzip":
		zr, err := gzip.NewReader(bytes.NewReader(payload))
		if err != nil {
			return nil, err
		}
		zr.Multistream(false)
		r = zr
	case "xz":
		cfg := xz.ReaderConfig{SingleStream: true}
		xr, err := cfg.NewReader(bytes.NewReader(payload[:len(payload)-4]))
		if err != nil {
			return nil, err
		}
		r = xr
	case "zstd":
		zr, err := zstd.NewReader(bytes.NewReader(payload[:len(payload)-4]),
			zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxVmlinux))
		if err != nil {
			return nil, err
		}
		defer zr.Close()
		r = zr
	case "lz4":
		return decompressLZ4Legacy(payload[:len(payload)-4], size, prealloc)
	default:
		return nil, fmt.Errorf("compression %q: %w", comp, errdefs.ErrNotImplemented)
	}
	out := bytes.NewBuffer(make([]byte, 0, prealloc))
	// Read one byte past the expected size so an overlong stream is caught.
	if _, err := io.Copy(out, io.LimitReader(r, int64(size)+1)); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// lz4LegacyBlock is the uncompressed size of every block but the last in an
// LZ4 legacy frame.
const lz4LegacyBlock = 8 << 20

// decompressLZ4Legacy decodes an LZ4 legacy frame: the magic, then blocks,
// each a little-endian u32 compressed length and an LZ4 block of at most
// 8 MiB decompressed. The frame has no end mark; it ends with the input.
// Only the block decoder comes from the library so that the size limits
// and the handling of the kernel's trailing size word stay explicit here.
func decompressLZ4Legacy(p []byte, size, prealloc int) ([]byte, error) {
	p = p[4:] // magic, already checked
	out := make([]byte, 0, prealloc)
	buf := make([]byte, lz4LegacyBlock)
	for len(p) > 0 {
		if len(p) < 4 {
			return nil, fmt.Errorf("lz4: truncated block header: %w", errdefs.ErrDataLoss)
		}
		n := binary.LittleEndian.Uint32(p)
		p = p[4:]
		if n == 0x184c2102 { // a concatenated frame starts again
			continue
		}
		if uint64(n) > uint64(len(p)) {
			return nil, fmt.Errorf("lz4: block of %d bytes, %d left: %w", n, len(p), errdefs.ErrDataLoss)
		}
		m, err := lz4.UncompressBlock(p[:n], buf)
		if err != nil {
			return nil, fmt.Errorf("lz4: %w", err)
		}
		if len(out)+m > size {
			return nil, fmt.Errorf("lz4: more than the %d bytes announced: %w", size, errdefs.ErrDataLoss)
		}
		out = append(out, buf[:m]...)
		p = p[n:]
	}
	return out, nil
}

// xenNotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY, the note that marks the
// 32-bit PVH entry point QEMU jumps to.
const xenNotePhys32Entry = 18

// checkPVH checks that b is an x86-64 ELF with a PVH entry note.
func checkPVH(b []byte) error {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("payload is not an ELF: %w", errors.Join(err, errdefs.ErrInvalidArgument))
	}
	defer func() { _ = f.Close() }()
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("kernel ELF is for %v: %w", f.Machine, errdefs.ErrInvalidArgument)
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data, err := io.ReadAll(p.Open())
		if err != nil {
			return fmt.Errorf("reading ELF notes: %w", err)
		}
		if hasNote(data, f.ByteOrder, "Xen", xenNotePhys32Entry) {
			return nil
		}
	}
	return ErrNotPVH
}

// hasNote walks ELF notes (namesz, descsz, type, name, desc; 4-byte aligned)
// looking for the given owner and type.
func hasNote(data []byte, bo binary.ByteOrder, owner string, typ uint32) bool {
	align := func(n uint64) uint64 { return (n + 3) &^ 3 }
	for len(data) >= 12 {
		namesz := uint64(bo.Uint32(data[0:]))
		descsz := uint64(bo.Uint32(data[4:]))
		t := bo.Uint32(data[8:])
		data = data[12:]
		if align(namesz) > uint64(len(data)) {
			return false
		}
		name := string(bytes.TrimRight(data[:namesz], "\x00"))
		data = data[align(namesz):]
		if name == owner && t == typ && descsz <= uint64(len(data)) {
			return true
		}
		if align(descsz) > uint64(len(data)) {
			return false
		}
		data = data[align(descsz):]
	}
	return false
}
