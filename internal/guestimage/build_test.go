package guestimage

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// fakeDeb builds a kernel package with dpkg-deb: a bzImage whose payload is
// a stand-in vmlinux (with or without the PVH note) and a few modules.
func fakeDeb(t *testing.T, pvh bool) string {
	t.Helper()
	dpkgDeb := requireTool(t, "dpkg-deb")
	k := fakeKernel(t) // lays out lib/modules/<release>
	vmlinux := pvhELF()
	if !pvh {
		vmlinux = fakeELF{typ: elf.ET_EXEC, notes: []fakeNote{{"Linux", 6, []byte("6.1\x00")}}}.bytes()
	}
	boot := filepath.Join(k.Dir, "boot")
	if err := os.MkdirAll(filepath.Join(k.Dir, "DEBIAN"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(boot, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(boot, "vmlinuz-"+fakeRelease), fakeBzImage(compressPayload(t, "zstd", vmlinux), 27, 0x20f), 0o644); err != nil {
		t.Fatal(err)
	}
	control := "Package: linux-image-" + fakeRelease + "\nVersion: 6.1.1-1\nArchitecture: amd64\nMaintainer: hull tests <test@invalid>\nDescription: test kernel\n"
	if err := os.WriteFile(filepath.Join(k.Dir, "DEBIAN", "control"), []byte(control), 0o644); err != nil {
		t.Fatal(err)
	}
	deb := filepath.Join(t.TempDir(), "linux-image-"+fakeRelease+"_6.1.1-1_amd64.deb")
	if out, err := exec.Command(dpkgDeb, "--root-owner-group", "-Zgzip", "--build", k.Dir, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --build: %v\n%s", err, out)
	}
	return deb
}

// TestBuild runs the whole build on a synthetic package, twice, and checks
// the outputs are byte-identical and verify.
func TestBuild(t *testing.T) {
	for _, tc := range []struct {
		name       string
		pvh        bool
		wantFormat string
		wantFile   string
	}{
		{"pvh", true, KernelFormatPVH, "vmlinux-" + fakeRelease},
		{"bzImage fallback", false, KernelFormatBzImage, "vmlinuz-" + fakeRelease},
	} {
		t.Run(tc.name, func(t *testing.T) {
			deb := fakeDeb(t, tc.pvh)
			cache := t.TempDir()
			agent := staticInit(t)
			var outs []string
			for i := range 2 {
				out := filepath.Join(t.TempDir(), "out")
				var progress bytes.Buffer
				m, err := Build(context.Background(), Options{
					KernelDeb: deb, CacheDir: cache, AgentBinary: agent, PauseBinary: agent, OutputDir: out,
					Features: []string{"block", "overlay"}, Progress: &progress,
				})
				if err != nil {
					t.Fatalf("build %d: %v", i, err)
				}
				// The default: the guest boots fastest from an uncompressed
				// initrd (docs/benchmarks.md, Boot).
				if m.Initrd.Compression != CompressionNone {
					t.Errorf("initrd compression %q, want the default %q", m.Initrd.Compression, CompressionNone)
				}
				if m.Kernel.Format != tc.wantFormat || m.Kernel.File != tc.wantFile {
					t.Errorf("kernel %s %s, want %s %s", m.Kernel.Format, m.Kernel.File, tc.wantFormat, tc.wantFile)
				}
				if m.Kernel.Package != "linux-image-"+fakeRelease || m.Kernel.PackageVersion != "6.1.1-1" || m.Kernel.Release != fakeRelease {
					t.Errorf("kernel %+v", m.Kernel)
				}
				if len(m.Modules) != 5 {
					t.Errorf("modules %+v", m.Modules)
				}
				if !tc.pvh && !strings.Contains(progress.String(), "warning: cannot boot") {
					t.Errorf("no fallback warning in progress:\n%s", progress.String())
				}
				// The package is unpacked once per cache.
				if unpacked := strings.Contains(progress.String(), "unpacking"); unpacked != (i == 0) {
					t.Errorf("build %d: unpacked %v; progress:\n%s", i, unpacked, progress.String())
				}
				read, err := ReadManifest(out)
				if err != nil {
					t.Fatal(err)
				}
				if err := read.Verify(out); err != nil {
					t.Fatal(err)
				}
				outs = append(outs, out)
			}
			for _, name := range []string{ManifestFile, tc.wantFile, "initrd-" + fakeRelease + ".img"} {
				a, errA := os.ReadFile(filepath.Join(outs[0], name))
				b, errB := os.ReadFile(filepath.Join(outs[1], name))
				if errA != nil || errB != nil || !bytes.Equal(a, b) {
					t.Errorf("%s differs between builds (%v, %v)", name, errA, errB)
				}
			}
			// Nothing but the three files: no temporaries left behind.
			if ents, _ := os.ReadDir(outs[0]); len(ents) != 3 {
				t.Errorf("output holds %d entries", len(ents))
			}
		})
	}
}

func TestBuildRejects(t *testing.T) {
	for _, tc := range []struct {
		name    string
		o       Options
		wantErr error
	}{
		{"erofs not yet", Options{Format: FormatErofs}, errdefs.ErrNotImplemented},
		{"ext4 not yet", Options{Format: FormatExt4}, errdefs.ErrNotImplemented},
		{"unknown format", Options{Format: "squashfs"}, errdefs.ErrInvalidArgument},
		{"unknown compression", Options{Compression: "bzip2"}, errdefs.ErrInvalidArgument},
		{"unknown feature", Options{Features: []string{"gpu"}}, errdefs.ErrInvalidArgument},
		{"no agent", Options{}, errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			tc.o.OutputDir, tc.o.CacheDir = out, t.TempDir()
			_, err := Build(context.Background(), tc.o)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("a rejected build created %s", out)
			}
		})
	}
}

func TestControlFields(t *testing.T) {
	show := "Package: linux-image-cloud-amd64\nSource: linux-signed-amd64 (6.1.192+2)\nVersion: 6.1.192-2\n" +
		"Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\nDescription: Linux for x86-64 cloud (meta-package)\n" +
		" This package depends on the latest Linux kernel\n\nPackage: second\nVersion: 2\n"
	f := controlFields([]byte(show))
	for key, want := range map[string]string{
		"Package": "linux-image-cloud-amd64",
		"Version": "6.1.192-2",
		"Depends": "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)",
	} {
		if f[key] != want {
			t.Errorf("%s = %q, want %q", key, f[key], want)
		}
	}
}

func TestSplitDepends(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)", "linux-image-6.1.0-56-cloud-amd64"},
		{"kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool", "kmod linux-base initramfs-tools"},
		{"libc6:any(>= 2)", "libc6"},
		{"", ""},
	} {
		if got := strings.Join(splitDepends(tc.in), " "); got != tc.want {
			t.Errorf("splitDepends(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestDebFileName(t *testing.T) {
	if got, want := debFileName("linux-image-6.1.0-56-cloud-amd64", "6.1.192-2", "amd64"), "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	if got, want := debFileName("x", "1:2.0", "all"), "x_1%3a2.0_all.deb"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}
