package guestimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"
	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/channel"
	"github.com/hull-runtime/hull/internal/modlist"
)

// busyboxPath is the static shell the tests pack: Debian's busybox-static.
const busyboxPath = "/bin/busybox"

// requireBusybox returns busyboxPath, or fails the test: the host is
// expected to have busybox-static installed.
func requireBusybox(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(busyboxPath); err != nil {
		t.Fatalf("test needs the static %s (apt-get install busybox-static): %v", busyboxPath, err)
	}
	return busyboxPath
}

// buildLocalImage runs Build with a fake local kernel (no package, no apt)
// into a new output directory, packing shell as the debug shell ("" for
// none), and returns the manifest and the directory.
func buildLocalImage(t *testing.T, agent, shell string) (*Manifest, string, error) {
	t.Helper()
	v, c := localKernelFiles(t, fakeLocalVmlinux(true, localRelease), fullKconfig())
	out := filepath.Join(t.TempDir(), "out")
	m, err := Build(context.Background(), Options{
		CacheDir: filepath.Join(t.TempDir(), "unused"), KernelVmlinux: v, KernelConfig: c,
		AgentBinary: agent, PauseBinary: agent, OutputDir: out, Features: []string{modlist.FeatureVsock}, DebugShell: shell,
	})
	return m, out, err
}

// initrdEntries returns the headers and contents of an uncompressed initrd
// by name.
func initrdEntries(t *testing.T, p string) (map[string]*cpio.Header, map[string][]byte) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	headers, contents := map[string]*cpio.Header{}, map[string][]byte{}
	r := cpio.NewReader(bytes.NewReader(b))
	for {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			return headers, contents
		}
		if err != nil {
			t.Fatal(err)
		}
		headers[h.Name] = h
		if contents[h.Name], err = io.ReadAll(r); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBuildDebugShell builds the image with busybox as the debug shell,
// given directly twice and once through a symbolic link: each initrd holds
// busybox's bytes at channel.DebugShellPath with mode 0755 under 0755
// directories, the manifest (as returned and as read back) records its
// sha256 and size, and all three builds give the same initrd and manifest.
func TestBuildDebugShell(t *testing.T) {
	busybox := requireBusybox(t)
	want, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(want)
	wantInfo := DebugShellInfo{Path: channel.DebugShellPath, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(want))}
	link := filepath.Join(t.TempDir(), "sh")
	if err := os.Symlink(busybox, link); err != nil {
		t.Fatal(err)
	}
	agent := staticInit(t)
	name := strings.TrimPrefix(channel.DebugShellPath, "/")
	var outs []string
	for i, shell := range []string{busybox, busybox, link} {
		m, out, err := buildLocalImage(t, agent, shell)
		if err != nil {
			t.Fatalf("build %d (%s): %v", i, shell, err)
		}
		if m.DebugShell == nil || *m.DebugShell != wantInfo {
			t.Errorf("build %d: manifest debug shell %+v, want %+v", i, m.DebugShell, wantInfo)
		}
		read, err := ReadManifest(out)
		if err != nil {
			t.Fatal(err)
		}
		if read.DebugShell == nil || *read.DebugShell != wantInfo {
			t.Errorf("build %d: manifest read back: debug shell %+v, want %+v", i, read.DebugShell, wantInfo)
		}
		if err := read.Verify(out); err != nil {
			t.Fatal(err)
		}
		headers, contents := initrdEntries(t, filepath.Join(out, m.Initrd.File))
		if h, ok := headers[name]; !ok {
			t.Fatalf("build %d: the initrd has no %s", i, name)
		} else if h.Mode != cpio.TypeReg|0o755 {
			t.Errorf("build %d: %s mode %o, want %o", i, name, h.Mode, cpio.TypeReg|0o755)
		}
		if !bytes.Equal(contents[name], want) {
			t.Errorf("build %d: %s holds %d bytes that are not %s's %d", i, name, len(contents[name]), busybox, len(want))
		}
		for _, dir := range []string{"usr", "usr/libexec", "usr/libexec/hull"} {
			if h, ok := headers[dir]; !ok || h.Mode != cpio.TypeDir|0o755 {
				t.Errorf("build %d: parent %s: %+v, want a 0755 directory", i, dir, h)
			}
		}
		outs = append(outs, out)
	}
	for _, f := range []string{ManifestFile, "initrd-" + localRelease + ".img"} {
		a, errA := os.ReadFile(filepath.Join(outs[0], f))
		for i, out := range outs[1:] {
			b, errB := os.ReadFile(filepath.Join(out, f))
			if errA != nil || errB != nil || !bytes.Equal(a, b) {
				t.Errorf("%s differs between build 0 and build %d (%v, %v)", f, i+1, errA, errB)
			}
		}
	}
}

