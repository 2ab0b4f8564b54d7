package guestimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"
	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/modlist"
)

const localRelease = "6.1.0-hull"

// fakeLocalVmlinux is a PVH ELF whose .rodata holds the kernel's format
// string (which must not be taken for the banner) and then its banner.
func fakeLocalVmlinux(pvh bool, release string) []byte {
	rodata := []byte("%s version %s (hull@hull)\x00Linux version " + release + " (hull@hull) (gcc (Debian 12.2.0-14) 12.2.0) #1 SMP PREEMPT_DYNAMIC\n\x00")
	notes := []fakeNote{{"Linux", 6, []byte("6.1.0\x00\x00\x00")}}
	if pvh {
		notes = append(notes, fakeNote{"Xen", xenNotePhys32Entry, []byte{0, 0, 0, 1}})
	}
	return fakeELF{typ: elf.ET_EXEC, sections: []fakeSection{{".rodata", rodata}}, notes: notes}.bytes()
}

// localKernelFiles writes a vmlinux and a .config into a new directory and
// returns their paths.
func localKernelFiles(t *testing.T, vmlinux []byte, config string) (string, string) {
	t.Helper()
	dir := t.TempDir()
	v, c := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "config")
	if err := os.WriteFile(v, vmlinux, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	return v, c
}

