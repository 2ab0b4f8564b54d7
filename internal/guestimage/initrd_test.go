package guestimage

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"errors"
	"io"
	"io/fs"
	"path/filepath"
	"testing"

	"github.com/cavaliergopher/cpio"
	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"

	"github.com/hull-runtime/hull/internal/modlist"
)

// fakeKernel is an unpacked package with a few virtio modules.
func fakeKernel(t *testing.T) *Kernel {
	t.Helper()
	dir := fakeModulesDir(t, []fakeMod{
		mod("kernel/drivers/virtio/virtio.ko", "virtio_ring"),
		mod("kernel/drivers/virtio/virtio_ring.ko", ""),
		mod("kernel/drivers/block/virtio_blk.ko", "virtio,virtio_ring"),
		mod("kernel/fs/erofs/erofs.ko", ""),
		mod("kernel/fs/overlayfs/overlay.ko", ""),
	})
	return &Kernel{Release: fakeRelease, Dir: filepath.Dir(filepath.Dir(filepath.Dir(dir)))}
}

func decompress(t *testing.T, comp string, b []byte) []byte {
	t.Helper()
	var r io.Reader = bytes.NewReader(b)
	switch comp {
	case CompressionZstd:
		zr, err := zstd.NewReader(r)
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		r = zr
	case CompressionLZ4:
		r = lz4.NewReader(r)
	case CompressionGzip:
		zr, err := gzip.NewReader(r)
		if err != nil {
			t.Fatal(err)
		}
		r = zr
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("decompressing %s: %v", comp, err)
	}
	return out
}

// TestWriteInitrd packs the same spec twice in every compression, checks
// the bytes are the same, and reads the archive back.
func TestWriteInitrd(t *testing.T) {
	k := fakeKernel(t)
	spec := InitrdSpec{
		Init:       staticInit(t),
		Kernel:     k,
		Features:   []string{modlist.FeatureBlock, modlist.FeatureOverlay},
		ExtraFiles: []File{{Path: "/etc/hull/extra", Data: []byte("x")}},
	}
	for _, comp := range []string{CompressionZstd, CompressionLZ4, CompressionGzip, CompressionNone} {
		t.Run(comp, func(t *testing.T) {
			spec.Compression = comp
			var a, b bytes.Buffer
			list, err := WriteInitrd(context.Background(), &a, spec)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := WriteInitrd(context.Background(), &b, spec); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(a.Bytes(), b.Bytes()) {
				t.Fatal("two writes of the same spec differ")
			}
			entries := map[string]*cpio.Header{}
			contents := map[string][]byte{}
			r := cpio.NewReader(bytes.NewReader(decompress(t, comp, a.Bytes())))
			for {
				h, err := r.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				entries[h.Name] = h
				if contents[h.Name], err = io.ReadAll(r); err != nil {
					t.Fatal(err)
				}
			}
			wantModes := map[string]cpio.FileMode{
				"init":                  cpio.TypeReg | 0o755,
				"dev/console":           cpio.TypeChar | 0o600,
				"proc":                  cpio.TypeDir | 0o555,
				"sys":                   cpio.TypeDir | 0o555,
				"run":                   cpio.TypeDir | 0o755,
				"mnt":                   cpio.TypeDir | 0o755,
				"tmp":                   cpio.TypeDir | cpio.ModeSticky | 0o777,
				"etc/hull/extra":        cpio.TypeReg | 0o644,
				"etc/hull/modules.list": cpio.TypeReg | 0o644,
			}
			for _, m := range list.Modules {
				wantModes[m.Path[1:]] = cpio.TypeReg | 0o644
			}
			for name, mode := range wantModes {
				if h, ok := entries[name]; !ok {
					t.Errorf("%s missing", name)
				} else if h.Mode != mode {
					t.Errorf("%s: mode %o, want %o", name, h.Mode, mode)
				}
			}
			packed, err := modlist.Parse(contents["etc/hull/modules.list"])
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, m := range packed.Modules {
				names = append(names, m.Name)
			}
			if got, want := packed.KernelRelease, fakeRelease; got != want {
				t.Errorf("release %q, want %q", got, want)
			}
			if got, want := len(names), 5; got != want || names[0] != "erofs" || names[1] != "overlay" || names[2] != "virtio_ring" {
				t.Errorf("modules %v", names)
			}
		})
	}
}

func TestWriteInitrdRejects(t *testing.T) {
	dir := t.TempDir()
	dynamic := writeFakeELF(t, dir, "dynamic", fakeELF{typ: elf.ET_DYN, interp: "/lib64/ld-linux-x86-64.so.2"})
	script := filepath.Join(dir, "script")
	writeFakeELF(t, dir, "ko", fakeELF{typ: elf.ET_REL})
	for _, tc := range []struct {
		name    string
		spec    InitrdSpec
		wantErr error
	}{
		{"no init", InitrdSpec{}, errdefs.ErrInvalidArgument},
		{"dynamic init", InitrdSpec{Init: dynamic}, errdefs.ErrInvalidArgument},
		{"relocatable init", InitrdSpec{Init: filepath.Join(dir, "ko")}, errdefs.ErrInvalidArgument},
		{"missing init", InitrdSpec{Init: script}, fs.ErrNotExist},
		{"bad compression", InitrdSpec{Init: staticInit(t), Compression: "bzip2"}, errdefs.ErrInvalidArgument},
		{"unknown feature", InitrdSpec{Init: staticInit(t), Features: []string{"gpu"}}, errdefs.ErrInvalidArgument},
		{"extra file replaces init", InitrdSpec{Init: staticInit(t), ExtraFiles: []File{{Path: "/init"}}}, errdefs.ErrAlreadyExists},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := WriteInitrd(context.Background(), io.Discard, tc.spec)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
		})
	}
}
