package guestimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/hull-runtime/hull/internal/atomicfile"
	"github.com/hull-runtime/hull/internal/version"
)

// Defaults of Options.
const (
	DefaultKernelPackage = "linux-image-cloud-amd64"
	DefaultCacheDir      = "/var/cache/hull"
	DefaultOutputDir     = "/usr/share/hull"
)

// Image formats.
const (
	FormatInitrd = "initrd" // kernel + cpio initrd with the agent as /init
	FormatErofs  = "erofs"  // kernel + read-only erofs root image (KindRootfs), and the initrd
	FormatExt4   = "ext4"   // reserved: ext4 root image mapped with DAX
)

// Options configure Build. The zero value of every field picks its default.
type Options struct {
	// KernelPackage is the Debian kernel package; a metapackage is followed
	// to the versioned package it depends on. Default DefaultKernelPackage.
	KernelPackage string
	// KernelDeb is an already downloaded .deb; it skips apt.
	KernelDeb string
	// KernelVmlinux and KernelConfig, always together, name a kernel built
	// outside any package (the hull kernel, hack/build-kernel.sh): a PVH
	// vmlinux and its .config. They replace the package (KernelPackage is
	// ignored, KernelDeb must be empty). Such a kernel has no modules: each
	// feature must be built in (=y) in KernelConfig, and the initrd carries
	// no module.
	KernelVmlinux string
	KernelConfig  string
	// CacheDir holds downloaded and unpacked packages. Default DefaultCacheDir.
	CacheDir string
	// AgentBinary is the static hull-agent; it becomes /init.
	AgentBinary string
	// PauseBinary is the static hull-pause (cmd/hull-pause), the waiting
	// stage of a pod sandbox process; it goes to channel.PauseBinaryPath.
	// Required.
	PauseBinary string
	// Features select the modules (modlist.Feature*); empty means all.
	Features []string
	// Format is FormatInitrd (default) or FormatErofs: the same files
	// also as a read-only erofs image that the guest boots from through
	// virtio-pmem with DAX (KindRootfs, the manifest's kind). An erofs
	// build needs a local kernel with rootfsSymbols built in; it writes
	// the initrd too, so that image.kind can pick either. FormatExt4 is
	// reserved.
	Format string
	// Compression of the initrd: none (default: the guest boots fastest
	// when it need not decompress), zstd, lz4 or gzip.
	Compression string
	// OutputDir receives the kernel, the initrd and the manifest. Default
	// DefaultOutputDir.
	OutputDir string
	// DebugShell is a host file to pack at channel.DebugShellPath for `hull
	// exec`: a static x86-64 executable that runs a shell when called as
	// "sh", such as busybox-static's /bin/busybox. Symbolic links are
	// followed. Empty (the default) packs no shell.
	DebugShell string
	// Progress receives a line per long step with its duration; nil is quiet.
	Progress io.Writer
}

func (o *Options) setDefaults() {
	if o.KernelPackage == "" {
		o.KernelPackage = DefaultKernelPackage
	}
	if o.CacheDir == "" {
		o.CacheDir = DefaultCacheDir
	}
	if o.Format == "" {
		o.Format = FormatInitrd
	}
	if o.Compression == "" {
		o.Compression = CompressionNone
	}
	if o.OutputDir == "" {
		o.OutputDir = DefaultOutputDir
	}
}

// validate checks what can be checked before any slow step.
func (o *Options) validate() error {
	switch o.Format {
	case FormatInitrd, FormatErofs:
	case FormatExt4:
		return fmt.Errorf("image format %s: %w", o.Format, errdefs.ErrNotImplemented)
	default:
		return fmt.Errorf("image format %q (want initrd, erofs or ext4): %w", o.Format, errdefs.ErrInvalidArgument)
	}
	if _, err := compressor(io.Discard, o.Compression); err != nil {
		return err
	}
	if _, err := normalizeFeatures(o.Features); err != nil {
		return err
	}
	if (o.KernelVmlinux == "") != (o.KernelConfig == "") {
		return fmt.Errorf("a local kernel needs both its vmlinux and its .config: %w", errdefs.ErrInvalidArgument)
	}
	if o.KernelVmlinux != "" && o.KernelDeb != "" {
		return fmt.Errorf("a kernel .deb and a local kernel exclude each other: %w", errdefs.ErrInvalidArgument)
	}
	if o.Format == FormatErofs && o.KernelVmlinux == "" {
		return checkRootfsKernel(nil)
	}
	return checkStaticExecutable(o.AgentBinary)
}

