package guestimage

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRealKernelBoot boots the PVH vmlinux with an initrd in every
// compression under QEMU (TCG, so it runs anywhere) with bootinit as /init,
// which loads every listed module and powers off.
func TestRealKernelBoot(t *testing.T) {
	qemu := requireTool(t, "qemu-system-x86_64")
	k := realKernel(t)
	init := bootInit(t)
	vmlinux := filepath.Join(t.TempDir(), "vmlinux")
	if err := k.ExtractVmlinux(vmlinux); err != nil {
		t.Fatal(err)
	}
	for _, comp := range []string{CompressionZstd, CompressionLZ4, CompressionGzip, CompressionNone} {
		t.Run(comp, func(t *testing.T) {
			initrd := filepath.Join(t.TempDir(), "initrd")
			f, err := os.Create(initrd)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := WriteInitrd(context.Background(), f, InitrdSpec{Init: init, Kernel: k, Compression: comp}); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
			defer cancel()
			var out bytes.Buffer
			cmd := exec.CommandContext(ctx, qemu, "-machine", "q35", "-accel", "tcg", "-m", "512",
				"-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
				"-kernel", vmlinux, "-initrd", initrd,
				"-append", "console=ttyS0 panic=-1 rdinit=/init quiet")
			cmd.Stdout, cmd.Stderr = &out, &out
			t0 := time.Now()
			err = cmd.Run()
			took := time.Since(t0).Round(time.Millisecond)
			console := out.String()
			if err != nil || !strings.Contains(console, "bootinit: BOOT-OK") {
				t.Fatalf("boot failed after %s (%v); console:\n%s", took, err, console)
			}
			st, _ := os.Stat(initrd)
			t.Logf("%s initrd of %d bytes: booted and powered off in %s\n%s", comp, st.Size(), took, grepLines(console, "bootinit:"))
		})
	}
}

func grepLines(s, prefix string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, prefix) {
			b.WriteString(strings.TrimSpace(l) + "\n")
		}
	}
	return b.String()
}
