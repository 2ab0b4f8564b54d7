package guestimage

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/hull-runtime/hull/internal/modlist"
)

// featureRoot is a feature and the modules that provide it; their
// dependencies are added by the resolver.
type featureRoot struct {
	feature string
	modules []string
}

// featureRoots is the feature → module map, in the canonical feature order.
//
// pmem covers both ways a DAX image reaches the guest: virtio_pmem for a
// virtio-pmem device, nfit for a QEMU nvdimm described by the ACPI NFIT
// table; nd_pmem binds the resulting namespace as /dev/pmemN, which is what
// a filesystem mounts with -o dax. dax_pmem (device-DAX, /dev/daxN.M) and
// nd_e820 (memmap= ranges) are not needed for that and are left out.
var featureRoots = []featureRoot{
	{modlist.FeatureBusPCI, []string{"virtio_pci"}},
	{modlist.FeatureBusMMIO, []string{"virtio_mmio"}},
	{modlist.FeatureSerial, []string{"virtio_console"}},
	{modlist.FeatureVsock, []string{"vmw_vsock_virtio_transport"}},
	{modlist.FeatureVirtioFS, []string{"virtiofs"}},
	{modlist.FeatureOverlay, []string{"overlay"}},
	{modlist.FeatureNet, []string{"virtio_net"}},
	{modlist.FeatureBlock, []string{"virtio_blk", "erofs"}},
	{modlist.FeaturePmem, []string{"virtio_pmem", "nd_pmem", "nfit"}},
	{modlist.FeatureBalloon, []string{"virtio_balloon"}},
}

// AllFeatures returns every feature name the builder knows, in canonical
// order.
func AllFeatures() []string {
	names := make([]string, len(featureRoots))
	for i, r := range featureRoots {
		names[i] = r.feature
	}
	return names
}

// normalizeFeatures checks the names, drops duplicates and returns them in
// canonical order; empty means all.
func normalizeFeatures(features []string) ([]string, error) {
	if len(features) == 0 {
		return AllFeatures(), nil
	}
	known := AllFeatures()
	for _, f := range features {
		if !slices.Contains(known, f) {
			return nil, fmt.Errorf("unknown feature %q (known: %s): %w", f, strings.Join(known, ", "), errdefs.ErrInvalidArgument)
		}
	}
	var out []string
	for _, f := range known {
		if slices.Contains(features, f) {
			out = append(out, f)
		}
	}
	return out, nil
}

// ResolveModules returns the modules the features need from the kernel
// package, dependencies first, with guest paths under /lib/modules/<release>.
func ResolveModules(ctx context.Context, k *Kernel, features []string) (*modlist.List, error) {
	features, err := normalizeFeatures(features)
	if err != nil {
		return nil, err
	}
	idx, err := loadModuleIndex(k.ModulesDir(), k.Release)
	if err != nil {
		return nil, err
	}
	var roots []featureRoot
	for _, r := range featureRoots {
		if slices.Contains(features, r.feature) {
			roots = append(roots, r)
		}
	}
	return resolveModules(ctx, idx, roots)
}

// moduleIndex is what the builder knows about a lib/modules/<release> tree
// without a modules.dep.
type moduleIndex struct {
	dir        string
	release    string
	paths      map[string]string // module name -> path relative to dir, slash-separated
	compressed map[string]string // module name -> path, for .ko.xz/.ko.zst/.ko.gz
	builtin    map[string]bool
}

// moduleName is the kernel's name for a module file: the base name without
// the suffix, dashes turned into underscores.
func moduleName(file string) string {
	base := path.Base(filepath.ToSlash(file))
	base, _, _ = strings.Cut(base, ".ko")
	return strings.ReplaceAll(base, "-", "_")
}

func loadModuleIndex(dir, release string) (*moduleIndex, error) {
	idx := &moduleIndex{dir: dir, release: release, paths: map[string]string{},
		compressed: map[string]string{}, builtin: map[string]bool{}}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		switch {
		case strings.HasSuffix(rel, ".ko"):
			name := moduleName(rel)
			if prev, ok := idx.paths[name]; ok {
				return fmt.Errorf("module %s twice: %s and %s: %w", name, prev, rel, errdefs.ErrConflict)
			}
			idx.paths[name] = rel
		case strings.Contains(path.Base(rel), ".ko."):
			idx.compressed[moduleName(rel)] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("indexing modules in %s: %w", dir, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "modules.builtin"))
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			idx.builtin[moduleName(line)] = true
		}
	}
	return idx, nil
}

// modinfo is the parsed .modinfo section of a module: every key with its
// values in file order (alias= and the like repeat).
type modinfo map[string][]string

