package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hull-runtime/hull/internal/channel"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/guestimage"
	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
	"github.com/hull-runtime/hull/internal/kvm"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/virtiofs"
)

// Check outcomes.
const (
	statusOK   = "ok"
	statusWarn = "warn"
	statusFail = "fail"
)

// checkResult is one line of `hull check`.
type checkResult struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	Detail string `json:"detail"`
}

func newCheckCommand(g *globalFlags) *cobra.Command {
	var (
		asJSON  bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check whether this host can run hull",
		Long: "Check the host: CPU virtualization, whether /dev/kvm really runs a standard guest (a real\n" +
			"probe with a hard time limit), vhost devices, QEMU and virtiofsd, and the guest assets.\n" +
			"Exits 1 when the runtime cannot work here; warnings alone exit 0.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := g.load(ctx)
			var results []checkResult
			if err != nil {
				results = append(results, checkResult{"configuration", statusFail, err.Error()})
				c = config.Defaults()
			} else {
				src := c.Source
				if src == "" {
					src = "built-in defaults"
				}
				results = append(results, checkResult{"configuration", statusOK, src})
			}
			results = append(results, runChecks(ctx, c, timeout)...)

			failed := false
			for _, r := range results {
				failed = failed || r.Status == statusFail
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(map[string]any{"ok": !failed, "checks": results}); err != nil {
					return err
				}
			} else {
				var b strings.Builder
				for _, r := range results {
					fmt.Fprintf(&b, "%-4s  %-22s %s\n", r.Status, r.Name, r.Detail)
				}
				if failed {
					b.WriteString("hull cannot run on this host\n")
				} else {
					b.WriteString("hull can run on this host\n")
				}
				if _, err := io.WriteString(out, b.String()); err != nil {
					return err
				}
			}
			if failed {
				return exitError(1)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().DurationVar(&timeout, "kvm-timeout", kvm.DefaultTimeout, "time limit of the KVM probe")
	return cmd
}

func runChecks(ctx context.Context, c *config.Config, kvmTimeout time.Duration) []checkResult {
	var rs []checkResult
	add := func(name, status, format string, args ...any) {
		rs = append(rs, checkResult{name, status, fmt.Sprintf(format, args...)})
	}

	// Hardware virtualization and KVM.
	probe := kvm.Probe(ctx, kvmTimeout)
	if probe.CPUVirt != "" {
		add("cpu virtualization", statusOK, "%s", probe.CPUVirt)
	} else {
		add("cpu virtualization", statusWarn, "no vmx or svm flag in /proc/cpuinfo")
	}
	accel := c.Hypervisor.QEMU.Accel
	switch {
	case probe.Usable:
		add("kvm", statusOK, "%s (probe took %s)", probe.Reason, probe.Took.Round(time.Millisecond))
	case accel == "kvm":
		add("kvm", statusFail, "configured accel = \"kvm\" but KVM cannot run a standard guest: %s", probe.Reason)
	default:
		add("kvm", statusWarn, "unusable for standard guests: %s (probe took %s)", probe.Reason, probe.Took.Round(time.Millisecond))
	}
	switch {
	case accel == "tcg" || (accel == "auto" && !probe.Usable):
		add("accelerator", statusWarn, "TCG (software emulation): VMs work but boot and run much slower")
	default:
		add("accelerator", statusOK, "KVM")
	}

	// Host devices.
	transport := launch.ChooseTransport(c)
	if exists(launch.VhostVsockDevice) {
		add("vhost-vsock", statusOK, "%s present", launch.VhostVsockDevice)
	} else if c.Agent.Transport == "vsock" {
		add("vhost-vsock", statusFail, "%s missing but agent.transport = \"vsock\"", launch.VhostVsockDevice)
	} else {
		add("vhost-vsock", statusWarn, "%s missing: the agent is reached over virtio-serial", launch.VhostVsockDevice)
	}
	add("agent transport", statusOK, "%s (%s)", transport.Transport, transport.Reason)
	st, detail := vhostNetCheck(qemu.OpenVhostNet())
	add("vhost-net", st, "%s", detail)
	if exists("/dev/net/tun") {
		add("tun", statusOK, "/dev/net/tun present")
	} else {
		add("tun", statusFail, "/dev/net/tun missing: pods cannot have networking")
	}

	// Programs.
	qemuPath := c.Hypervisor.QEMU.Path
	if qemuPath == "" {
		qemuPath, _ = exec.LookPath("qemu-system-x86_64")
	}
	if v, err := programVersion(ctx, qemuPath, "--version"); err != nil {
		add("qemu", statusFail, "qemu-system-x86_64 not usable: %v (apt-get install qemu-system-x86)", err)
	} else {
		add("qemu", statusOK, "%s: %s", qemuPath, v)
	}
	if c.Hypervisor.QEMU.Machine == qemu.MachineQ35 || c.Hypervisor.QEMU.Machine == "" {
		switch f, err := qemu.FirmwareFile(qemuPath, c.Hypervisor.QEMU.Firmware); {
		case err != nil:
			add("firmware", statusFail, "%v", err)
		case f == "":
			add("firmware", statusOK, "%s (QEMU's own)", c.Hypervisor.QEMU.Firmware)
		default:
			add("firmware", statusOK, "%s: %s", c.Hypervisor.QEMU.Firmware, f)
		}
	}
	if vfs, err := virtiofs.Lookup(); err != nil {
		add("virtiofsd", statusFail, "%v (Debian 12: apt-get install qemu-system-x86; newer releases: apt-get install virtiofsd)", err)
	} else if v, err := programVersion(ctx, vfs, "--version"); err != nil {
		add("virtiofsd", statusFail, "virtiofsd not usable: %v", err)
	} else {
		add("virtiofsd", statusOK, "%s: %s", vfs, v)
	}

	// Guest assets.
	m, err := guestimage.ReadManifest(c.Image.AssetsDir)
	switch {
	case err != nil:
		add("guest assets", statusFail, "%v (run `hull image build`)", err)
	default:
		if err := m.Verify(c.Image.AssetsDir); err != nil {
			add("guest assets", statusFail, "%s: %v", c.Image.AssetsDir, err)
		} else {
			kind := m.ImageKind()
			if c.Image.Kind != "" {
				kind = c.Image.Kind
			}
			add("guest assets", statusOK, "%s: kernel %s, boots %s, initrd %s, %d modules, match the manifest",
				c.Image.AssetsDir, m.Kernel.Release, kind, m.Initrd.Compression, len(m.Modules))
			add("debug shell", statusOK, "%s", debugShellDetail(m))
			st, detail := pauseCheck(m)
			add("pod sandbox binary", st, "%s", detail)
		}
	}
	rs = append(rs, factoryCheck(ctx, c))
	return rs
}

// vhostNetCheck turns the driver's own test of /dev/vhost-net (it opens and
// answers as vhost-net) into the check's line: the driver gives pod NICs
// vhost-net exactly when that test passes.
func vhostNetCheck(err error) (status, detail string) {
	if err == nil {
		return statusOK, qemu.VhostNetDevice + " opens: pod NICs use vhost-net under KVM where QEMU starts in its cgroup (cgroup v2)"
	}
	return statusWarn, fmt.Sprintf("%v: pod NICs run without vhost-net (QEMU moves every packet; slower)", err)
}

// debugShellDetail says whether the guest image has a debug shell for
// `hull exec`; having none is the default, not a fault.
func debugShellDetail(m *guestimage.Manifest) string {
	if m.DebugShell == nil {
		return "no (hull exec needs an image built with --debug-shell)"
	}
	return fmt.Sprintf("yes: %s, %d bytes, sha256 %s", m.DebugShell.Path, m.DebugShell.Size, m.DebugShell.SHA256)
}

// pauseCheck says whether the guest image holds hull-pause, the waiting
// stage of pod sandbox processes. An image built before it has an agent
// of its time, which runs pod sandbox processes as it did then; an agent
// of this release in such an image refuses CRI pods' sandbox containers.
func pauseCheck(m *guestimage.Manifest) (status, detail string) {
	if m.Pause == nil {
		return statusWarn, "none: the image predates hull-pause; its own agent runs CRI pods' sandbox processes as it did then, " +
			"and an agent of this release packed into it would refuse them (rebuild it with hull image build)"
	}
	return statusOK, fmt.Sprintf("%s, %d bytes, sha256 %s", channel.PauseBinaryPath, m.Pause.Size, m.Pause.SHA256)
}

// findVirtiofsd returns the virtiofsd the runtime would run, or "".
func findVirtiofsd() string {
	p, _ := virtiofs.Lookup()
	return p
}

// programVersion runs "path flag" and returns the first line of its output.
func programVersion(ctx context.Context, path, flag string) (string, error) {
	if path == "" {
		return "", fmt.Errorf("not found")
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, flag).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", path, flag, err)
	}
	line, _, _ := bufio.NewReader(strings.NewReader(string(out))).ReadLine()
	return strings.TrimSpace(string(line)), nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
