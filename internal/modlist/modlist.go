// Package modlist is the list of kernel modules that the guest image builder
// writes into the initrd and the agent loads at boot. The builder resolves the
// dependencies and the load order; the agent only follows the list.
//
// Inside the guest the list is a small line format (Encode, Parse), not
// JSON: the agent reads it on the way to its first answer, and under TCG the
// first use of encoding/json's reflection costs tens of milliseconds there.
// One record per line, fields separated by single spaces:
//
//	hull-modules 1
//	release <kernel release, or - for none>
//	builtin <feature> ...
//	module <name> <path> <feature>,<feature>...
//
// "builtin" lists the features the kernel has built in, so they need no
// module; "module" lines come in load order. A module with no feature has "-"
// in place of the list.
package modlist

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Path is where the list lives inside the guest.
const Path = "/etc/hull/modules.list"

// header is the first line of an encoded list, with the format's version.
const header = "hull-modules 1"

// List is the module list of one guest image.
type List struct {
	// KernelRelease is the `uname -r` of the kernel the modules belong to.
	KernelRelease string `json:"kernel_release"`
	// Builtin are the features the kernel has built in: they need no module.
	Builtin []string `json:"builtin,omitempty"`
	// Modules in load order: every module comes after its dependencies.
	Modules []Module `json:"modules"`
}

// Module is one kernel module file.
type Module struct {
	// Name as the kernel knows it (underscores, no suffix).
	Name string `json:"name"`
	// Path of the .ko file inside the guest, absolute.
	Path string `json:"path"`
	// Features that need this module, directly or as a dependency.
	Features []string `json:"features"`
}

// Feature names. A feature is a guest ability the image can be built with;
// each one maps to kernel modules in the builder.
const (
	FeatureBusPCI   = "bus-pci"   // virtio over PCI (q35)
	FeatureBusMMIO  = "bus-mmio"  // virtio over MMIO (microvm)
	FeatureSerial   = "serial"    // virtio-serial: the agent transport without vsock
	FeatureVsock    = "vsock"     // virtio-vsock: the agent transport with vhost-vsock
	FeatureVirtioFS = "virtio-fs" // shared directories
	FeatureOverlay  = "overlay"   // overlayfs for container roots
	FeatureNet      = "net"       // virtio-net
	FeatureBlock    = "block"     // virtio-blk
	FeaturePmem     = "pmem"      // NVDIMM / virtio-pmem for DAX images
	FeatureBalloon  = "balloon"   // virtio-balloon: free page reporting gives freed guest memory back
)

// AllFeatures lists every feature, in the order the documentation uses.
var AllFeatures = []string{
	FeatureBusPCI, FeatureBusMMIO, FeatureSerial, FeatureVsock,
	FeatureVirtioFS, FeatureOverlay, FeatureNet, FeatureBlock, FeaturePmem, FeatureBalloon,
}

// Needs reports whether m is needed by any of features.
func (m Module) Needs(features ...string) bool {
	for _, f := range m.Features {
		for _, want := range features {
			if f == want {
				return true
			}
		}
	}
	return false
}

// Read reads and parses the list at path.
func Read(path string) (*List, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	l, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("module list %s: %w", path, err)
	}
	return l, nil
}

// Encode writes l in the guest's line format. A name, path or feature that
// is empty or holds white space cannot be encoded.
func Encode(l *List) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(header + "\n")
	rel := l.KernelRelease
	if rel == "" {
		rel = "-" // an initrd without modules need not name a kernel
	} else if err := checkWord("release", rel); err != nil || rel == "-" {
		return nil, fmt.Errorf("release %q cannot be encoded", rel)
	}
	b.WriteString("release " + rel + "\n")
	b.WriteString("builtin")
	for _, f := range l.Builtin {
		if err := checkWord("builtin feature", f); err != nil {
			return nil, err
		}
		b.WriteString(" " + f)
	}
	b.WriteString("\n")
	for _, m := range l.Modules {
		if err := errors.Join(checkWord("module name", m.Name), checkWord("module path", m.Path)); err != nil {
			return nil, err
		}
		for _, f := range m.Features {
			if err := checkWord("module feature", f); err != nil {
				return nil, err
			}
			if strings.Contains(f, ",") || f == "-" {
				return nil, fmt.Errorf("module %s: feature %q cannot be encoded", m.Name, f)
			}
		}
		fs := "-"
		if len(m.Features) > 0 {
			fs = strings.Join(m.Features, ",")
		}
		b.WriteString("module " + m.Name + " " + m.Path + " " + fs + "\n")
	}
	return b.Bytes(), nil
}

func checkWord(what, v string) error {
	if v == "" || strings.ContainsAny(v, " \t\r\n") {
		return fmt.Errorf("%s %q cannot be encoded: empty or white space", what, v)
	}
	return nil
}

// Parse reads a list in the guest's line format.
func Parse(b []byte) (*List, error) {
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) < 3 || lines[0] != header {
		return nil, fmt.Errorf("not a module list: want %q, release and builtin lines first", header)
	}
	l := &List{Modules: []Module{}}
	rel, ok := strings.CutPrefix(lines[1], "release ")
	if !ok || checkWord("release", rel) != nil {
		return nil, fmt.Errorf("line 2: want \"release <kernel release>\", got %q", lines[1])
	}
	if rel != "-" {
		l.KernelRelease = rel
	}
	bf := strings.Split(lines[2], " ")
	if bf[0] != "builtin" {
		return nil, fmt.Errorf("line 3: want \"builtin <feature>...\", got %q", lines[2])
	}
	for _, f := range bf[1:] {
		if f == "" {
			return nil, errors.New("line 3: empty feature")
		}
		l.Builtin = append(l.Builtin, f)
	}
	for i, line := range lines[3:] {
		f := strings.Split(line, " ")
		if len(f) != 4 || f[0] != "module" || f[1] == "" || f[2] == "" || f[3] == "" {
			return nil, fmt.Errorf("line %d: want \"module <name> <path> <features>\", got %q", i+4, line)
		}
		m := Module{Name: f[1], Path: f[2], Features: []string{}}
		if f[3] != "-" {
			m.Features = strings.Split(f[3], ",")
			for _, feat := range m.Features {
				if feat == "" {
					return nil, fmt.Errorf("line %d: empty feature in %q", i+4, f[3])
				}
			}
		}
		l.Modules = append(l.Modules, m)
	}
	return l, nil
}
