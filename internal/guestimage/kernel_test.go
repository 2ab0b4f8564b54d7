package guestimage

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
)

// pvhELF is a stand-in vmlinux with the PVH entry note.
func pvhELF() []byte {
	return fakeELF{typ: elf.ET_EXEC, notes: []fakeNote{
		{"Linux", 6, []byte("6.1.0\x00\x00\x00")},
		{"Xen", xenNotePhys32Entry, []byte{0, 0, 0, 1}},
	}}.bytes()
}

// compressPayload compresses b the way the kernel build does, including
// the trailing little-endian size word.
func compressPayload(t *testing.T, comp string, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch comp {
	case "gzip":
		w = gzip.NewWriter(&buf) // ISIZE is the size word
	case "xz":
		w, err = xz.NewWriter(&buf)
	case "zstd":
		w, err = zstd.NewWriter(&buf)
	case "lz4":
		zw := lz4.NewWriter(&buf)
		err = zw.Apply(lz4.LegacyOption(true))
		w = writeOnly{zw}
	case "raw":
		w = nopWriteCloser{&buf}
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if comp != "gzip" {
		_ = binary.Write(&buf, binary.LittleEndian, uint32(len(b)))
	}
	return buf.Bytes()
}

// fakeBzImage builds a bzImage: a boot sector, setupSects setup sectors
// holding the header, then the protected-mode part with the payload 0x80
// bytes in.
func fakeBzImage(payload []byte, setupSects byte, version uint16) []byte {
	pm := (int(setupSects) + 1) * 512
	if setupSects == 0 {
		pm = 5 * 512
	}
	const payloadOff = 0x80
	bz := make([]byte, pm+payloadOff+len(payload)+64)
	bz[offSetupSects] = setupSects
	copy(bz[offHeaderMagic:], "HdrS")
	binary.LittleEndian.PutUint16(bz[offVersion:], version)
	binary.LittleEndian.PutUint32(bz[offPayloadOffset:], payloadOff)
	binary.LittleEndian.PutUint32(bz[offPayloadLength:], uint32(len(payload)))
	copy(bz[pm+payloadOff:], payload)
	return bz
}

func TestExtractVmlinux(t *testing.T) {
	vmlinux := pvhELF()
	notPVH := fakeELF{typ: elf.ET_EXEC, notes: []fakeNote{{"Xen", 17, []byte{0, 0, 0, 0}}}}.bytes()
	// An ELF of more than one 8 MiB lz4 block, to cover the block loop.
	big := append(pvhELF(), bytes.Repeat([]byte("vmlinux!"), 1<<20+3)...)
	for _, tc := range []struct {
		name    string
		bz      func(t *testing.T) []byte
		want    []byte
		wantErr error
	}{
		{"gzip", func(t *testing.T) []byte { return fakeBzImage(compressPayload(t, "gzip", vmlinux), 27, 0x20f) }, vmlinux, nil},
		{"xz", func(t *testing.T) []byte { return fakeBzImage(compressPayload(t, "xz", vmlinux), 27, 0x20f) }, vmlinux, nil},
		{"zstd", func(t *testing.T) []byte { return fakeBzImage(compressPayload(t, "zstd", vmlinux), 27, 0x20f) }, vmlinux, nil},
		{"lz4", func(t *testing.T) []byte { return fakeBzImage(compressPayload(t, "lz4", vmlinux), 39, 0x20f) }, vmlinux, nil},
		{"lz4 two blocks", func(t *testing.T) []byte { return fakeBzImage(compressPayload(t, "lz4", big), 39, 0x20f) }, big, nil},
		{"setup sects 0 means 4", func(t *testing.T) []byte { return fakeBzImage(compressPayload(t, "gzip", vmlinux), 0, 0x208) }, vmlinux, nil},
		{"not pvh", func(t *testing.T) []byte { return fakeBzImage(compressPayload(t, "gzip", notPVH), 27, 0x20f) }, nil, ErrNotPVH},
		{"not elf", func(t *testing.T) []byte {
			return fakeBzImage(compressPayload(t, "zstd", []byte("MZ not an elf")), 27, 0x20f)
		}, nil, errdefs.ErrInvalidArgument},
		{"unknown compression", func(t *testing.T) []byte { return fakeBzImage(compressPayload(t, "raw", vmlinux), 27, 0x20f) }, nil, errdefs.ErrNotImplemented},
		{"old boot protocol", func(t *testing.T) []byte { return fakeBzImage(compressPayload(t, "gzip", vmlinux), 27, 0x207) }, nil, errdefs.ErrNotImplemented},
		{"no HdrS", func(t *testing.T) []byte {
			bz := fakeBzImage(compressPayload(t, "gzip", vmlinux), 27, 0x20f)
			copy(bz[offHeaderMagic:], "HdrX")
			return bz
		}, nil, errdefs.ErrInvalidArgument},
		{"too short", func(t *testing.T) []byte { return make([]byte, 0x200) }, nil, errdefs.ErrInvalidArgument},
		{"payload past the end", func(t *testing.T) []byte {
			bz := fakeBzImage(compressPayload(t, "gzip", vmlinux), 27, 0x20f)
			binary.LittleEndian.PutUint32(bz[offPayloadLength:], uint32(len(bz)))
			return bz
		}, nil, errdefs.ErrInvalidArgument},
		{"size word lies", func(t *testing.T) []byte {
			p := compressPayload(t, "zstd", vmlinux)
			binary.LittleEndian.PutUint32(p[len(p)-4:], uint32(len(vmlinux)-1))
			return fakeBzImage(p, 27, 0x20f)
		}, nil, errdefs.ErrDataLoss},
		{"truncated lz4", func(t *testing.T) []byte {
			p := compressPayload(t, "lz4", vmlinux)
			p = append(p[:len(p)-10], p[len(p)-4:]...)
			return fakeBzImage(p, 27, 0x20f)
		}, nil, errdefs.ErrDataLoss},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ExtractVmlinux(tc.bz(t))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("got %d bytes, want %d", len(got), len(tc.want))
			}
		})
	}
}

