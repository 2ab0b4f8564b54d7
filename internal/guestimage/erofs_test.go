package guestimage

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/modlist"
)

// rootfsKconfig is a full config with what a rootfs image needs built in.
func rootfsKconfig(edits ...string) string {
	var all []string
	for _, s := range rootfsSymbols {
		all = append(all, s+"=y")
	}
	return fullKconfig(append(all, edits...)...)
}

// dumpErofs runs dump.erofs (erofs-utils) with args on image.
func dumpErofs(t *testing.T, image string, args ...string) string {
	t.Helper()
	dump := requireTool(t, "dump.erofs")
	out, err := exec.Command(dump, append(args, image)...).CombinedOutput()
	if err != nil {
		t.Fatalf("dump.erofs %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestBuildErofs builds an erofs image with a local kernel twice: the
// manifest says kind rootfs and describes the image, the image is padded,
// holds the agent as /init (uncompressed, not inline: the layout DAX maps),
// the module list and the mount points the agent needs on a read-only root,
// and both builds give the same bytes.
func TestBuildErofs(t *testing.T) {
	requireTool(t, "mkfs.erofs")
	v, c := localKernelFiles(t, fakeLocalVmlinux(true, localRelease), rootfsKconfig())
	agent := staticInit(t)
	agentData, err := os.ReadFile(agent)
	if err != nil {
		t.Fatal(err)
	}
	var images [][]byte
	for i := range 2 {
		out := filepath.Join(t.TempDir(), "out")
		m, err := Build(context.Background(), Options{
			Format: FormatErofs, KernelVmlinux: v, KernelConfig: c, AgentBinary: agent, PauseBinary: agent, OutputDir: out,
			Features: []string{modlist.FeatureBusPCI, modlist.FeatureSerial, modlist.FeaturePmem},
		})
		if err != nil {
			t.Fatalf("build %d: %v", i, err)
		}
		if m.Format != FormatErofs || m.Kind != KindRootfs || m.ImageKind() != KindRootfs {
			t.Errorf("format %q, kind %q; want erofs, rootfs", m.Format, m.Kind)
		}
		r := m.Rootfs
		if r == nil || r.File != "rootfs-"+localRelease+".erofs" || r.FSType != "erofs" {
			t.Fatalf("rootfs %+v", r)
		}
		if r.Size <= 0 || r.Size%RootfsAlign != 0 {
			t.Errorf("rootfs size %d: want a positive multiple of %d", r.Size, RootfsAlign)
		}
		if m.Initrd == nil {
			t.Error("an erofs build carries the initrd too")
		}
		read, err := ReadManifest(out)
		if err != nil {
			t.Fatal(err)
		}
		if err := read.Verify(out); err != nil {
			t.Fatal(err)
		}
		if read.Rootfs == nil || *read.Rootfs != *r || read.Kind != KindRootfs {
			t.Errorf("manifest read back: rootfs %+v kind %q", read.Rootfs, read.Kind)
		}
		image := read.RootfsPath(out)
		st, err := os.Stat(image)
		if err != nil || st.Size() != r.Size || st.Mode().Perm() != 0o644 {
			t.Fatalf("image %v, %v; want %d bytes, mode 0644", st, err, r.Size)
		}
		ls := dumpErofs(t, image, "--path=/", "--ls")
		for _, name := range []string{"init", "etc", "var", "run", "tmp", "proc", "sys", "dev"} {
			if !regexp.MustCompile(`(?m)\s` + name + `$`).MatchString(ls) {
				t.Errorf("the image's / lacks %s:\n%s", name, ls)
			}
		}
		info := dumpErofs(t, image, "--path=/init")
		if !strings.Contains(info, "Layout: 0 ") || !strings.Contains(info, "Access: 0755") {
			t.Errorf("/init is not a plain (DAX-mappable) 0755 file:\n%s", info)
		}
		if !strings.Contains(info, "Size: "+strconv.Itoa(len(agentData))+" ") {
			t.Errorf("/init is not the agent's %d bytes:\n%s", len(agentData), info)
		}
		if got := dumpErofs(t, image, "--path="+modlist.Path); !strings.Contains(got, "regular file") {
			t.Errorf("no module list at %s:\n%s", modlist.Path, got)
		}
		// The image's /init holds the agent's bytes: fsck.erofs extracts it.
		fsck := requireTool(t, "fsck.erofs")
		x := filepath.Join(t.TempDir(), "x")
		if out, err := exec.Command(fsck, "--extract="+x, image).CombinedOutput(); err != nil {
			t.Fatalf("fsck.erofs: %v\n%s", err, out)
		}
		if got, err := os.ReadFile(filepath.Join(x, "init")); err != nil || !bytes.Equal(got, agentData) {
			t.Errorf("extracted /init differs from the agent (%v)", err)
		}
		b, err := os.ReadFile(image)
		if err != nil {
			t.Fatal(err)
		}
		images = append(images, b)
		if leftovers, _ := filepath.Glob(filepath.Join(out, ".*")); len(leftovers) > 0 {
			t.Errorf("the build left %v", leftovers)
		}
	}
	if !bytes.Equal(images[0], images[1]) {
		t.Error("two builds of the same inputs give different erofs images")
	}
}

// TestBuildErofsRejects: an erofs image needs a local kernel that boots it
// without an initrd.
func TestBuildErofsRejects(t *testing.T) {
	agent := staticInit(t)
	t.Run("kernel package", func(t *testing.T) {
		_, err := Build(context.Background(), Options{Format: FormatErofs, KernelDeb: "/nonexistent.deb", AgentBinary: agent, PauseBinary: agent, OutputDir: t.TempDir()})
		if !errors.Is(err, errdefs.ErrNotImplemented) || !strings.Contains(err.Error(), "hull kernel") {
			t.Errorf("got %v, want a not-implemented error pointing at the hull kernel", err)
		}
	})
	for _, sym := range []string{"VIRTIO_PMEM", "EROFS_FS", "FS_DAX", "ZONE_DEVICE"} {
		t.Run("no "+sym, func(t *testing.T) {
			v, c := localKernelFiles(t, fakeLocalVmlinux(true, localRelease), rootfsKconfig(sym+"=m"))
			out := filepath.Join(t.TempDir(), "out")
			_, err := Build(context.Background(), Options{Format: FormatErofs, KernelVmlinux: v, KernelConfig: c, AgentBinary: agent, PauseBinary: agent, OutputDir: out,
				Features: []string{modlist.FeatureSerial}})
			if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "CONFIG_"+sym) {
				t.Errorf("got %v, want a failed-precondition error naming CONFIG_%s", err, sym)
			}
			if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a refused build wrote %s (%v)", out, err)
			}
		})
	}
	t.Run("ext4", func(t *testing.T) {
		_, err := Build(context.Background(), Options{Format: FormatExt4, AgentBinary: agent, PauseBinary: agent, OutputDir: t.TempDir()})
		if !errors.Is(err, errdefs.ErrNotImplemented) {
			t.Errorf("got %v, want not implemented", err)
		}
	})
}
