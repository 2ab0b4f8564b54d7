package guestimage

import (
	"bufio"
	"compress/gzip"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"

	"github.com/hull-runtime/hull/internal/modlist"
)

// Compression names.
const (
	CompressionZstd = "zstd"
	CompressionLZ4  = "lz4"
	CompressionGzip = "gzip"
	CompressionNone = "none"
)

// zstdWindow is the zstd window. The kernel's decompressor allocates a
// buffer of the window size while it unpacks the initrd; 1 MiB keeps that
// small in a small guest and costs little ratio on an initrd this size.
const zstdWindow = 1 << 20

// InitrdSpec says what goes into an initrd.
type InitrdSpec struct {
	// Init is the host file that becomes /init: a static executable.
	Init string
	// Kernel provides the modules; nil packs none (and an empty module list).
	Kernel *Kernel
	// LocalKernel, exclusive with Kernel, is a kernel without modules: the
	// features must all be built in (its config is checked), and the module
	// list records them as such (modlist.List.Builtin).
	LocalKernel *LocalKernel
	// Features select the modules; empty means all.
	Features []string
	// Compression is one of the Compression* names; empty means none.
	Compression string
	// ExtraFiles are added to the tree; they may not replace other entries.
	ExtraFiles []File
	// KeepModuleSignatures packs modules with their appended signatures.
	// By default they are stripped: the guest kernel then skips an RSA
	// verification per module (tens of milliseconds each under TCG) and
	// loads them unsigned (it does not enforce signatures). The modules'
	// integrity rests on the initrd's checksum in the manifest instead.
	KeepModuleSignatures bool
}

// WriteInitrd writes the initrd spec describes to w and returns the module
// list it packed. The same spec and inputs give the same bytes.
func WriteInitrd(ctx context.Context, w io.Writer, spec InitrdSpec) (*modlist.List, error) {
	if spec.Compression == "" {
		spec.Compression = CompressionNone
	}
	t, list, err := initrdTree(ctx, spec)
	if err != nil {
		return nil, err
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	cw, err := compressor(bw, spec.Compression)
	if err != nil {
		return nil, err
	}
	if err := writeCPIO(ctx, cw, t); err != nil {
		_ = cw.Close()
		return nil, err
	}
	if err := cw.Close(); err != nil {
		return nil, fmt.Errorf("finishing %s stream: %w", spec.Compression, err)
	}
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	return list, nil
}

// initrdTree assembles the initrd's file tree: the skeleton, /init, the
// modules and their list, then the extra files.
func initrdTree(ctx context.Context, spec InitrdSpec) (*tree, *modlist.List, error) {
	if err := checkStaticExecutable(spec.Init); err != nil {
		return nil, nil, err
	}
	features, err := normalizeFeatures(spec.Features)
	if err != nil {
		return nil, nil, err
	}
	list := &modlist.List{Modules: []modlist.Module{}}
	if spec.Kernel != nil && spec.LocalKernel != nil {
		return nil, nil, fmt.Errorf("an initrd is for a kernel package or a local kernel, not both: %w", errdefs.ErrInvalidArgument)
	}
	if lk := spec.LocalKernel; lk != nil {
		if err := lk.CheckFeatures(features); err != nil {
			return nil, nil, err
		}
		list.KernelRelease, list.Builtin = lk.Release, features
	}
	if spec.Kernel != nil {
		if list, err = ResolveModules(ctx, spec.Kernel, features); err != nil {
			return nil, nil, fmt.Errorf("resolving modules: %w", err)
		}
	}
	listData, err := modlist.Encode(list)
	if err != nil {
		return nil, nil, err
	}
	t := newTree()
	files := []File{
		{Path: "/dev", Mode: fs.ModeDir | 0o755},
		{Path: "/dev/console", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600, Major: 5, Minor: 1},
		{Path: "/proc", Mode: fs.ModeDir | 0o555},
		{Path: "/sys", Mode: fs.ModeDir | 0o555},
		{Path: "/run", Mode: fs.ModeDir | 0o755},
		{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
		{Path: "/mnt", Mode: fs.ModeDir | 0o755},
		{Path: "/init", Mode: 0o755, Source: spec.Init},
		{Path: modlist.Path, Mode: 0o644, Data: listData},
	}
	for _, m := range list.Modules {
		src := filepath.Join(spec.Kernel.Dir, filepath.FromSlash(m.Path))
		if !spec.KeepModuleSignatures {
			data, err := os.ReadFile(src)
			if err != nil {
				return nil, nil, err
			}
			files = append(files, File{Path: m.Path, Mode: 0o644, Data: stripModuleSignature(data)})
			continue
		}
		files = append(files, File{Path: m.Path, Mode: 0o644, Source: src})
	}
	files = append(files, spec.ExtraFiles...)
	for _, f := range files {
		if err := t.add(f); err != nil {
			return nil, nil, err
		}
	}
	return t, list, nil
}

// checkStaticExecutable refuses an /init that cannot run as PID 1 of an
// initrd with nothing else in it: not an ELF executable, or one that needs
// a dynamic loader.
func checkStaticExecutable(file string) error {
	if file == "" {
		return fmt.Errorf("no init binary given: %w", errdefs.ErrInvalidArgument)
	}
	f, err := elf.Open(file)
	if err != nil {
		var fe *elf.FormatError
		if errors.As(err, &fe) {
			return fmt.Errorf("init %s is not an ELF executable: %w", file, errors.Join(err, errdefs.ErrInvalidArgument))
		}
		return fmt.Errorf("opening init: %w", err)
	}
	defer func() { _ = f.Close() }()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("init %s is dynamically linked; build it static: %w", file, errdefs.ErrInvalidArgument)
		}
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("init %s is an ELF %v, not an executable: %w", file, f.Type, errdefs.ErrInvalidArgument)
	}
	return nil
}

// compressor wraps w in the named compression. Every encoder runs
// single-threaded with fixed settings so the output does not depend on the
// host's core count.
func compressor(w io.Writer, name string) (io.WriteCloser, error) {
	switch name {
	case CompressionZstd:
		return zstd.NewWriter(w,
			zstd.WithEncoderLevel(zstd.SpeedBetterCompression),
			zstd.WithEncoderConcurrency(1),
			zstd.WithWindowSize(zstdWindow),
			zstd.WithEncoderCRC(true))
	case CompressionLZ4:
		zw := lz4.NewWriter(w)
		// The kernel's initrd decoder reads only the legacy frame.
		if err := zw.Apply(lz4.LegacyOption(true), lz4.ConcurrencyOption(1), lz4.CompressionLevelOption(lz4.Level9)); err != nil {
			return nil, err
		}
		// Hide the writer's ReadFrom: io.Copy would use it, and it does not
		// handle legacy frames.
		return writeOnly{zw}, nil
	case CompressionGzip:
		// A zero header: no name, no mtime.
		return gzip.NewWriterLevel(w, gzip.DefaultCompression)
	case CompressionNone:
		return nopWriteCloser{w}, nil
	}
	return nil, fmt.Errorf("compression %q (want zstd, lz4, gzip or none): %w", name, errdefs.ErrInvalidArgument)
}

type writeOnly struct{ io.WriteCloser }

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }
