package guestimage

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
)

// LocalKernel is a kernel built outside any package, such as the hull kernel
// (hack/build-kernel.sh, docs/guest-kernel.md): a PVH vmlinux and the .config
// it was built from. It comes without modules, so every feature of an image
// built with it must be built in, which its config tells.
type LocalKernel struct {
	// Vmlinux is the absolute path of the PVH ELF kernel, with symbolic
	// links resolved.
	Vmlinux string
	// Config is the absolute path of the kernel's .config, with symbolic
	// links resolved.
	Config string
	// Release is the kernel's `uname -r`, read from the vmlinux's banner.
	Release string

	config *kconfig
	// configSHA256 is the hex sha256 of the config bytes that were parsed
	// and checked.
	configSHA256 string
	// image is the vmlinux as checked: the builder writes these bytes.
	image []byte
}

// bannerPrefix starts the kernel's version banner (linux_banner), which
// holds the release: "Linux version 6.1.192-hull (hull@hull) (gcc ...) #1 ...".
var bannerPrefix = []byte("Linux version ")

// maxLocalVmlinux bounds the vmlinux the builder reads into memory.
const maxLocalVmlinux = 512 << 20

// maxLocalConfig bounds the .config the builder reads into memory.
const maxLocalConfig = 16 << 20

// PrepareLocalKernel reads a locally built kernel: the vmlinux must be an
// x86-64 ELF with the PVH entry note, its release comes from its banner and
// must be a plain release (validRelease), and the config must parse, carry
// its version header and belong to the same kernel version and local
// version. Symbolic links (such as build-kernel.sh's vmlinux and config) are
// resolved first.
func PrepareLocalKernel(vmlinux, config string) (*LocalKernel, error) {
	if vmlinux == "" || config == "" {
		return nil, fmt.Errorf("a local kernel needs both its vmlinux and its .config: %w", errdefs.ErrInvalidArgument)
	}
	var err error
	k := &LocalKernel{}
	if k.Vmlinux, err = resolvePath(vmlinux); err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	if k.Config, err = resolvePath(config); err != nil {
		return nil, fmt.Errorf("kernel config: %w", err)
	}
	b, err := readLimited(k.Vmlinux, maxLocalVmlinux)
	if err != nil {
		return nil, fmt.Errorf("reading kernel: %w", err)
	}
	k.image = b
	if err := checkPVH(b); err != nil {
		return nil, fmt.Errorf("kernel %s: %w", k.Vmlinux, err)
	}
	if k.Release, err = bannerRelease(b); err != nil {
		return nil, fmt.Errorf("kernel %s: %w", k.Vmlinux, err)
	}
	if err := validRelease(k.Release); err != nil {
		return nil, fmt.Errorf("kernel %s: %w", k.Vmlinux, err)
	}
	// The config is read once: the bytes parsed and checked are the bytes
	// hashed into the manifest.
	cb, err := readLimited(k.Config, maxLocalConfig)
	if err != nil {
		return nil, fmt.Errorf("reading kernel config: %w", err)
	}
	if k.config, err = parseKconfig(cb); err != nil {
		return nil, fmt.Errorf("kernel config %s: %w", k.Config, err)
	}
	sum := sha256.Sum256(cb)
	k.configSHA256 = hex.EncodeToString(sum[:])
	if err := k.config.matchRelease(k.Release); err != nil {
		return nil, fmt.Errorf("kernel %s and config %s: %w", k.Vmlinux, k.Config, err)
	}
	return k, nil
}

// resolvePath makes p absolute and resolves its symbolic links.
func resolvePath(p string) (string, error) {
	p, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(p)
}

// CheckFeatures checks that the kernel has every feature built in (and
// what every guest needs); the error names the first missing symbol.
func (k *LocalKernel) CheckFeatures(features []string) error {
	features, err := normalizeFeatures(features)
	if err != nil {
		return err
	}
	if err := k.config.checkBuiltin(features); err != nil {
		return fmt.Errorf("kernel config %s: %w", k.Config, err)
	}
	return nil
}

// readLimited reads a file of at most limit bytes.
func readLimited(p string, limit int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes: %w", p, limit, errdefs.ErrInvalidArgument)
	}
	return b, nil
}

// bannerRelease finds the release in a kernel image's version banner.
func bannerRelease(b []byte) (string, error) {
	for rest := b; ; {
		i := bytes.Index(rest, bannerPrefix)
		if i < 0 {
			return "", fmt.Errorf("no %q banner: cannot tell the kernel release: %w", strings.TrimSpace(string(bannerPrefix)), errdefs.ErrInvalidArgument)
		}
		rest = rest[i+len(bannerPrefix):]
		end := bytes.IndexAny(rest, " \x00\n")
		if end <= 0 || end > 64 || rest[end] != ' ' {
			continue // not the banner (a format string or a stray match)
		}
		rel := string(rest[:end])
		if strings.ContainsFunc(rel, func(r rune) bool { return r <= ' ' || r > '~' || r == '%' }) {
			continue
		}
		return rel, nil
	}
}

// matchRelease checks that a release belongs to this config: it starts with
// the config's kernel version, not followed by a digit or a dot (6.1.19 is
// not 6.1.192), and the rest carries its CONFIG_LOCALVERSION. A config
// without its version header cannot tell and is refused.
func (c *kconfig) matchRelease(release string) error {
	if c.version == "" {
		return fmt.Errorf("the config has no version header (\"# Linux/<arch> <version> Kernel Configuration\"), so it cannot be matched to kernel %s: give the .config the kernel was built from: %w",
			release, errdefs.ErrInvalidArgument)
	}
	rest, ok := strings.CutPrefix(release, c.version)
	local := c.str("LOCALVERSION")
	if ok && rest != "" && (rest[0] == '.' || rest[0] >= '0' && rest[0] <= '9') {
		ok = false // another, longer version
	}
	if !ok || !strings.Contains(rest, local) {
		return fmt.Errorf("release %s is not from this config (Linux %s, CONFIG_LOCALVERSION %q): %w",
			release, c.version, local, errdefs.ErrInvalidArgument)
	}
	return nil
}

// writeLocalKernel copies the vmlinux into dir as vmlinux-<release> and
// describes it. Its origin is recorded without any location (the manifest
// must not depend on where the inputs were): the base names of the files
// read and the config's sha256 (the vmlinux's is the kernel file's).
func writeLocalKernel(k *LocalKernel, dir string, p *progress) (KernelInfo, error) {
	ki := KernelInfo{Release: k.Release, File: "vmlinux-" + k.Release, Format: KernelFormatPVH}
	if err := validRelease(k.Release); err != nil {
		return ki, err
	}
	ki.Local = &LocalKernelInfo{
		Vmlinux:      filepath.Base(k.Vmlinux),
		Config:       filepath.Base(k.Config),
		ConfigSHA256: k.configSHA256,
	}
	dst, err := outputPath(dir, ki.File)
	if err != nil {
		return ki, err
	}
	done := p.start("copying %s", k.Vmlinux)
	sum, err := writeFileAtomic(dst, 0o644, func(w io.Writer) error {
		_, err := w.Write(k.image)
		return err
	})
	done(err)
	if err != nil {
		return ki, fmt.Errorf("writing kernel: %w", err)
	}
	ki.SHA256, ki.Size = sum.sha256, sum.size
	return ki, nil
}
