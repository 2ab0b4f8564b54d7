// Package modlist is the list of kernel modules that the guest image builder
// writes into the initrd and the agent loads at boot. The builder resolves the
// dependencies and the load order; the agent only follows the list.
package modlist

import (
	"encoding/json"
	"fmt"
	"os"
)

// Path is where the list lives inside the guest.
const Path = "/etc/hull/modules.json"

// List is the module list of one guest image.
type List struct {
	// KernelRelease is the `uname -r` of the kernel the modules belong to.
	KernelRelease string `json:"kernel_release"`
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
)

// AllFeatures lists every feature, in the order the documentation uses.
var AllFeatures = []string{
	FeatureBusPCI, FeatureBusMMIO, FeatureSerial, FeatureVsock,
	FeatureVirtioFS, FeatureOverlay, FeatureNet, FeatureBlock, FeaturePmem,
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

// Read loads a list from path.
func Read(path string) (*List, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var l List
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("parsing module list %s: %w", path, err)
	}
	return &l, nil
}
