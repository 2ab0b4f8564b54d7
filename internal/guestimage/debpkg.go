package guestimage

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// metaDepth bounds how many metapackages are followed to the real kernel.
const metaDepth = 4

// PrepareKernel makes the kernel package available unpacked in the cache:
// it resolves o.KernelPackage, downloads it unless o.KernelDeb names a .deb
// or the cache already has it, and unpacks it unless the cache already has
// that too.
func PrepareKernel(ctx context.Context, o Options) (*Kernel, error) {
	o.setDefaults()
	p := newProgress(o.Progress)
	deb := o.KernelDeb
	if deb == "" {
		var err error
		if deb, err = downloadKernel(ctx, o.KernelPackage, filepath.Join(o.CacheDir, "debs"), p); err != nil {
			return nil, err
		}
	}
	deb, err := filepath.Abs(deb)
	if err != nil {
		return nil, err
	}
	k := &Kernel{Deb: deb}
	if k.Package, k.PackageVersion, err = debFields(ctx, deb); err != nil {
		return nil, err
	}
	k.Dir = filepath.Join(o.CacheDir, "unpacked", strings.TrimSuffix(filepath.Base(deb), ".deb"))
	if err := unpackDeb(ctx, deb, k.Dir, p); err != nil {
		return nil, err
	}
	if k.Release, err = findRelease(k.Dir); err != nil {
		return nil, err
	}
	log.G(ctx).WithFields(log.Fields{"package": k.Package, "version": k.PackageVersion, "release": k.Release}).Debug("kernel package ready")
	return k, nil
}

// downloadKernel resolves pkg to the package that holds the kernel and
// returns the path of its .deb in dir, downloading it if it is not there.
func downloadKernel(ctx context.Context, pkg, dir string, p *progress) (string, error) {
	updated := false
	name, ver, arch, err := resolveKernelPackage(ctx, pkg)
	if err != nil && errors.Is(err, errdefs.ErrNotFound) {
		// Most likely no package lists yet (a fresh container); fetch them once.
		if uerr := aptUpdate(ctx, p); uerr != nil {
			return "", errors.Join(err, uerr)
		}
		updated = true
		name, ver, arch, err = resolveKernelPackage(ctx, pkg)
	}
	if err != nil {
		return "", err
	}
	file := debFileName(name, ver, arch)
	path := filepath.Join(dir, file)
	if _, err := os.Stat(path); err == nil {
		log.G(ctx).WithField("deb", path).Debug("kernel package cached")
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	done := p.start("downloading %s=%s", name, ver)
	err = aptDownload(ctx, dir, name, ver)
	if err != nil && !updated {
		// The lists may be stale and point at a version the mirror dropped.
		if uerr := aptUpdate(ctx, p); uerr == nil {
			err = aptDownload(ctx, dir, name, ver)
		}
	}
	done(err)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("apt-get download did not leave %s: %w", file, err)
	}
	return path, nil
}

// resolveKernelPackage follows metapackages (linux-image-cloud-amd64 depends
// on linux-image-<release>) to the package that holds the kernel: the first
// one with no linux-image-* dependency.
func resolveKernelPackage(ctx context.Context, pkg string) (name, version, arch string, err error) {
	name = pkg
	for range metaDepth {
		out, err := run(ctx, "", "apt-cache", "show", "--no-all-versions", name)
		if err != nil || len(bytes.TrimSpace(out)) == 0 {
			return "", "", "", fmt.Errorf("looking up package %s: %w", name, errors.Join(err, errdefs.ErrNotFound))
		}
		fields := controlFields(out)
		next := ""
		for _, dep := range splitDepends(fields["Depends"]) {
			if strings.HasPrefix(dep, "linux-image-") {
				next = dep
				break
			}
		}
		if next == "" {
			return name, fields["Version"], fields["Architecture"], nil
		}
		log.G(ctx).WithFields(log.Fields{"from": name, "to": next}).Debug("following kernel metapackage")
		name = next
	}
	return "", "", "", fmt.Errorf("package %s: more than %d metapackages deep: %w", pkg, metaDepth, errdefs.ErrInvalidArgument)
}

