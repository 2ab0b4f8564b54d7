package guestimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/hull-runtime/hull/internal/channel"
	"github.com/hull-runtime/hull/internal/modlist"
)

// buildWithPause runs Build with a fake local kernel and pause as the pod
// sandbox binary into a new output directory.
func buildWithPause(t *testing.T, pause string) (*Manifest, string, error) {
	t.Helper()
	v, c := localKernelFiles(t, fakeLocalVmlinux(true, localRelease), fullKconfig())
	out := filepath.Join(t.TempDir(), "out")
	m, err := Build(context.Background(), Options{
		CacheDir: filepath.Join(t.TempDir(), "unused"), KernelVmlinux: v, KernelConfig: c,
		AgentBinary: staticInit(t), PauseBinary: pause, OutputDir: out, Features: []string{modlist.FeatureVsock},
	})
	return m, out, err
}

// TestBuildPause: the initrd holds the pod sandbox binary's bytes at
// channel.PauseBinaryPath with mode 0755, and the manifest records them.
func TestBuildPause(t *testing.T) {
	pause := writeFakeELF(t, t.TempDir(), "hull-pause", fakeELF{typ: elf.ET_EXEC, sections: []fakeSection{{".text", []byte{0xf4, 0x90, 0x90}}}})
	want, err := os.ReadFile(pause)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(want)
	wantInfo := AgentInfo{SHA256: hex.EncodeToString(sum[:]), Size: int64(len(want))}
	m, out, err := buildWithPause(t, pause)
	if err != nil {
		t.Fatal(err)
	}
	read, err := ReadManifest(out)
	if err != nil {
		t.Fatal(err)
	}
	for what, got := range map[string]*AgentInfo{"returned": m.Pause, "read back": read.Pause} {
		if got == nil || *got != wantInfo {
			t.Errorf("manifest %s: pause %+v, want %+v", what, got, wantInfo)
		}
	}
	name := strings.TrimPrefix(channel.PauseBinaryPath, "/")
	headers, contents := initrdEntries(t, filepath.Join(out, m.Initrd.File))
	if h, ok := headers[name]; !ok {
		t.Fatalf("the initrd has no %s", name)
	} else if h.Mode != cpio.TypeReg|0o755 {
		t.Errorf("%s mode %o, want %o", name, h.Mode, cpio.TypeReg|0o755)
	}
	if !bytes.Equal(contents[name], want) {
		t.Errorf("%s holds %d bytes that are not the %d of %s", name, len(contents[name]), len(want), pause)
	}
}

// TestBuildPauseRejects: without a pod sandbox binary the guest can run,
// the build fails with errdefs.ErrInvalidArgument saying so, before
// anything is written.
func TestBuildPauseRejects(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "pause.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nsleep infinity\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	dynamic := writeFakeELF(t, dir, "dynamic", fakeELF{typ: elf.ET_DYN, interp: "/lib64/ld-linux-x86-64.so.2"})
	// A FIFO with no writer: opening it to read must not wait for one.
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// Sparse: one byte more than a guest image packs.
	huge := filepath.Join(dir, "huge")
	if err := os.WriteFile(huge, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(huge, maxPackedBinary+1); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, pause, wantIn string
	}{
		{"none given", "", "no pod sandbox binary given"},
		{"missing", filepath.Join(dir, "hull-pause"), "does not exist"},
		{"a directory", dir, "not a regular file"},
		{"a script", script, "is a script"},
		{"dynamic", dynamic, "dynamically linked"},
		{"a FIFO", fifo, "not a regular file"},
		{"too large", huge, "more than the"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, out, err := buildWithPause(t, tc.pause)
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.wantIn) || !strings.Contains(err.Error(), "make build") {
				t.Fatalf("error %v, want invalid argument saying %q and how to build it", err, tc.wantIn)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("a refused build left %s (%v)", out, err)
			}
		})
	}
}
