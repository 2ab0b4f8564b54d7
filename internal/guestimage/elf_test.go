package guestimage

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// fakeELF describes a minimal x86-64 ELF file written by the tests: a
// stand-in for a .ko (sections), a vmlinux (a PT_NOTE segment) or an init
// executable (with or without PT_INTERP).
type fakeELF struct {
	typ      elf.Type
	sections []fakeSection
	notes    []fakeNote
	interp   string
}

type fakeSection struct {
	name string
	data []byte
}

type fakeNote struct {
	owner string
	typ   uint32
	desc  []byte
}

// noteBytes encodes notes in the ELF note layout.
func noteBytes(notes []fakeNote) []byte {
	var b bytes.Buffer
	pad := func() {
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	for _, n := range notes {
		_ = binary.Write(&b, binary.LittleEndian, [3]uint32{uint32(len(n.owner) + 1), uint32(len(n.desc)), n.typ})
		b.WriteString(n.owner + "\x00")
		pad()
		b.Write(n.desc)
		pad()
	}
	return b.Bytes()
}

// bytes lays the file out as: header, program headers, segment data,
// section data, section name table, section headers.
func (f fakeELF) bytes() []byte {
	type seg struct {
		typ  elf.ProgType
		data []byte
	}
	var segs []seg
	if f.interp != "" {
		segs = append(segs, seg{elf.PT_INTERP, []byte(f.interp + "\x00")})
	}
	if len(f.notes) > 0 {
		segs = append(segs, seg{elf.PT_NOTE, noteBytes(f.notes)})
	}
	const ehsize, phsize, shsize = 64, 56, 64
	off := uint64(ehsize + phsize*len(segs))
	var body bytes.Buffer
	var progs []elf.Prog64
	for _, s := range segs {
		progs = append(progs, elf.Prog64{Type: uint32(s.typ), Off: off + uint64(body.Len()), Filesz: uint64(len(s.data)), Memsz: uint64(len(s.data)), Align: 4})
		body.Write(s.data)
	}
	shstr := []byte{0}
	sects := []elf.Section64{{}}
	for _, s := range f.sections {
		sects = append(sects, elf.Section64{Name: uint32(len(shstr)), Type: uint32(elf.SHT_PROGBITS), Off: off + uint64(body.Len()), Size: uint64(len(s.data)), Addralign: 1})
		shstr = append(shstr, s.name+"\x00"...)
		body.Write(s.data)
	}
	sects = append(sects, elf.Section64{Name: uint32(len(shstr)), Type: uint32(elf.SHT_STRTAB), Off: off + uint64(body.Len()), Addralign: 1})
	shstr = append(shstr, ".shstrtab\x00"...)
	sects[len(sects)-1].Size = uint64(len(shstr))
	body.Write(shstr)
	for body.Len()%8 != 0 {
		body.WriteByte(0)
	}
	hdr := elf.Header64{
		Type: uint16(f.typ), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Ehsize: ehsize, Phentsize: phsize, Phnum: uint16(len(progs)), Shentsize: shsize,
		Shnum: uint16(len(sects)), Shstrndx: uint16(len(sects) - 1), Shoff: off + uint64(body.Len()),
	}
	if len(progs) > 0 {
		hdr.Phoff = ehsize
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	var out bytes.Buffer
	_ = binary.Write(&out, binary.LittleEndian, hdr)
	for _, p := range progs {
		_ = binary.Write(&out, binary.LittleEndian, p)
	}
	out.Write(body.Bytes())
	for _, s := range sects {
		_ = binary.Write(&out, binary.LittleEndian, s)
	}
	return out.Bytes()
}

// writeFakeELF writes f to dir/name and returns the path.
func writeFakeELF(t *testing.T, dir, name string, f fakeELF) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, f.bytes(), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// staticInit writes a stand-in static executable for /init.
func staticInit(t *testing.T) string {
	t.Helper()
	return writeFakeELF(t, t.TempDir(), "init", fakeELF{typ: elf.ET_EXEC, sections: []fakeSection{{".text", []byte{0xf4}}}})
}

func TestFakeELFReadable(t *testing.T) {
	b := fakeELF{typ: elf.ET_REL, sections: []fakeSection{{".modinfo", []byte("name=x\x00")}},
		notes: []fakeNote{{"Xen", 18, []byte{1, 2, 3, 4}}}}.bytes()
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if s := f.Section(".modinfo"); s == nil {
		t.Fatal("no .modinfo section")
	}
	if len(f.Progs) != 1 || f.Progs[0].Type != elf.PT_NOTE {
		t.Fatalf("progs %v", f.Progs)
	}
}
