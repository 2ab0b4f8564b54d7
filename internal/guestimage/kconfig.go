package guestimage

import (
	"bufio"
	"bytes"
	"fmt"
	"slices"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/modlist"
)

// kconfig is a kernel's .config: symbol (without the CONFIG_ prefix) to
// value ("y", "m", a number or a quoted string). A symbol that is not set
// is absent.
type kconfig struct {
	// version is from the header comment ("# Linux/x86 6.1.192 Kernel
	// Configuration"), or "".
	version string
	values  map[string]string
}

// parseKconfig reads a .config. Lines it does not know (comments other than
// "is not set" and the header) are ignored; a malformed assignment is an
// error.
func parseKconfig(b []byte) (*kconfig, error) {
	c := &kconfig{values: map[string]string{}}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "":
		case strings.HasPrefix(line, "#"):
			// "# Linux/x86 6.1.192 Kernel Configuration"
			f := strings.Fields(line)
			if c.version == "" && len(f) == 5 && strings.HasPrefix(f[1], "Linux/") && f[3] == "Kernel" && f[4] == "Configuration" {
				c.version = f[2]
			}
		case strings.HasPrefix(line, "CONFIG_"):
			sym, val, ok := strings.Cut(strings.TrimPrefix(line, "CONFIG_"), "=")
			if !ok || sym == "" || val == "" || strings.ContainsAny(sym, " \t") {
				return nil, fmt.Errorf("line %d: want CONFIG_<symbol>=<value>, got %q: %w", n, line, errdefs.ErrInvalidArgument)
			}
			c.values[sym] = val
		default:
			return nil, fmt.Errorf("line %d: not a kernel config line: %q: %w", n, line, errdefs.ErrInvalidArgument)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(c.values) == 0 {
		return nil, fmt.Errorf("no CONFIG_ symbol set: not a kernel .config: %w", errdefs.ErrInvalidArgument)
	}
	return c, nil
}

// str is the value of a string symbol without its quotes, or "".
func (c *kconfig) str(sym string) string {
	v := c.values[sym]
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		return v[1 : len(v)-1]
	}
	return ""
}

// baseSymbols are what any hull guest needs whatever its features: the
// PVH entry QEMU boots, the initrd, and what the agent mounts and uses for
// containers (internal/agent: init.go, containers).
var baseSymbols = []string{
	"PVH", "BLK_DEV_INITRD", "PROC_FS", "SYSFS", "DEVTMPFS", "TMPFS",
	"UNIX98_PTYS", "UNIX", "CGROUPS", "NAMESPACES", "SECCOMP_FILTER",
}

// featureSymbols are the config symbols each image feature needs built in:
// the counterparts of the modules in featureRoots (modules.go), with the
// subsystems those modules depend on.
var featureSymbols = []struct {
	feature string
	symbols []string
}{
	{modlist.FeatureBusPCI, []string{"PCI", "VIRTIO", "VIRTIO_PCI"}},
	{modlist.FeatureBusMMIO, []string{"VIRTIO", "VIRTIO_MMIO"}},
	{modlist.FeatureSerial, []string{"VIRTIO_CONSOLE"}},
	{modlist.FeatureVsock, []string{"VSOCKETS", "VIRTIO_VSOCKETS"}},
	{modlist.FeatureVirtioFS, []string{"FUSE_FS", "VIRTIO_FS"}},
	{modlist.FeatureOverlay, []string{"OVERLAY_FS"}},
	{modlist.FeatureNet, []string{"INET", "VIRTIO_NET"}},
	{modlist.FeatureBlock, []string{"BLK_DEV", "VIRTIO_BLK", "EROFS_FS"}},
	{modlist.FeaturePmem, []string{"LIBNVDIMM", "BLK_DEV_PMEM", "ACPI_NFIT", "VIRTIO_PMEM", "FS_DAX"}},
	{modlist.FeatureBalloon, []string{"VIRTIO_BALLOON", "PAGE_REPORTING"}},
}

// FeatureSymbols returns the config symbols (without CONFIG_) a feature
// needs built in, or nil for an unknown feature.
func FeatureSymbols(feature string) []string {
	for _, f := range featureSymbols {
		if f.feature == feature {
			return slices.Clone(f.symbols)
		}
	}
	return nil
}

// ErrNeedsModules is returned for a kernel config that builds a symbol the
// image needs as a module: a kernel given without a package has no modules.
var ErrNeedsModules = fmt.Errorf("kernel needs modules for it, and a kernel without a package has none: %w", errdefs.ErrFailedPrecondition)

// checkBuiltin checks that the config builds in the base symbols and those
// of every feature (canonical names, as normalizeFeatures returns them). The
// error names the first symbol that is missing or a module, and the feature
// that needs it.
func (c *kconfig) checkBuiltin(features []string) error {
	check := func(what string, syms []string) error {
		for _, s := range syms {
			switch v, ok := c.values[s]; {
			case v == "y":
			case v == "m":
				return fmt.Errorf("CONFIG_%s=m (%s): %w", s, what, ErrNeedsModules)
			case !ok:
				return fmt.Errorf("CONFIG_%s is not set; %s needs it built in (=y): %w", s, what, errdefs.ErrFailedPrecondition)
			default:
				return fmt.Errorf("CONFIG_%s=%s; %s needs it built in (=y): %w", s, v, what, errdefs.ErrFailedPrecondition)
			}
		}
		return nil
	}
	if err := check("every hull guest", baseSymbols); err != nil {
		return err
	}
	for _, f := range features {
		syms := FeatureSymbols(f)
		if syms == nil {
			return fmt.Errorf("feature %q has no config symbols: %w", f, errdefs.ErrInvalidArgument)
		}
		if err := check("feature "+f, syms); err != nil {
			return err
		}
	}
	return nil
}