// TestBuildNoDebugShell: by default the initrd holds nothing under /usr but
// the pod sandbox binary, and the manifest has no debug_shell key at all.
func TestBuildNoDebugShell(t *testing.T) {
	m, out, err := buildLocalImage(t, staticInit(t), "")
	if err != nil {
		t.Fatal(err)
	}
	if m.DebugShell != nil {
		t.Errorf("manifest debug shell %+v, want none", m.DebugShell)
	}
	headers, _ := initrdEntries(t, filepath.Join(out, m.Initrd.File))
	for name := range headers {
		switch name {
		case "usr", "usr/libexec", "usr/libexec/hull", strings.TrimPrefix(channel.PauseBinaryPath, "/"):
			continue
		}
		if strings.HasPrefix(name, "usr/") || strings.Contains(name, "debug-shell") {
			t.Errorf("the initrd holds %s", name)
		}
	}
	b, err := os.ReadFile(filepath.Join(out, ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte("debug_shell")) {
		t.Errorf("the manifest mentions a debug shell:\n%s", b)
	}
}

// TestBuildDebugShellRejects: a debug shell the guest could not run fails
// the build with errdefs.ErrInvalidArgument naming the file and the reason,
// before anything is written.
func TestBuildDebugShellRejects(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "shell.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexec /bin/sh \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	text := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(text, []byte("not a program\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	truncated := filepath.Join(dir, "truncated")
	if err := os.WriteFile(truncated, []byte(elf.ELFMAG+"\x02\x01"), 0o755); err != nil {
		t.Fatal(err)
	}
	dynamic := writeFakeELF(t, dir, "dynamic", fakeELF{typ: elf.ET_DYN, interp: "/lib64/ld-linux-x86-64.so.2"})
	relocatable := writeFakeELF(t, dir, "shell.o", fakeELF{typ: elf.ET_REL})
	arm := fakeELF{typ: elf.ET_EXEC, sections: []fakeSection{{".text", []byte{0}}}}.bytes()
	binary.LittleEndian.PutUint16(arm[18:], uint16(elf.EM_AARCH64)) // e_machine
	armPath := filepath.Join(dir, "arm64")
	if err := os.WriteFile(armPath, arm, 0o755); err != nil {
		t.Fatal(err)
	}
	dangling := filepath.Join(dir, "dangling")
	if err := os.Symlink(filepath.Join(dir, "nowhere"), dangling); err != nil {
		t.Fatal(err)
	}
	// A dynamically linked program of this host: it exists on every
	// Debian system (coreutils).
	const hostDynamic = "/bin/ls"
	if _, err := os.Stat(hostDynamic); err != nil {
		t.Fatalf("test needs %s: %v", hostDynamic, err)
	}
	agent := staticInit(t)
	for _, tc := range []struct {
		name, shell string
		wantText    []string
		alsoErr     error
	}{
		{"host dynamic", hostDynamic, []string{"dynamically linked", "(interpreter /lib", "busybox-static"}, nil},
		{"fake dynamic", dynamic, []string{"dynamically linked (interpreter /lib64/ld-linux-x86-64.so.2)"}, nil},
		{"script", script, []string{"is a script, not an ELF executable", "busybox-static"}, nil},
		{"text file", text, []string{"is not an ELF executable", "busybox-static"}, nil},
		{"truncated ELF", truncated, []string{"is not a valid ELF file"}, nil},
		{"missing", filepath.Join(dir, "nowhere"), []string{"does not exist"}, fs.ErrNotExist},
		{"dangling symlink", dangling, []string{"does not exist"}, fs.ErrNotExist},
		{"directory", dir, []string{"is a directory"}, nil},
		{"relocatable", relocatable, []string{"not an executable"}, nil},
		{"arm64", armPath, []string{"EM_AARCH64", "x86-64"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, out, err := buildLocalImage(t, agent, tc.shell)
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error %v, want %v", err, errdefs.ErrInvalidArgument)
			}
			if tc.alsoErr != nil && !errors.Is(err, tc.alsoErr) {
				t.Errorf("error %v, want it to wrap %v too", err, tc.alsoErr)
			}
			for _, s := range append([]string{tc.shell}, tc.wantText...) {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if _, err := os.Stat(out); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("a rejected build created %s", out)
			}
		})
	}
}