func (m modinfo) get(key string) string {
	if v := m[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// readModinfo reads the .modinfo section, a run of NUL-terminated
// key=value strings.
func readModinfo(file string) (modinfo, error) {
	f, err := elf.Open(file)
	if err != nil {
		return nil, fmt.Errorf("reading module %s: %w", file, err)
	}
	defer func() { _ = f.Close() }()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s has no .modinfo section: %w", file, errdefs.ErrInvalidArgument)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("reading .modinfo of %s: %w", file, err)
	}
	return parseModinfo(data), nil
}

func parseModinfo(data []byte) modinfo {
	info := modinfo{}
	for _, kv := range bytes.Split(data, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if ok && k != "" {
			info[k] = append(info[k], v)
		}
	}
	return info
}

// depends lists a module's dependencies from its modinfo.
func (m modinfo) depends() []string {
	var deps []string
	for _, d := range strings.Split(m.get("depends"), ",") {
		if d = strings.TrimSpace(d); d != "" {
			deps = append(deps, strings.ReplaceAll(d, "-", "_"))
		}
	}
	return deps
}

// resolvedModule is a module during resolution.
type resolvedModule struct {
	name     string
	rel      string
	deps     []string // loadable dependencies (built-ins dropped), sorted
	features []string
}

// resolveModules closes the roots over their dependencies and orders them.
func resolveModules(ctx context.Context, idx *moduleIndex, roots []featureRoot) (*modlist.List, error) {
	mods := map[string]*resolvedModule{}
	var visit func(name, feature, from string) error
	visit = func(name, feature, from string) error {
		if idx.builtin[name] {
			log.G(ctx).WithFields(log.Fields{"module": name, "feature": feature}).Debug("module is built in")
			return nil
		}
		m, ok := mods[name]
		if ok {
			if slices.Contains(m.features, feature) {
				return nil
			}
		} else {
			var err error
			if m, err = idx.load(name, from); err != nil {
				return err
			}
			mods[name] = m
		}
		m.features = append(m.features, feature)
		for _, d := range m.deps {
			if err := visit(d, feature, name); err != nil {
				return err
			}
		}
		return nil
	}
	for _, r := range roots {
		for _, name := range r.modules {
			if err := visit(name, r.feature, ""); err != nil {
				return nil, fmt.Errorf("feature %s: %w", r.feature, err)
			}
		}
	}
	// Built-in dependencies need no loading; drop them from the edges.
	for _, m := range mods {
		m.deps = slices.DeleteFunc(m.deps, func(d string) bool { return idx.builtin[d] })
	}
	order, err := topoSort(mods)
	if err != nil {
		return nil, err
	}
	list := &modlist.List{KernelRelease: idx.release, Modules: make([]modlist.Module, 0, len(order))}
	for _, m := range order {
		list.Modules = append(list.Modules, modlist.Module{
			Name:     m.name,
			Path:     path.Join("/lib/modules", idx.release, m.rel),
			Features: m.features,
		})
	}
	return list, nil
}

// load reads one module's modinfo and checks it belongs to this tree.
func (idx *moduleIndex) load(name, from string) (*resolvedModule, error) {
	rel, ok := idx.paths[name]
	if !ok {
		what := "module " + name
		if from != "" {
			what += " (needed by " + from + ")"
		}
		if c, ok := idx.compressed[name]; ok {
			return nil, fmt.Errorf("%s is compressed (%s), which the builder does not handle: %w", what, c, errdefs.ErrNotImplemented)
		}
		return nil, fmt.Errorf("%s is neither in %s nor built in: %w", what, idx.dir, errdefs.ErrNotFound)
	}
	info, err := readModinfo(filepath.Join(idx.dir, filepath.FromSlash(rel)))
	if err != nil {
		return nil, err
	}
	if n := info.get("name"); n != "" && n != name {
		return nil, fmt.Errorf("module file %s calls itself %s: %w", rel, n, errdefs.ErrInvalidArgument)
	}
	if vm := strings.Fields(info.get("vermagic")); len(vm) > 0 && vm[0] != idx.release {
		return nil, fmt.Errorf("module %s is built for %s, not %s: %w", name, vm[0], idx.release, errdefs.ErrFailedPrecondition)
	}
	deps := info.depends()
	slices.Sort(deps)
	return &resolvedModule{name: name, rel: rel, deps: slices.Compact(deps)}, nil
}

// topoSort orders modules dependencies first; among modules whose
// dependencies are all placed, the smallest name goes next.
func topoSort(mods map[string]*resolvedModule) ([]*resolvedModule, error) {
	waiting := map[string]int{}         // module -> dependencies not yet placed
	dependents := map[string][]string{} // module -> modules that depend on it
	var ready []string
	for name, m := range mods {
		waiting[name] = len(m.deps)
		for _, d := range m.deps {
			dependents[d] = append(dependents[d], name)
		}
		if len(m.deps) == 0 {
			ready = append(ready, name)
		}
	}
	order := make([]*resolvedModule, 0, len(mods))
	for len(ready) > 0 {
		slices.Sort(ready)
		next := ready[0]
		ready = ready[1:]
		order = append(order, mods[next])
		for _, d := range dependents[next] {
			if waiting[d]--; waiting[d] == 0 {
				ready = append(ready, d)
			}
		}
	}
	if len(order) != len(mods) {
		var stuck []string
		for name, n := range waiting {
			if n > 0 {
				stuck = append(stuck, name)
			}
		}
		slices.Sort(stuck)
		return nil, fmt.Errorf("dependency cycle among modules %s: %w", strings.Join(stuck, ", "), errdefs.ErrInvalidArgument)
	}
	return order, nil
}
