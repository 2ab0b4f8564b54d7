package guestimage

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/modlist"
)

// fullKconfig is a .config that builds in every symbol the builder knows,
// for kernel version 6.1.0 with the local version -hull, with edits:
// "SYM=v" replaces or adds a value, "SYM=" unsets it.
func fullKconfig(edits ...string) string {
	vals := map[string]string{"LOCALVERSION": `"-hull"`, "NR_CPUS": "64", "MODULES": "y"}
	for _, s := range baseSymbols {
		vals[s] = "y"
	}
	for _, f := range featureSymbols {
		for _, s := range f.symbols {
			vals[s] = "y"
		}
	}
	for _, e := range edits {
		sym, v, _ := strings.Cut(e, "=")
		vals[sym] = v
	}
	var b strings.Builder
	b.WriteString("#\n# Automatically generated file; DO NOT EDIT.\n# Linux/x86 6.1.0 Kernel Configuration\n#\n")
	for _, sym := range slices.Sorted(func(yield func(string) bool) {
		for k := range vals {
			if !yield(k) {
				return
			}
		}
	}) {
		if vals[sym] == "" {
			b.WriteString("# CONFIG_" + sym + " is not set\n")
			continue
		}
		b.WriteString("CONFIG_" + sym + "=" + vals[sym] + "\n")
	}
	return b.String()
}

func TestParseKconfig(t *testing.T) {
	c, err := parseKconfig([]byte(fullKconfig("VIRTIO_NET=m", "VIRTIO_BLK=")))
	if err != nil {
		t.Fatal(err)
	}
	if c.version != "6.1.0" {
		t.Errorf("version %q, want 6.1.0", c.version)
	}
	if got := c.str("LOCALVERSION"); got != "-hull" {
		t.Errorf("LOCALVERSION %q, want -hull", got)
	}
	if c.values["VIRTIO_NET"] != "m" || c.values["NR_CPUS"] != "64" {
		t.Errorf("values %v", c.values)
	}
	if _, ok := c.values["VIRTIO_BLK"]; ok {
		t.Error("a symbol that is not set has a value")
	}
	for name, in := range map[string]string{
		"garbage":     "hello\n",
		"no value":    "CONFIG_X=\n",
		"no equals":   "CONFIG_X\n",
		"nothing set": "# CONFIG_X is not set\n",
	} {
		if _, err := parseKconfig([]byte(in)); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: error %v, want invalid argument", name, err)
		}
	}
}

// TestFeatureSymbols pins the mapping of each image feature to the symbols
// it needs, and that every feature has one.
func TestFeatureSymbols(t *testing.T) {
	want := map[string][]string{
		modlist.FeatureBusPCI:   {"PCI", "VIRTIO", "VIRTIO_PCI"},
		modlist.FeatureBusMMIO:  {"VIRTIO", "VIRTIO_MMIO"},
		modlist.FeatureSerial:   {"VIRTIO_CONSOLE"},
		modlist.FeatureVsock:    {"VSOCKETS", "VIRTIO_VSOCKETS"},
		modlist.FeatureVirtioFS: {"FUSE_FS", "VIRTIO_FS"},
		modlist.FeatureOverlay:  {"OVERLAY_FS"},
		modlist.FeatureNet:      {"INET", "VIRTIO_NET"},
		modlist.FeatureBlock:    {"BLK_DEV", "VIRTIO_BLK", "EROFS_FS"},
		modlist.FeaturePmem:     {"LIBNVDIMM", "BLK_DEV_PMEM", "ACPI_NFIT", "VIRTIO_PMEM", "FS_DAX"},
		modlist.FeatureBalloon:  {"VIRTIO_BALLOON", "PAGE_REPORTING"},
	}
	for _, f := range AllFeatures() {
		if got := FeatureSymbols(f); !slices.Equal(got, want[f]) {
			t.Errorf("%s: symbols %q, want %q", f, got, want[f])
		}
	}
	if len(want) != len(AllFeatures()) {
		t.Errorf("%d features mapped, the builder knows %d", len(want), len(AllFeatures()))
	}
	if FeatureSymbols("gpu") != nil {
		t.Error("an unknown feature has symbols")
	}
}