// Build makes the guest image: it prepares the kernel package (or checks the
// local kernel), writes the kernel (the PVH vmlinux, or the bzImage if that
// cannot be had), the initrd and, last, the manifest into o.OutputDir, and
// returns the manifest.
func Build(ctx context.Context, o Options) (*Manifest, error) {
	o.setDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	features, _ := normalizeFeatures(o.Features)
	p := newProgress(o.Progress)
	// The pod sandbox binary and the debug shell, like a local kernel,
	// are checked before anything is written.
	pause, pauseInfo, err := readPause(o.PauseBinary)
	if err != nil {
		return nil, err
	}
	extra := []File{pause}
	var shell *DebugShellInfo
	if o.DebugShell != "" {
		data, info, err := readDebugShell(o.DebugShell)
		if err != nil {
			return nil, err
		}
		extra, shell = append(extra, File{Path: info.Path, Mode: 0o755, Data: data}), info
	}
	// A local kernel is checked before anything is written.
	var lk *LocalKernel
	if o.KernelVmlinux != "" {
		var err error
		if lk, err = PrepareLocalKernel(o.KernelVmlinux, o.KernelConfig); err != nil {
			return nil, err
		}
		if err := lk.CheckFeatures(features); err != nil {
			return nil, err
		}
		if o.Format == FormatErofs {
			if err := checkRootfsKernel(lk); err != nil {
				return nil, err
			}
		}
	}
	if err := os.MkdirAll(o.OutputDir, 0o755); err != nil {
		return nil, err
	}
	m := &Manifest{
		Builder:    BuilderInfo{Version: version.Version, Commit: version.Commit},
		Format:     o.Format,
		Kind:       KindInitrd,
		Features:   features,
		Pause:      pauseInfo,
		DebugShell: shell,
	}
	var (
		k       *Kernel
		release string
	)
	if lk != nil {
		release = lk.Release
		m.Builtin = features
		if m.Kernel, err = writeLocalKernel(lk, o.OutputDir, p); err != nil {
			return nil, err
		}
	} else {
		if k, err = PrepareKernel(ctx, o); err != nil {
			return nil, fmt.Errorf("preparing kernel package: %w", err)
		}
		release = k.Release
		if m.Kernel, err = writeKernel(ctx, k, o.OutputDir, p); err != nil {
			return nil, err
		}
	}
	if m.Agent.SHA256, m.Agent.Size, err = hashFile(o.AgentBinary); err != nil {
		return nil, fmt.Errorf("hashing agent: %w", err)
	}

	initrd := &InitrdInfo{File: "initrd-" + release + ".img", Compression: o.Compression}
	initrdPath, err := outputPath(o.OutputDir, initrd.File)
	if err != nil {
		return nil, err
	}
	done := p.start("packing %s initrd", o.Compression)
	var sum fileSum
	sum, err = writeFileAtomic(initrdPath, 0o644, func(w io.Writer) error {
		list, err := WriteInitrd(ctx, w, InitrdSpec{
			Init: o.AgentBinary, Kernel: k, LocalKernel: lk, Features: features, Compression: o.Compression, ExtraFiles: extra,
		})
		if err == nil {
			m.Modules = list.Modules
		}
		return err
	})
	done(err)
	if err != nil {
		return nil, fmt.Errorf("writing initrd: %w", err)
	}
	initrd.SHA256, initrd.Size = sum.sha256, sum.size
	m.Initrd = initrd

	if o.Format == FormatErofs {
		if m.Rootfs, err = writeRootfs(ctx, o, release, lk, features, extra, p); err != nil {
			return nil, err
		}
		m.Kind = KindRootfs
	}

	b, err := m.marshal()
	if err != nil {
		return nil, err
	}
	if _, err := writeFileAtomic(filepath.Join(o.OutputDir, ManifestFile), 0o644, func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	}); err != nil {
		return nil, fmt.Errorf("writing manifest: %w", err)
	}
	log.G(ctx).WithFields(log.Fields{"dir": o.OutputDir, "release": release, "kernel": m.Kernel.Format, "modules": len(m.Modules)}).Info("guest image built")
	return m, nil
}

