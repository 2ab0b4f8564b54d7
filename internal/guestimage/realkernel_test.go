package guestimage

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hull-runtime/hull/internal/modlist"
)

// The tests in this file use a real Debian kernel package; see
// requireKernelDeb.

func TestRealKernelVmlinux(t *testing.T) {
	k := realKernel(t)
	bz, err := os.ReadFile(k.BzImage())
	if err != nil {
		t.Fatal(err)
	}
	h, err := parseSetupHeader(bz)
	if err != nil {
		t.Fatal(err)
	}
	comp, err := payloadCompression(bz[h.PayloadOffset:])
	if err != nil {
		t.Fatal(err)
	}
	vmlinux, err := ExtractVmlinux(bz)
	if err != nil {
		t.Fatalf("extracting vmlinux (%s payload): %v", comp, err)
	}
	t.Logf("%s: boot protocol %x, %s payload of %d bytes, vmlinux %d bytes", k.Release, h.Version, comp, h.PayloadLength, len(vmlinux))
}

// TestRealKernelModules resolves each feature on its own and checks the
// result against the package's modinfo, and against the golden list for
// this release when there is one.
func TestRealKernelModules(t *testing.T) {
	k := realKernel(t)
	ctx := context.Background()
	got := map[string][]string{}
	for _, f := range AllFeatures() {
		t.Run(f, func(t *testing.T) {
			list, err := ResolveModules(ctx, k, []string{f})
			if err != nil {
				t.Fatal(err)
			}
			if list.KernelRelease != k.Release {
				t.Errorf("release %q, want %q", list.KernelRelease, k.Release)
			}
			checkLoadOrder(t, k, list)
			for _, m := range list.Modules {
				got[f] = append(got[f], m.Name)
			}
		})
	}
	all, err := ResolveModules(ctx, k, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkLoadOrder(t, k, all)
	if i, j := indexOf(all, "virtio_ring"), indexOf(all, "virtio"); i < 0 || j < 0 || i > j {
		t.Errorf("virtio_ring at %d, virtio at %d: want virtio_ring first", i, j)
	}
	// Golden per release: other releases only get the checks above.
	golden := filepath.Join("testdata", "modules", k.Release+".json")
	b, err := json.MarshalIndent(struct {
		Features map[string][]string `json:"features"`
		All      *modlist.List       `json:"all"`
	}{got, all}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	compareGolden(t, golden, append(b, '\n'), true)
}

// checkLoadOrder checks that every module comes after its dependencies
// (read with modinfo(8) when installed, else with our own reader) and that
// nothing built in is listed.
func checkLoadOrder(t *testing.T, k *Kernel, list *modlist.List) {
	t.Helper()
	modinfoTool, _ := exec.LookPath("modinfo")
	idx, err := loadModuleIndex(k.ModulesDir(), k.Release)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range list.Modules {
		pos[m.Name] = i
	}
	for i, m := range list.Modules {
		if idx.builtin[m.Name] {
			t.Errorf("%s is built in but listed", m.Name)
		}
		host := filepath.Join(k.Dir, m.Path)
		var deps []string
		if modinfoTool != "" {
			out, err := exec.Command(modinfoTool, "-F", "depends", host).Output()
			if err != nil {
				t.Fatalf("modinfo %s: %v", host, err)
			}
			for _, d := range strings.Split(strings.TrimSpace(string(out)), ",") {
				if d != "" {
					deps = append(deps, d)
				}
			}
		} else {
			info, err := readModinfo(host)
			if err != nil {
				t.Fatal(err)
			}
			deps = info.depends()
		}
		for _, d := range deps {
			if idx.builtin[d] {
				continue
			}
			j, ok := pos[d]
			if !ok {
				t.Errorf("%s depends on %s, which is not listed", m.Name, d)
			} else if j > i {
				t.Errorf("%s (at %d) comes before its dependency %s (at %d)", m.Name, i, d, j)
			}
		}
	}
}

func indexOf(l *modlist.List, name string) int {
	return slices.IndexFunc(l.Modules, func(m modlist.Module) bool { return m.Name == name })
}

// TestRealKernelBuild builds the image twice into two directories and
// checks that the bytes are the same and the manifest verifies.
func TestRealKernelBuild(t *testing.T) {
	k := realKernel(t)
	agent := bootInit(t)
	cache := filepath.Join(shared, "cache")
	var outs []string
	for i := range 2 {
		out := filepath.Join(t.TempDir(), "out")
		var progress bytes.Buffer
		m, err := Build(context.Background(), Options{
			KernelDeb: k.Deb, CacheDir: cache, AgentBinary: agent, PauseBinary: agent, OutputDir: out, Progress: &progress,
		})
		if err != nil {
			t.Fatalf("build %d: %v", i, err)
		}
		t.Logf("build %d:\n%s", i, progress.String())
		if m.Kernel.Format != KernelFormatPVH {
			t.Errorf("kernel format %s, want %s", m.Kernel.Format, KernelFormatPVH)
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
	for _, name := range []string{ManifestFile, "vmlinux-" + k.Release, "initrd-" + k.Release + ".img"} {
		a, err := os.ReadFile(filepath.Join(outs[0], name))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(outs[1], name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs between two builds", name)
		}
	}
}