func TestCheckBuiltin(t *testing.T) {
	for _, tc := range []struct {
		name     string
		edits    []string
		features []string
		wantErr  error  // nil: accepted
		wantIn   string // the error must say this
	}{
		{"all built in", nil, AllFeatures(), nil, ""},
		{"module support on but unused", []string{"MODULES=y"}, AllFeatures(), nil, ""},
		{"a module", []string{"VIRTIO_NET=m"}, []string{modlist.FeatureNet}, ErrNeedsModules, "CONFIG_VIRTIO_NET=m (feature net)"},
		{"missing", []string{"VIRTIO_FS="}, []string{modlist.FeatureBusPCI, modlist.FeatureVirtioFS}, errdefs.ErrFailedPrecondition, "CONFIG_VIRTIO_FS is not set; feature virtio-fs"},
		{"dependency a module", []string{"LIBNVDIMM=m"}, []string{modlist.FeaturePmem}, ErrNeedsModules, "CONFIG_LIBNVDIMM=m"},
		{"odd value", []string{"OVERLAY_FS=n"}, []string{modlist.FeatureOverlay}, errdefs.ErrFailedPrecondition, "CONFIG_OVERLAY_FS=n"},
		{"feature not asked for", []string{"VIRTIO_PMEM=m", "VIRTIO_NET="}, []string{modlist.FeatureBusMMIO, modlist.FeatureVsock}, nil, ""},
		{"base missing", []string{"DEVTMPFS="}, []string{modlist.FeatureBlock}, errdefs.ErrFailedPrecondition, "CONFIG_DEVTMPFS is not set; every hull guest"},
		{"base a module", []string{"UNIX=m"}, nil, ErrNeedsModules, "CONFIG_UNIX=m"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseKconfig([]byte(fullKconfig(tc.edits...)))
			if err != nil {
				t.Fatal(err)
			}
			err = c.checkBuiltin(tc.features)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.wantIn) {
				t.Fatalf("error %v, want %v saying %q", err, tc.wantErr, tc.wantIn)
			}
			// A kernel that needs modules is refused as a failed precondition too.
			if !errors.Is(err, errdefs.ErrFailedPrecondition) {
				t.Errorf("error %v is not a failed precondition", err)
			}
		})
	}
}

// TestFragmentBuildsFeatures parses the hull kernel's config fragment
// (hack/kernel/hull.config) and checks that it sets every base symbol and
// every feature's symbols to =y, so the fragment and the feature table
// cannot drift apart unnoticed without a kernel build. build-kernel.sh
// checks that every value the fragment sets survives into the final .config.
func TestFragmentBuildsFeatures(t *testing.T) {
	path := filepath.Join("..", "..", "hack", "kernel", "hull.config")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := parseKconfig(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	check := func(what string, syms []string) {
		for _, s := range syms {
			if v, ok := c.values[s]; v != "y" {
				if !ok {
					v = "not set"
				}
				t.Errorf("%s: CONFIG_%s is %s, %s needs =y", path, s, v, what)
			}
		}
	}
	check("every hull guest", baseSymbols)
	check("a rootfs image (erofs on virtio-pmem with DAX)", rootfsSymbols)
	for _, f := range AllFeatures() {
		syms := FeatureSymbols(f)
		if len(syms) == 0 {
			t.Errorf("feature %s has no symbols", f)
		}
		check("feature "+f, syms)
	}
	if err := c.checkBuiltin(AllFeatures()); err != nil {
		t.Errorf("%s: %v", path, err)
	}
	// The fragment turns module support off: a local kernel has no modules.
	if v, ok := c.values["MODULES"]; ok {
		t.Errorf("%s: CONFIG_MODULES=%s, want it not set", path, v)
	}
	if c.str("LOCALVERSION") == "" {
		t.Errorf("%s: no CONFIG_LOCALVERSION: the release would not tell the hull kernel", path)
	}
}