// writeRootfs writes rootfs-<release>.erofs: the initrd's files as a
// read-only erofs image.
func writeRootfs(ctx context.Context, o Options, release string, lk *LocalKernel, features []string, extra []File, p *progress) (*RootfsInfo, error) {
	ri := &RootfsInfo{File: "rootfs-" + release + ".erofs", FSType: FormatErofs}
	dst, err := outputPath(o.OutputDir, ri.File)
	if err != nil {
		return nil, err
	}
	t, err := rootfsTree(ctx, InitrdSpec{Init: o.AgentBinary, LocalKernel: lk, Features: features, ExtraFiles: extra})
	if err != nil {
		return nil, err
	}
	// mkfs.erofs writes a file of its own: it goes to a temporary name,
	// then is renamed over dst like every other output.
	tmp, err := os.CreateTemp(o.OutputDir, "."+ri.File+".tmp-")
	if err != nil {
		return nil, err
	}
	_ = tmp.Close()
	_ = os.Remove(tmp.Name())
	done := p.start("packing erofs root image")
	err = WriteErofs(ctx, tmp.Name(), t)
	done(err)
	if err != nil {
		return nil, fmt.Errorf("writing rootfs image: %w", err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil { //nolint:gosec // G302: the image is world-readable like the kernel and initrd
		_ = os.Remove(tmp.Name())
		return nil, err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		_ = os.Remove(tmp.Name())
		return nil, err
	}
	if ri.SHA256, ri.Size, err = hashFile(dst); err != nil {
		return nil, err
	}
	return ri, nil
}

// writeKernel writes vmlinux-<release>, or vmlinuz-<release> when the PVH
// ELF cannot be extracted.
func writeKernel(ctx context.Context, k *Kernel, dir string, p *progress) (KernelInfo, error) {
	ki := KernelInfo{Package: k.Package, PackageVersion: k.PackageVersion, Release: k.Release}
	if err := validRelease(k.Release); err != nil {
		return ki, err
	}
	bz, err := os.ReadFile(k.BzImage())
	if err != nil {
		return ki, fmt.Errorf("reading kernel: %w", err)
	}
	done := p.start("extracting vmlinux from %s", filepath.Base(k.BzImage()))
	vmlinux, xerr := ExtractVmlinux(bz)
	done(xerr)
	data := vmlinux
	ki.File, ki.Format = "vmlinux-"+k.Release, KernelFormatPVH
	if xerr != nil {
		p.printf("warning: cannot boot %s through PVH (%v); using the bzImage", k.Release, xerr)
		log.G(ctx).WithError(xerr).Warn("falling back to the bzImage")
		data = bz
		ki.File, ki.Format = "vmlinuz-"+k.Release, KernelFormatBzImage
	}
	dst, err := outputPath(dir, ki.File)
	if err != nil {
		return ki, err
	}
	sum, err := writeFileAtomic(dst, 0o644, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
	if err != nil {
		return ki, fmt.Errorf("writing kernel: %w", err)
	}
	ki.SHA256, ki.Size = sum.sha256, sum.size
	return ki, nil
}

// fileSum is the hex sha256 and size of a written file.
type fileSum struct {
	sha256 string
	size   int64
}

// writeFileAtomic writes dst through fill with atomicfile: into a temporary
// file in the same directory, synced, renamed over dst, and the directory
// synced. An error before the rename leaves dst as it was and no temporary
// file; a failed directory sync comes after it, dst then holding the new
// content. It returns the sha256 and size of what fill wrote.
func writeFileAtomic(dst string, perm os.FileMode, fill func(io.Writer) error) (fileSum, error) {
	h := sha256.New()
	var cw *countWriter
	err := atomicfile.WriteFunc(dst, atomicfile.Options{Perm: perm}, func(f io.Writer) error {
		cw = &countWriter{w: io.MultiWriter(f, h)}
		return fill(cw)
	})
	if err != nil {
		return fileSum{}, err
	}
	return fileSum{sha256: hex.EncodeToString(h.Sum(nil)), size: cw.n}, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// progress prints human progress lines; a nil writer makes it quiet.
type progress struct{ w io.Writer }

func newProgress(w io.Writer) *progress { return &progress{w: w} }

func (p *progress) printf(format string, args ...any) {
	if p.w != nil {
		_, _ = fmt.Fprintf(p.w, format+"\n", args...) // progress is best effort: a failed write must not fail the build
	}
}

// start prints the step and returns a function that prints its outcome and
// duration.
func (p *progress) start(format string, args ...any) func(error) {
	what := fmt.Sprintf(format, args...)
	p.printf("%s ...", what)
	t0 := time.Now()
	return func(err error) {
		d := time.Since(t0).Round(time.Millisecond)
		if err != nil {
			p.printf("%s failed after %s", what, d)
			return
		}
		p.printf("%s done in %s", what, d)
	}
}
