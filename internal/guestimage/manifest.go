package guestimage

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/modlist"
)

// ManifestFile is the manifest's name in the output directory.
const ManifestFile = "manifest.json"

// Kernel formats recorded in the manifest.
const (
	KernelFormatPVH     = "elf-pvh" // uncompressed ELF with a PVH entry note
	KernelFormatBzImage = "bzimage" // the package's compressed kernel as is
)

// Manifest describes a built guest image. It holds no timestamps, so the
// same inputs give the same bytes.
type Manifest struct {
	Builder BuilderInfo `json:"builder"`
	// Format is the image format the builder was asked for: FormatInitrd
	// or FormatErofs.
	Format string `json:"format"`
	// Kind is what the image boots by default: KindInitrd or KindRootfs
	// (ImageKind reads it; manifests written before it existed have none
	// and boot the initrd).
	Kind   string      `json:"kind,omitempty"`
	Kernel KernelInfo  `json:"kernel"`
	Initrd *InitrdInfo `json:"initrd,omitempty"`
	// Rootfs is the read-only root file system image of a FormatErofs
	// build; nil otherwise.
	Rootfs *RootfsInfo `json:"rootfs,omitempty"`
	Agent  AgentInfo   `json:"agent"`
	// Pause is the pod sandbox binary at channel.PauseBinaryPath
	// (Options.PauseBinary); images written before it existed have none.
	Pause    *AgentInfo `json:"pause,omitempty"`
	Features []string   `json:"features"`
	// Builtin are the features the kernel has built in, so they need no
	// module: all of Features for a local kernel, none for a package.
	Builtin []string `json:"builtin,omitempty"`
	// Modules in load order, as in the image's module list.
	Modules []modlist.Module `json:"modules"`
	// DebugShell is the debug shell packed into the initrd; nil (and left
	// out) when the image has none (Options.DebugShell).
	DebugShell *DebugShellInfo `json:"debug_shell,omitempty"`
}

// BuilderInfo identifies the hull build that made the image.
type BuilderInfo struct {
	Version string `json:"version"`
	Commit  string `json:"commit"`
}

// KernelInfo describes the kernel file. Package and PackageVersion are
// empty for a local kernel, which Local describes instead.
type KernelInfo struct {
	Package        string `json:"package"`
	PackageVersion string `json:"package_version"`
	Release        string `json:"release"`
	// File is relative to the output directory.
	File string `json:"file"`
	// Format is KernelFormatPVH or KernelFormatBzImage.
	Format string `json:"format"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	// Local is the origin of a kernel built outside any package (the hull
	// kernel); nil for a kernel from a package.
	Local *LocalKernelInfo `json:"local,omitempty"`
}

// LocalKernelInfo is where a local kernel came from, without its location
// (the same inputs anywhere give the same manifest): the hashes identify
// the inputs. The vmlinux's sha256 is KernelInfo.SHA256: the image's kernel
// file is a copy of it.
type LocalKernelInfo struct {
	// Vmlinux and Config are the base names of the files the builder read,
	// symbolic links resolved (vmlinux-6.1.192-hull, config-6.1.192-hull);
	// informative only.
	Vmlinux string `json:"vmlinux"`
	Config  string `json:"config"`
	// ConfigSHA256 is the sha256 of the config the builder parsed and checked.
	ConfigSHA256 string `json:"config_sha256"`
}

// InitrdInfo describes the initrd file.
type InitrdInfo struct {
	// File is relative to the output directory.
	File        string `json:"file"`
	Compression string `json:"compression"`
	SHA256      string `json:"sha256"`
	Size        int64  `json:"size"`
}

// RootfsInfo describes the root file system image.
type RootfsInfo struct {
	// File is relative to the output directory.
	File string `json:"file"`
	// FSType is the file system the guest mounts: "erofs".
	FSType string `json:"fstype"`
	SHA256 string `json:"sha256"`
	// Size is a multiple of RootfsAlign.
	Size int64 `json:"size"`
}

// AgentInfo identifies the agent packed as /init, or the pod sandbox
// binary.
type AgentInfo struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// DebugShellInfo identifies the debug shell packed into the initrd. The
// initrd's checksum covers it: it is not a file of the output directory.
type DebugShellInfo struct {
	// Path is where the guest has it: channel.DebugShellPath.
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// ReadManifest reads dir/manifest.json.
func ReadManifest(dir string) (*Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no guest image in %s (%w): %w", dir, err, errdefs.ErrNotFound)
		}
		return nil, err
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("parsing %s: %w: %w", filepath.Join(dir, ManifestFile), err, errdefs.ErrDataLoss)
	}
	return &m, nil
}

// KernelPath is the kernel's path for a manifest read from dir.
func (m *Manifest) KernelPath(dir string) string { return filepath.Join(dir, m.Kernel.File) }

// InitrdPath is the initrd's path for a manifest read from dir, or "".
func (m *Manifest) InitrdPath(dir string) string {
	if m.Initrd == nil {
		return ""
	}
	return filepath.Join(dir, m.Initrd.File)
}

// ImageKind is the kind the image boots by default: Kind, or KindInitrd
// for a manifest without one.
func (m *Manifest) ImageKind() string {
	if m.Kind == "" {
		return KindInitrd
	}
	return m.Kind
}

// RootfsPath is the root image's path for a manifest read from dir, or "".
func (m *Manifest) RootfsPath(dir string) string {
	if m.Rootfs == nil {
		return ""
	}
	return filepath.Join(dir, m.Rootfs.File)
}

// Verify checks that every file the manifest names is in dir with the
// recorded size and sha256. The error names the first file that is not.
func (m *Manifest) Verify(dir string) error {
	type want struct {
		file, sha string
		size      int64
	}
	files := []want{{m.Kernel.File, m.Kernel.SHA256, m.Kernel.Size}}
	if m.Initrd != nil {
		files = append(files, want{m.Initrd.File, m.Initrd.SHA256, m.Initrd.Size})
	}
	if m.Rootfs != nil {
		files = append(files, want{m.Rootfs.File, m.Rootfs.SHA256, m.Rootfs.Size})
	}
	for _, f := range files {
		if f.file == "" || filepath.IsAbs(f.file) || filepath.Base(f.file) != f.file {
			return fmt.Errorf("manifest names file %q outside %s: %w", f.file, dir, errdefs.ErrDataLoss)
		}
		p := filepath.Join(dir, f.file)
		sum, size, err := hashFile(p)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("guest image file %s is missing: %w", p, errors.Join(err, errdefs.ErrNotFound))
			}
			return fmt.Errorf("verifying %s: %w", p, err)
		}
		if size != f.size || sum != f.sha {
			return fmt.Errorf("guest image file %s does not match the manifest (sha256 %s, %d bytes; want %s, %d bytes): %w",
				p, sum, size, f.sha, f.size, errdefs.ErrDataLoss)
		}
	}
	return nil
}

// hashFile returns the hex sha256 and the size of a file.
func hashFile(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer func() { _ = f.Close() }()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// marshal returns the manifest as written: indented JSON and a newline.
func (m *Manifest) marshal() ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