// splitDepends returns the package names of a Depends field, taking the first
// alternative of each clause and dropping version constraints.
func splitDepends(s string) []string {
	var names []string
	for _, clause := range strings.Split(s, ",") {
		alt, _, _ := strings.Cut(clause, "|")
		f := strings.Fields(alt)
		if len(f) == 0 {
			continue
		}
		name, _, _ := strings.Cut(f[0], ":") // foo:any
		if i := strings.IndexByte(name, '('); i >= 0 {
			name = name[:i]
		}
		names = append(names, name)
	}
	return names
}

// controlFields parses the first stanza of Debian control data.
func controlFields(b []byte) map[string]string {
	fields := map[string]string{}
	key := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if len(fields) > 0 {
				break
			}
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if key != "" {
				fields[key] += "\n" + strings.TrimSpace(line)
			}
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		key = k
		fields[key] = strings.TrimSpace(v)
	}
	return fields
}

// debFileName is the name apt-get download gives a package file: an epoch's
// colon is written %3a.
func debFileName(name, version, arch string) string {
	return fmt.Sprintf("%s_%s_%s.deb", name, strings.ReplaceAll(version, ":", "%3a"), arch)
}

func aptUpdate(ctx context.Context, p *progress) error {
	done := p.start("apt-get update")
	_, err := run(ctx, "", "apt-get", "update", "-q")
	done(err)
	return err
}

func aptDownload(ctx context.Context, dir, name, version string) error {
	_, err := run(ctx, dir, "apt-get", "download", "-q", name+"="+version)
	return err
}

// debFields reads the package name and version from a .deb.
func debFields(ctx context.Context, deb string) (name, version string, err error) {
	out, err := run(ctx, "", "dpkg-deb", "--field", deb, "Package", "Version")
	if err != nil {
		return "", "", err
	}
	f := controlFields(out)
	if f["Package"] == "" {
		return "", "", fmt.Errorf("%s has no Package field: %w", deb, errdefs.ErrInvalidArgument)
	}
	return f["Package"], f["Version"], nil
}

// unpackDeb extracts deb into dir with dpkg-deb -x, unless dir already holds
// a complete extraction. It unpacks next to dir and renames, so an
// interrupted unpack never looks complete.
func unpackDeb(ctx context.Context, deb, dir string, p *progress) error {
	if _, err := os.Stat(dir); err == nil {
		log.G(ctx).WithField("dir", dir).Debug("kernel package already unpacked")
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".unpack-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(tmp) }()
	done := p.start("unpacking %s", filepath.Base(deb))
	_, err = run(ctx, "", "dpkg-deb", "-x", deb, tmp)
	if err == nil {
		err = os.Rename(tmp, dir)
	}
	done(err)
	return err
}

// findRelease finds the kernel release from boot/vmlinuz-<release> and
// checks that lib/modules/<release> exists.
func findRelease(dir string) (string, error) {
	matches, err := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if err != nil {
		return "", err
	}
	if len(matches) != 1 {
		return "", fmt.Errorf("%s: want one boot/vmlinuz-*, found %d: %w", dir, len(matches), errdefs.ErrNotFound)
	}
	rel := strings.TrimPrefix(filepath.Base(matches[0]), "vmlinuz-")
	if err := validRelease(rel); err != nil {
		return "", fmt.Errorf("%s: %w", matches[0], err)
	}
	if _, err := os.Stat(filepath.Join(dir, "lib", "modules", rel)); err != nil {
		return "", fmt.Errorf("modules of %s: %w", rel, err)
	}
	return rel, nil
}

// run runs a command and returns its standard output; the error carries
// standard error.
func run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}
