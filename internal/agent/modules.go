package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/modlist"
)

// detectBus names the virtio bus feature of this guest: PCI when the PCI bus
// has devices (q35), MMIO otherwise (microvm).
func detectBus(sysfs string) string {
	ents, err := os.ReadDir(sysfs + "/bus/pci/devices")
	if err == nil && len(ents) > 0 {
		return modlist.FeatureBusPCI
	}
	return modlist.FeatureBusMMIO
}

// otherBus is the bus feature that is not bus.
func otherBus(bus string) string {
	if bus == modlist.FeatureBusPCI {
		return modlist.FeatureBusMMIO
	}
	return modlist.FeatureBusPCI
}

// splitModules divides the list into the modules the transport needs (those
// of the transport's feature and of the bus), to load before serving, and the
// rest, to load after. Both keep list order. Modules needed only by the other
// bus are left out.
func splitModules(mods []modlist.Module, transportFeature, bus string) (first, rest []modlist.Module) {
	other := otherBus(bus)
	for _, m := range mods {
		switch {
		case m.Needs(transportFeature, bus):
			first = append(first, m)
		case len(m.Features) > 0 && !slices.ContainsFunc(m.Features, func(f string) bool { return f != other }):
			// Only the other bus needs it.
		default:
			rest = append(rest, m)
		}
	}
	return first, rest
}

// splitStorageModules divides the modules that load after serving began
// into those of the storage features (the sandbox's mounts wait for them)
// and the rest. Both keep list order, so dependencies still come first: a
// dependency of a storage module is itself needed by that feature.
func splitStorageModules(mods []modlist.Module) (storage, rest []modlist.Module) {
	for _, m := range mods {
		if m.Needs(modlist.FeatureVirtioFS, modlist.FeatureOverlay) {
			storage = append(storage, m)
		} else {
			rest = append(rest, m)
		}
	}
	return storage, rest
}

// loadModule loads one module file. A module that is already loaded is not an
// error.
func loadModule(ctx context.Context, m modlist.Module) error {
	start := time.Now()
	f, err := os.Open(m.Path)
	if err != nil {
		return fmt.Errorf("loading module %s: %w", m.Name, err)
	}
	defer func() { _ = f.Close() }()
	flags := 0
	if strings.HasSuffix(m.Path, ".xz") || strings.HasSuffix(m.Path, ".zst") || strings.HasSuffix(m.Path, ".gz") {
		flags |= unix.MODULE_INIT_COMPRESSED_FILE
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("loading module %s: %w", m.Name, err)
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) { lerr = unix.FinitModule(int(fd), "", flags) }); err != nil {
		return fmt.Errorf("loading module %s: %w", m.Name, err)
	}
	if errors.Is(lerr, unix.EEXIST) {
		log.G(ctx).WithField("module", m.Name).Debug("module already loaded")
		return nil
	}
	if lerr != nil {
		return fmt.Errorf("loading module %s from %s: %w", m.Name, m.Path, lerr)
	}
	log.G(ctx).WithFields(log.Fields{"module": m.Name, "took": time.Since(start)}).Debug("module loaded")
	return nil
}

// moduleResult is what loading a group of modules produced.
type moduleResult struct {
	loaded []string
	failed map[string]error
}

// loadModules loads mods in order with load and records the outcome. A
// module whose dependency failed is still tried: the kernel says what is
// missing.
func loadModules(ctx context.Context, mods []modlist.Module, load func(context.Context, modlist.Module) error) moduleResult {
	r := moduleResult{failed: map[string]error{}}
	for _, m := range mods {
		if err := load(ctx, m); err != nil {
			r.failed[m.Name] = err
			continue
		}
		r.loaded = append(r.loaded, m.Name)
	}
	return r
}

// features lists, sorted, the features the kernel has built in and those of
// the list's modules whose modules are all in loaded. A module that failed or
// was not tried makes its features missing unless the kernel has them built
// in.
func features(list *modlist.List, loaded []string) []string {
	ok := map[string]bool{}
	for _, m := range list.Modules {
		in := slices.Contains(loaded, m.Name)
		for _, f := range m.Features {
			if v, seen := ok[f]; !seen {
				ok[f] = in
			} else {
				ok[f] = v && in
			}
		}
	}
	for _, f := range list.Builtin {
		ok[f] = true
	}
	var out []string
	for f, v := range ok {
		if v {
			out = append(out, f)
		}
	}
	slices.Sort(out)
	return out
}