func TestParseSetupHeader(t *testing.T) {
	for _, tc := range []struct {
		name       string
		setupSects byte
		version    uint16
		wantOff    uint32
		wantSects  int
	}{
		{"debian 6.1", 39, 0x20f, 40*512 + 0x80, 39},
		{"zero sects", 0, 0x20c, 5*512 + 0x80, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := parseSetupHeader(fakeBzImage(make([]byte, 100), tc.setupSects, tc.version))
			if err != nil {
				t.Fatal(err)
			}
			want := setupHeader{Version: tc.version, SetupSects: tc.wantSects, PayloadOffset: tc.wantOff, PayloadLength: 100}
			if h != want {
				t.Fatalf("got %+v, want %+v", h, want)
			}
		})
	}
}

func TestHasNote(t *testing.T) {
	for _, tc := range []struct {
		name  string
		notes []fakeNote
		want  bool
	}{
		{"pvh", []fakeNote{{"Xen", 18, []byte{1, 2, 3, 4}}}, true},
		{"after others", []fakeNote{{"GNU", 3, []byte{1, 2, 3}}, {"Xen", 1, nil}, {"Xen", 18, []byte{1}}}, true},
		{"wrong owner", []fakeNote{{"Xe", 18, nil}}, false},
		{"none", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := hasNote(noteBytes(tc.notes), binary.LittleEndian, "Xen", 18); got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	if hasNote([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 18, 0, 0, 0}, binary.LittleEndian, "Xen", 18) {
		t.Fatal("found a note in a truncated buffer")
	}
}

// FuzzExtractVmlinux feeds arbitrary bytes to the bzImage parser, which
// reads package content: it must fail cleanly, never panic.
func FuzzExtractVmlinux(f *testing.F) {
	f.Add(fakeBzImage(make([]byte, 64), 4, 0x20f))
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(pvhELF())
	_ = zw.Close()
	f.Add(fakeBzImage(buf.Bytes(), 4, 0x20f))
	f.Add(fakeBzImage(append([]byte{0x02, 0x21, 0x4c, 0x18, 0xff, 0, 0, 0}, 8, 0, 0, 0), 4, 0x20f))
	f.Fuzz(func(t *testing.T, bz []byte) {
		_, _ = ExtractVmlinux(bz)
	})
}
