package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/hull-runtime/hull/internal/channel"
	"github.com/hull-runtime/hull/internal/guestimage"
	"github.com/hull-runtime/hull/internal/launch"
)

func newImageCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build and inspect guest images",
	}
	cmd.AddCommand(newImageBuildCommand(g), newImageBusyboxCommand())
	return cmd
}

func newImageBuildCommand(g *globalFlags) *cobra.Command {
	var (
		agentPath   string
		pausePath   string
		output      string
		kernelDeb   string
		vmlinux     string
		kconfig     string
		compression string
		format      string
		features    []string
		debugShell  string
		quiet       bool
	)
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build the guest kernel and initrd from a Debian kernel package or a local kernel",
		Long: "Download the configured Debian kernel package (apt-get download; never installed),\n" +
			"extract a bootable kernel, collect the kernel modules the image features need, and pack\n" +
			"them with hull-agent as /init and hull-pause (the waiting stage of pod sandbox processes)\n" +
			"into an initrd. Writes kernel, initrd and manifest.json.\n\n" +
			"With --kernel-vmlinux and --kernel-config, use a locally built kernel instead, such as\n" +
			"the hull kernel (`make kernel`, docs/guest-kernel.md). It has no modules: every image\n" +
			"feature must be built in (=y) in its .config, or the build fails naming the missing\n" +
			"CONFIG_ symbol; the initrd then holds only the agent and hull-pause.\n\n" +
			"With --format erofs (needs mkfs.erofs from erofs-utils, and a local kernel with virtio-pmem,\n" +
			"pmem, DAX and erofs built in, such as the hull kernel), also pack the same files as a\n" +
			"read-only erofs image that the guest boots from through virtio-pmem with DAX; the\n" +
			"manifest's kind is then \"rootfs\" (image.kind may still pick the initrd).\n\n" +
			"With --debug-shell, also pack a static shell binary for debugging with `hull exec`\n" +
			"(opt-in; images have no shell by default). It must be a static x86-64 executable that\n" +
			"runs a shell when called as \"sh\", such as busybox-static's /bin/busybox (about 2 MB).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := g.load(ctx)
			if err != nil {
				return err
			}
			if agentPath == "" {
				agentPath, err = launch.AgentBinary()
				if err != nil {
					return fmt.Errorf("%w; pass --agent", err)
				}
			}
			if pausePath == "" {
				pausePath, err = launch.PauseBinary()
				if err != nil {
					return fmt.Errorf("%w (make build makes bin/hull-pause); pass --pause", err)
				}
			}
			o := guestimage.Options{
				KernelPackage: c.Image.KernelPackage,
				KernelDeb:     kernelDeb,
				KernelVmlinux: vmlinux,
				KernelConfig:  kconfig,
				CacheDir:      c.Image.CacheDir,
				AgentBinary:   agentPath,
				PauseBinary:   pausePath,
				Features:      c.Image.Features,
				Compression:   c.Image.Compression,
				OutputDir:     c.Image.AssetsDir,
				DebugShell:    debugShell,
				Format:        format,
			}
			if output != "" {
				o.OutputDir = output
			}
			if compression != "" {
				o.Compression = compression
			}
			if len(features) > 0 {
				o.Features = features
			}
			if !quiet {
				o.Progress = cmd.ErrOrStderr()
			}
			m, err := guestimage.Build(ctx, o)
			if err != nil {
				return err
			}
			mods := fmt.Sprintf("%d modules", len(m.Modules))
			if m.Kernel.Local != nil {
				mods = "no modules, built in: " + strings.Join(m.Builtin, " ")
			}
			if m.DebugShell != nil {
				mods += ", debug shell " + m.DebugShell.Path
			}
			if m.Rootfs != nil {
				mods += ", root image " + m.Rootfs.File + " (" + m.Rootfs.FSType + ")"
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "guest image in %s (kind %s): kernel %s (%s), initrd %s (%s), %s\n",
				o.OutputDir, m.ImageKind(), m.Kernel.File, m.Kernel.Release, m.Initrd.File, m.Initrd.Compression, mods)
			return err
		},
	}
	cmd.Flags().StringVar(&agentPath, "agent", "", "static hull-agent binary (default: beside hull, or ../libexec/hull/hull-agent)")
	cmd.Flags().StringVar(&pausePath, "pause", "", "static hull-pause binary, the waiting stage of pod sandbox processes, packed as "+
		channel.PauseBinaryPath+" (default: beside hull, or ../libexec/hull/hull-pause)")
	cmd.Flags().StringVar(&output, "output", "", "output directory (default: image.assets_dir)")
	cmd.Flags().StringVar(&kernelDeb, "kernel-deb", "", "use this kernel .deb instead of downloading image.kernel_package")
	cmd.Flags().StringVar(&vmlinux, "kernel-vmlinux", "", "use this locally built PVH vmlinux (no modules) instead of a kernel package; needs --kernel-config")
	cmd.Flags().StringVar(&kconfig, "kernel-config", "", "the .config the --kernel-vmlinux kernel was built from: every image feature must be =y in it")
	cmd.MarkFlagsRequiredTogether("kernel-vmlinux", "kernel-config")
	cmd.MarkFlagsMutuallyExclusive("kernel-vmlinux", "kernel-deb")
	cmd.Flags().StringVar(&compression, "compression", "", "initrd compression: zstd, lz4, gzip, none (default: image.compression)")
	cmd.Flags().StringVar(&format, "format", guestimage.FormatInitrd, "image format: initrd, or erofs (the initrd and a read-only erofs root image booted through virtio-pmem with DAX)")
	cmd.Flags().StringSliceVar(&features, "features", nil, "image features (default: image.features)")
	cmd.Flags().StringVar(&debugShell, "debug-shell", "", "for debugging with hull exec: pack the static shell binary at `PATH` (e.g. /bin/busybox from busybox-static) as "+
		channel.DebugShellPath+"; opt-in, adds its size (about 2 MB) to the initrd")
	cmd.Flags().BoolVar(&quiet, "quiet", false, "no progress output")
	return cmd
}
