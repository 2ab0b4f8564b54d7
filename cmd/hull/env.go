package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/containerd/log"
	"github.com/spf13/cobra"

	"github.com/hull-runtime/hull/internal/guestimage"
	"github.com/hull-runtime/hull/internal/kvm"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/version"
)

func newEnvCommand(g *globalFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "env",
		Short: "Print the effective configuration, guest assets and versions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := g.load(ctx)
			if err != nil {
				return err
			}
			qemuPath := c.Hypervisor.QEMU.Path
			if qemuPath == "" {
				qemuPath, _ = exec.LookPath("qemu-system-x86_64")
			}
			qemuVersion, qerr := programVersion(ctx, qemuPath, "--version")
			if qerr != nil {
				qemuVersion = "unavailable: " + qerr.Error()
			}
			vfs := findVirtiofsd()
			vfsVersion, verr := programVersion(ctx, vfs, "--version")
			if verr != nil {
				vfsVersion = "unavailable: " + verr.Error()
			}
			// The verdict the runtime uses: the cached one when there is
			// one (see kvm.ProbeCached).
			probe := kvm.ProbeCached(ctx, kvm.DefaultTimeout, "")
			accel := resolveAccel(ctx, c.Hypervisor.QEMU.Accel, probe)
			assets := map[string]any{"dir": c.Image.AssetsDir}
			if m, err := guestimage.ReadManifest(c.Image.AssetsDir); err != nil {
				assets["error"] = err.Error()
			} else {
				assets["manifest"] = m
				assets["debug_shell"] = m.DebugShell != nil
				if err := m.Verify(c.Image.AssetsDir); err != nil {
					assets["error"] = err.Error()
				}
			}
			source := c.Source
			if source == "" {
				source = "built-in defaults"
			}
			env := map[string]any{
				"hull":   map[string]string{"version": version.Version, "commit": version.Commit, "go": runtime.Version()},
				"config": map[string]any{"source": source, "effective": c},
				"host": map[string]any{
					"kvm": probe, "kvm_cached": probe.Cached, "accel": accel, "agent_transport": launch.Transport(c),
				},
				"qemu":      map[string]string{"path": qemuPath, "version": qemuVersion},
				"virtiofsd": map[string]string{"path": vfs, "version": vfsVersion},
				"assets":    assets,
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(env)
			}
			var sb strings.Builder
			fmt.Fprintf(&sb, "# hull %s (commit %s, %s)\n", version.Version, version.Commit, runtime.Version())
			fmt.Fprintf(&sb, "# configuration: %s\n", source)
			fmt.Fprintf(&sb, "# qemu: %s (%s)\n# virtiofsd: %s (%s)\n", qemuPath, qemuVersion, vfs, vfsVersion)
			cached := ""
			if probe.Cached {
				cached = ", cached " + probe.At.Format(time.RFC3339)
			}
			fmt.Fprintf(&sb, "# accelerator: %s (kvm: %s%s)\n# agent transport: %s\n", accel, probe.Reason, cached, launch.Transport(c))
			if e, ok := assets["error"]; ok {
				fmt.Fprintf(&sb, "# guest assets: %s: %v\n", c.Image.AssetsDir, e)
			} else if m, ok := assets["manifest"].(*guestimage.Manifest); ok {
				fmt.Fprintf(&sb, "# guest assets: %s: kernel %s, initrd %s\n", c.Image.AssetsDir, m.Kernel.File, m.Initrd.File)
				fmt.Fprintf(&sb, "# debug shell: %s\n", debugShellDetail(m))
			}
			b, err := c.Encode()
			if err != nil {
				return err
			}
			sb.Write(b)
			_, err = io.WriteString(out, sb.String())
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// resolveAccel is the accelerator a VM gets with the configured accel and
// the probe's verdict; a fallback from "auto" to TCG is logged at warning
// level, as the shim logs it when a VM starts.
func resolveAccel(ctx context.Context, accel string, probe kvm.Result) string {
	if accel != "auto" {
		return accel
	}
	if probe.Usable {
		return "kvm"
	}
	log.G(ctx).WithField("kvm", probe.Reason).
		Warn("KVM unusable: falling back to TCG, guests run under software emulation, many times slower")
	return "tcg"
}