// localKernelOutput lays out a vmlinux and a .config in a new directory as
// hack/build-kernel.sh does: vmlinux-<release> and config-<release>, with
// the links vmlinux and config. It returns the directory.
func localKernelOutput(t *testing.T, vmlinux []byte, config string) string {
	t.Helper()
	dir := t.TempDir()
	for name, b := range map[string][]byte{"vmlinux": vmlinux, "config": []byte(config)} {
		if err := os.WriteFile(filepath.Join(dir, name+"-"+localRelease), b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(name+"-"+localRelease, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// resolved is p with its symbolic links resolved (a temporary directory may
// be under one).
func resolved(t *testing.T, p string) string {
	t.Helper()
	r, err := filepath.EvalSymlinks(p)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestBannerRelease(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"banner", "xx\x00Linux version 6.1.192-hull (hull@hull) (gcc) #1\n", "6.1.192-hull"},
		{"format string first", "%s version %s\x00Linux version %s (x)\x00Linux version 6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org)", "6.1.0-56-cloud-amd64"},
		{"no banner", "nothing here", ""},
		{"truncated", "Linux version 6.1.0", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := bannerRelease([]byte(tc.in))
			if tc.want == "" {
				if !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("release %q, error %v; want invalid argument", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("release %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestPrepareLocalKernel(t *testing.T) {
	for _, tc := range []struct {
		name    string
		vmlinux []byte
		config  string
		wantErr error
		wantIn  string
	}{
		{"good", fakeLocalVmlinux(true, localRelease), fullKconfig(), nil, ""},
		{"not PVH", fakeLocalVmlinux(false, localRelease), fullKconfig(), ErrNotPVH, "no PVH entry note"},
		{"not an ELF", []byte("MZ not a kernel"), fullKconfig(), errdefs.ErrInvalidArgument, "not an ELF"},
		{"other local version", fakeLocalVmlinux(true, "6.1.0-other"), fullKconfig(), errdefs.ErrInvalidArgument, `CONFIG_LOCALVERSION "-hull"`},
		{"other version", fakeLocalVmlinux(true, "6.2.0-hull"), fullKconfig(), errdefs.ErrInvalidArgument, "Linux 6.1.0"},
		{"config not a config", fakeLocalVmlinux(true, localRelease), "this is not a .config\n", errdefs.ErrInvalidArgument, "not a kernel config line"},
		// The config's version 6.1.0 is a prefix of these, but they are other versions.
		{"longer version", fakeLocalVmlinux(true, "6.1.01-hull"), fullKconfig(), errdefs.ErrInvalidArgument, "Linux 6.1.0"},
		{"sublevel version", fakeLocalVmlinux(true, "6.1.0.1-hull"), fullKconfig(), errdefs.ErrInvalidArgument, "Linux 6.1.0"},
		{"no local version", fakeLocalVmlinux(true, "6.1.0"), fullKconfig(), errdefs.ErrInvalidArgument, `CONFIG_LOCALVERSION "-hull"`},
		{"config without header", fakeLocalVmlinux(true, localRelease), strings.Replace(fullKconfig(), "# Linux/x86 6.1.0 Kernel Configuration\n", "", 1), errdefs.ErrInvalidArgument, "no version header"},
		// The banner's release becomes a file name: no path in it.
		{"release with a path", fakeLocalVmlinux(true, "6.1.0-hull/../../../etc/x"), fullKconfig(), errdefs.ErrInvalidArgument, "not a plain release"},
		{"release with dots", fakeLocalVmlinux(true, "6.1.0-hull..x"), fullKconfig(), errdefs.ErrInvalidArgument, "not a plain release"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, c := localKernelFiles(t, tc.vmlinux, tc.config)
			k, err := PrepareLocalKernel(v, c)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.wantIn) {
					t.Fatalf("error %v, want %v saying %q", err, tc.wantErr, tc.wantIn)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if k.Release != localRelease || k.Vmlinux != resolved(t, v) || k.Config != resolved(t, c) {
				t.Fatalf("kernel %+v", k)
			}
		})
	}
	if _, err := PrepareLocalKernel("", "x"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("no vmlinux: %v, want invalid argument", err)
	}
	v, _ := localKernelFiles(t, fakeLocalVmlinux(true, localRelease), "")
	if _, err := PrepareLocalKernel(v, filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing config: %v, want not exist", err)
	}
}

// readInitrd returns the files of an uncompressed initrd by name.
func readInitrd(t *testing.T, p string) map[string][]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	r := cpio.NewReader(bytes.NewReader(b))
	for {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if files[h.Name], err = io.ReadAll(r); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBuildLocalKernel builds an image with a local kernel twice, from
// copies of the inputs in different directories (given once through
// build-kernel.sh's links, once directly): the same bytes each time, the
// kernel copied, no module in the initrd, the features recorded as built in,
// in the module list and in the manifest.
func TestBuildLocalKernel(t *testing.T) {
	vmlinuxBytes := fakeLocalVmlinux(true, localRelease)
	config := fullKconfig("VIRTIO_PMEM=m")
	agent := staticInit(t)
	features := []string{modlist.FeatureVsock, modlist.FeatureBusPCI, modlist.FeatureVirtioFS}
	want := []string{modlist.FeatureBusPCI, modlist.FeatureVsock, modlist.FeatureVirtioFS} // canonical order
	in1, in2 := localKernelOutput(t, vmlinuxBytes, config), localKernelOutput(t, vmlinuxBytes, config)
	if in1 == in2 {
		t.Fatal("the two builds must read their inputs from different directories")
	}
	inputs := [][2]string{
		{filepath.Join(in1, "vmlinux"), filepath.Join(in1, "config")},
		{filepath.Join(in2, "vmlinux-"+localRelease), filepath.Join(in2, "config-"+localRelease)},
	}
	var outs []string
	for i, in := range inputs {
		v, c := in[0], in[1]
		out := filepath.Join(t.TempDir(), "out")
		// The package options are ignored: no apt, no cache.
		m, err := Build(context.Background(), Options{
			KernelPackage: "linux-image-does-not-exist", CacheDir: filepath.Join(t.TempDir(), "unused"),
			KernelVmlinux: v, KernelConfig: c, AgentBinary: agent, PauseBinary: agent, OutputDir: out, Features: features,
		})
		if err != nil {
			t.Fatalf("build %d: %v", i, err)
		}
		if m.Kernel.Release != localRelease || m.Kernel.File != "vmlinux-"+localRelease || m.Kernel.Format != KernelFormatPVH || m.Kernel.Package != "" {
			t.Errorf("kernel %+v", m.Kernel)
		}
		cfgSum, _, _ := hashFile(c)
		wantLocal := LocalKernelInfo{Vmlinux: "vmlinux-" + localRelease, Config: "config-" + localRelease, ConfigSHA256: cfgSum}
		if l := m.Kernel.Local; l == nil || *l != wantLocal {
			t.Errorf("kernel origin %+v, want %+v", m.Kernel.Local, wantLocal)
		}
		if !slices.Equal(m.Features, want) || !slices.Equal(m.Builtin, want) || len(m.Modules) != 0 {
			t.Errorf("features %q, built in %q, modules %v; want %q built in and no module", m.Features, m.Builtin, m.Modules, want)
		}
		if got, err := os.ReadFile(filepath.Join(out, m.Kernel.File)); err != nil || !bytes.Equal(got, vmlinuxBytes) {
			t.Errorf("the image's kernel is not the vmlinux (%v)", err)
		}
		read, err := ReadManifest(out)
		if err != nil {
			t.Fatal(err)
		}
		if err := read.Verify(out); err != nil {
			t.Fatal(err)
		}
		if read.Kernel.Local == nil || !slices.Equal(read.Builtin, want) {
			t.Errorf("manifest read back lost the origin or the built-ins: %+v", read)
		}
		files := readInitrd(t, filepath.Join(out, m.Initrd.File))
		list, err := modlist.Parse(files[strings.TrimPrefix(modlist.Path, "/")])
		if err != nil {
			t.Fatal(err)
		}
		if list.KernelRelease != localRelease || !slices.Equal(list.Builtin, want) || len(list.Modules) != 0 {
			t.Errorf("module list %+v", list)
		}
		for name := range files {
			if strings.HasPrefix(name, "lib/modules") {
				t.Errorf("initrd holds %s", name)
			}
		}
		outs = append(outs, out)
	}
	for _, name := range []string{ManifestFile, "vmlinux-" + localRelease, "initrd-" + localRelease + ".img"} {
		a, errA := os.ReadFile(filepath.Join(outs[0], name))
		b, errB := os.ReadFile(filepath.Join(outs[1], name))
		if errA != nil || errB != nil || !bytes.Equal(a, b) {
			t.Errorf("%s differs between builds (%v, %v)", name, errA, errB)
		}
	}
	// The manifest as written: nothing in it depends on where the inputs were.
	b, err := os.ReadFile(filepath.Join(outs[0], ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{in1, in2, resolved(t, in1), resolved(t, in2), os.TempDir()} {
		if bytes.Contains(b, []byte(dir)) {
			t.Errorf("the manifest names the input location %s:\n%s", dir, b)
		}
	}
	compareGolden(t, filepath.Join("testdata", "manifest-local.json"), b, false)
}

// TestLocalKernelConfigHashed: the manifest's config_sha256 is that of the
// config the builder parsed and checked, even if the file changes after.
func TestLocalKernelConfigHashed(t *testing.T) {
	config := fullKconfig()
	v, c := localKernelFiles(t, fakeLocalVmlinux(true, localRelease), config)
	lk, err := PrepareLocalKernel(v, c)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c, []byte(fullKconfig("VIRTIO_FS=m")), 0o644); err != nil {
		t.Fatal(err)
	}
	ki, err := writeLocalKernel(lk, t.TempDir(), newProgress(nil))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(config))
	if want := hex.EncodeToString(sum[:]); ki.Local == nil || ki.Local.ConfigSHA256 != want {
		t.Errorf("kernel origin %+v, want config_sha256 %s (the bytes checked)", ki.Local, want)
	}
}

// TestWriteKernelRelease: a kernel whose release is not a plain file name
// is refused before anything is written.
func TestWriteKernelRelease(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	lk := &LocalKernel{Vmlinux: "/x/vmlinux", Config: "/x/config", Release: "../../escaped", image: []byte("kernel")}
	if _, err := writeLocalKernel(lk, out, newProgress(nil)); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("local kernel released as %q: %v, want invalid argument", lk.Release, err)
	}
	k := &Kernel{Package: "linux-image-x", Release: "6.1.0/../../escaped", Dir: t.TempDir()}
	if _, err := writeKernel(context.Background(), k, out, newProgress(nil)); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("package kernel released as %q: %v, want invalid argument", k.Release, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 {
		t.Errorf("%s holds %v (%v), want only out", dir, entries, err)
	}
}

func TestBuildLocalKernelRejects(t *testing.T) {
	v, c := localKernelFiles(t, fakeLocalVmlinux(true, localRelease), fullKconfig("VIRTIO_FS=m", "OVERLAY_FS="))
	agent := staticInit(t)
	for _, tc := range []struct {
		name    string
		o       Options
		wantErr error
		wantIn  string
	}{
		{"feature a module", Options{KernelVmlinux: v, KernelConfig: c, Features: []string{modlist.FeatureVirtioFS}}, ErrNeedsModules, "CONFIG_VIRTIO_FS=m (feature virtio-fs)"},
		{"feature missing", Options{KernelVmlinux: v, KernelConfig: c, Features: []string{modlist.FeatureOverlay}}, errdefs.ErrFailedPrecondition, "CONFIG_OVERLAY_FS is not set"},
		{"all features by default", Options{KernelVmlinux: v, KernelConfig: c}, errdefs.ErrFailedPrecondition, "feature virtio-fs"},
		{"no config", Options{KernelVmlinux: v}, errdefs.ErrInvalidArgument, "needs both"},
		{"no vmlinux", Options{KernelConfig: c}, errdefs.ErrInvalidArgument, "needs both"},
		{"and a deb", Options{KernelVmlinux: v, KernelConfig: c, KernelDeb: "x.deb"}, errdefs.ErrInvalidArgument, "exclude each other"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			tc.o.OutputDir, tc.o.CacheDir, tc.o.AgentBinary, tc.o.PauseBinary = out, t.TempDir(), agent, agent
			_, err := Build(context.Background(), tc.o)
			if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.wantIn) {
				t.Fatalf("error %v, want %v saying %q", err, tc.wantErr, tc.wantIn)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("a refused build left %s (%v)", out, err)
			}
		})
	}
}

// TestWriteInitrdLocalKernel: the initrd writer checks a local kernel's
// config itself and takes no package kernel beside it.
func TestWriteInitrdLocalKernel(t *testing.T) {
	v, c := localKernelFiles(t, fakeLocalVmlinux(true, localRelease), fullKconfig("VIRTIO_NET=m"))
	lk, err := PrepareLocalKernel(v, c)
	if err != nil {
		t.Fatal(err)
	}
	init := staticInit(t)
	if _, err := WriteInitrd(context.Background(), io.Discard, InitrdSpec{Init: init, LocalKernel: lk, Features: []string{modlist.FeatureNet}}); !errors.Is(err, ErrNeedsModules) {
		t.Errorf("net built as a module: %v, want %v", err, ErrNeedsModules)
	}
	if _, err := WriteInitrd(context.Background(), io.Discard, InitrdSpec{Init: init, LocalKernel: lk, Kernel: fakeKernel(t)}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("both kernels: %v, want invalid argument", err)
	}
}
