package guestimage

import (
	"context"
	"debug/elf"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

const fakeRelease = "6.1.0-test-amd64"

// fakeMod is a module file in a synthetic lib/modules tree.
type fakeMod struct {
	path    string // relative to lib/modules/<release>
	modinfo string // key=value lines, written NUL-separated
}

// fakeModulesDir writes a lib/modules/<release> tree of synthetic .ko
// files (ELF relocatables with a .modinfo section) and a modules.builtin.
func fakeModulesDir(t *testing.T, mods []fakeMod, builtin ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "lib", "modules", fakeRelease)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, m := range mods {
		var secs []fakeSection
		if m.modinfo != "-" {
			info := strings.Join(strings.Split(m.modinfo, "\n"), "\x00") + "\x00"
			secs = append(secs, fakeSection{".text", []byte{0xc3}}, fakeSection{".modinfo", []byte("\x00\x00" + info)})
		}
		writeFakeELF(t, dir, m.path, fakeELF{typ: elf.ET_REL, sections: secs})
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(strings.Join(builtin, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// mod is shorthand for a well-formed module with its dependencies.
func mod(path, depends string) fakeMod {
	name := moduleName(path)
	return fakeMod{path: path, modinfo: "license=GPL\ndepends=" + depends + "\nname=" + name + "\nvermagic=" + fakeRelease + " SMP mod_unload modversions "}
}

func TestResolveModules(t *testing.T) {
	virtio := []fakeMod{
		mod("kernel/drivers/virtio/virtio.ko", "virtio_ring"),
		mod("kernel/drivers/virtio/virtio_ring.ko", ""),
		mod("kernel/drivers/virtio/virtio_pci.ko", "virtio_ring,virtio_pci_modern_dev,virtio"),
		mod("kernel/drivers/virtio/virtio_pci_modern_dev.ko", ""),
		mod("kernel/drivers/block/virtio_blk.ko", "virtio,virtio_ring"),
		mod("kernel/fs/overlayfs/overlay.ko", ""),
	}
	for _, tc := range []struct {
		name    string
		mods    []fakeMod
		builtin []string
		roots   []featureRoot
		want    string // name[features] in order, space-separated
		wantErr error
	}{
		{
			name:  "virtio_ring before virtio",
			mods:  virtio,
			roots: []featureRoot{{"bus-pci", []string{"virtio_pci"}}},
			want:  "virtio_pci_modern_dev[bus-pci] virtio_ring[bus-pci] virtio[bus-pci] virtio_pci[bus-pci]",
		},
		{
			name: "shared dependencies carry every feature",
			mods: virtio,
			roots: []featureRoot{
				{"bus-pci", []string{"virtio_pci"}},
				{"overlay", []string{"overlay"}},
				{"block", []string{"virtio_blk"}},
			},
			want: "overlay[overlay] virtio_pci_modern_dev[bus-pci] virtio_ring[bus-pci,block] virtio[bus-pci,block] virtio_blk[block] virtio_pci[bus-pci]",
		},
		{
			name:  "ties broken by name",
			mods:  []fakeMod{mod("kernel/c.ko", "a,b"), mod("kernel/b.ko", ""), mod("kernel/a.ko", ""), mod("kernel/d.ko", "")},
			roots: []featureRoot{{"f", []string{"d", "c"}}},
			want:  "a[f] b[f] c[f] d[f]",
		},
		{
			name:    "built-in root and dependency are skipped",
			mods:    []fakeMod{mod("kernel/fs/fuse/virtiofs.ko", "fuse,virtio")},
			builtin: []string{"kernel/fs/fuse/fuse.ko", "kernel/drivers/virtio/virtio.ko", "kernel/fs/overlayfs/overlay.ko"},
			roots:   []featureRoot{{"virtio-fs", []string{"virtiofs"}}, {"overlay", []string{"overlay"}}},
			want:    "virtiofs[virtio-fs]",
		},
		{
			name:  "dashes in file names and depends",
			mods:  []fakeMod{mod("kernel/drivers/nvdimm/nd-e820.ko", "lib-nvdimm"), mod("kernel/lib-nvdimm.ko", "")},
			roots: []featureRoot{{"pmem", []string{"nd_e820"}}},
			want:  "lib_nvdimm[pmem] nd_e820[pmem]",
		},
		{
			name:    "missing dependency",
			mods:    []fakeMod{mod("kernel/a.ko", "gone")},
			roots:   []featureRoot{{"f", []string{"a"}}},
			wantErr: errdefs.ErrNotFound,
		},
		{
			name:    "missing root",
			roots:   []featureRoot{{"f", []string{"a"}}},
			wantErr: errdefs.ErrNotFound,
		},
		{
			name:    "cycle",
			mods:    []fakeMod{mod("kernel/a.ko", "b"), mod("kernel/b.ko", "a")},
			roots:   []featureRoot{{"f", []string{"a"}}},
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "file name and modinfo name disagree",
			mods:    []fakeMod{{path: "kernel/a.ko", modinfo: "name=b\ndepends="}},
			roots:   []featureRoot{{"f", []string{"a"}}},
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "built for another kernel",
			mods:    []fakeMod{{path: "kernel/a.ko", modinfo: "name=a\ndepends=\nvermagic=5.10.0-1-amd64 SMP"}},
			roots:   []featureRoot{{"f", []string{"a"}}},
			wantErr: errdefs.ErrFailedPrecondition,
		},
		{
			name:    "no modinfo section",
			mods:    []fakeMod{{path: "kernel/a.ko", modinfo: "-"}},
			roots:   []featureRoot{{"f", []string{"a"}}},
			wantErr: errdefs.ErrInvalidArgument,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fakeModulesDir(t, tc.mods, tc.builtin...)
			idx, err := loadModuleIndex(dir, fakeRelease)
			if err != nil {
				t.Fatal(err)
			}
			list, err := resolveModules(context.Background(), idx, tc.roots)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, m := range list.Modules {
				got = append(got, m.Name+"["+strings.Join(m.Features, ",")+"]")
				if !strings.HasPrefix(m.Path, "/lib/modules/"+fakeRelease+"/kernel/") {
					t.Errorf("%s: path %s", m.Name, m.Path)
				}
			}
			if g := strings.Join(got, " "); g != tc.want {
				t.Fatalf("got  %s\nwant %s", g, tc.want)
			}
		})
	}
}

func TestCompressedModuleRejected(t *testing.T) {
	dir := fakeModulesDir(t, nil)
	if err := os.WriteFile(filepath.Join(dir, "virtio.ko.xz"), []byte("xz"), 0o644); err != nil {
		t.Fatal(err)
	}
	idx, err := loadModuleIndex(dir, fakeRelease)
	if err != nil {
		t.Fatal(err)
	}
	_, err = resolveModules(context.Background(), idx, []featureRoot{{"f", []string{"virtio"}}})
	if !errors.Is(err, errdefs.ErrNotImplemented) {
		t.Fatalf("error %v, want not implemented", err)
	}
}

func TestNormalizeFeatures(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      []string
		want    string
		wantErr bool
	}{
		{"default is all", nil, strings.Join(AllFeatures(), ","), false},
		{"canonical order, no duplicates", []string{"pmem", "vsock", "pmem"}, "vsock,pmem", false},
		{"unknown", []string{"vsock", "gpu"}, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := normalizeFeatures(tc.in)
			if tc.wantErr {
				if !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("error %v, want invalid argument", err)
				}
				return
			}
			if err != nil || strings.Join(got, ",") != tc.want {
				t.Fatalf("got %v, %v; want %s", got, err, tc.want)
			}
		})
	}
}

func TestParseModinfo(t *testing.T) {
	info := parseModinfo([]byte("\x00alias=virtio:d*\x00alias=pci:v1AF4\x00depends=virtio_ring, virtio\x00name=virtio_pci\x00\x00"))
	if got := strings.Join(info["alias"], "|"); got != "virtio:d*|pci:v1AF4" {
		t.Errorf("alias %q", got)
	}
	if got := strings.Join(info.depends(), ","); got != "virtio_ring,virtio" {
		t.Errorf("depends %q", got)
	}
	if got := parseModinfo([]byte("depends=\x00")).depends(); len(got) != 0 {
		t.Errorf("empty depends gave %q", got)
	}
}
