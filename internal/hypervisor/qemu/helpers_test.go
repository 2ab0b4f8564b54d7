package qemu

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/hull-runtime/hull/internal/kvm"
)

func fakeProbe(usable bool) func(context.Context) kvm.Result {
	return func(context.Context) kvm.Result {
		return kvm.Result{Usable: usable, Reason: "test says no"}
	}
}

// testMarker is what the test init prints on the console.
const testMarker = "HULL-TEST-MARKER up"

// requireQEMU returns the kernel to boot, and fails the test when QEMU, the
// kernel, busybox or cpio is missing and CI is set; it skips otherwise.
func requireQEMU(t *testing.T) string {
	t.Helper()
	// make unit sets it to the kernel of the image make image builds.
	kernel := os.Getenv("HULL_TEST_KERNEL")
	var missing []string
	for _, bin := range []string{DefaultBinary, "busybox", "cpio"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin+" in PATH")
		}
	}
	if kernel == "" {
		missing = append(missing, "a guest kernel: set HULL_TEST_KERNEL (make unit does, after make image)")
	} else if _, err := os.Stat(kernel); err != nil {
		missing = append(missing, "kernel "+kernel+" (HULL_TEST_KERNEL)")
	}
	if os.Geteuid() != 0 {
		missing = append(missing, "root (for cgroups)")
	}
	if len(missing) > 0 {
		msg := "real-QEMU test needs " + strings.Join(missing, ", ")
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return kernel
}

// testInitrd builds (once per test binary) an initramfs whose init prints
// testMarker, then powers off when the kernel command line has
// hulltest=poweroff (the kernel passes it to init as an environment
// variable), writes numbered lines to the console without end with
// hulltest=flood, else sleeps.
func testInitrd(t *testing.T) string {
	t.Helper()
	initrdOnce.Do(func() { initrdPath, initrdErr = buildInitrd() })
	if initrdErr != nil {
		t.Fatalf("building the test initrd: %v", initrdErr)
	}
	return initrdPath
}

func buildInitrd() (string, error) {
	dir, err := os.MkdirTemp("", "hull-qemu-test-")
	if err != nil {
		return "", err
	}
	root := filepath.Join(dir, "root")
	for _, d := range []string{"bin", "dev", "proc", "sys"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return "", err
		}
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return "", err
	}
	if out, err := exec.Command("cp", bb, filepath.Join(root, "bin", "busybox")).CombinedOutput(); err != nil {
		return "", &exec.ExitError{Stderr: out}
	}
	script := "#!/bin/busybox sh\n" +
		"echo '" + testMarker + "'\n" +
		"if [ \"$hulltest\" = poweroff ]; then /bin/busybox poweroff -f; fi\n" +
		"i=0; while [ \"$hulltest\" = flood ]; do echo \"flood line $i\"; i=$((i+1)); done\n" +
		keepDiskScript +
		"exec /bin/busybox sleep 3600\n"
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(script), 0o755); err != nil {
		return "", err
	}
	// The kernel opens /dev/console for init; an initramfs has no devtmpfs.
	if out, err := exec.Command("mknod", "-m", "600", filepath.Join(root, "dev", "console"), "c", "5", "1").CombinedOutput(); err != nil {
		return "", &exec.ExitError{Stderr: out}
	}
	out := filepath.Join(dir, "initrd.cpio")
	cmd := exec.Command("sh", "-c", "find . | cpio -o -H newc --quiet > "+strconv.Quote(out))
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", &exec.ExitError{Stderr: b}
	}
	return out, nil
}

// keepDiskScript plays, with hulltest=keepdisk, a guest that refuses to
// give back a hot-added disk: once a virtio-blk PCI device appears it
// masks the ACPI GPE through which q35's PCI hotplug asks it to eject a
// device, then says so on the console (testKeepDisk); QEMU's unplug
// request then goes unanswered.
const keepDiskScript = "if [ \"$hulltest\" = keepdisk ]; then\n" +
	"  /bin/busybox mount -t sysfs sys /sys\n" +
	"  until /bin/busybox grep -qxE '0x1042|0x1001' /sys/bus/pci/devices/*/device 2>/dev/null; do /bin/busybox sleep 1; done\n" +
	"  echo mask > /sys/firmware/acpi/interrupts/gpe01\n" +
	"  echo \"" + testKeepDisk + " $(/bin/busybox cat /sys/firmware/acpi/interrupts/gpe01)\"\n" +
	"fi\n"

// testKeepDisk is what the test init prints once it keeps the disk.
const testKeepDisk = "HULL-TEST-KEEPDISK masked"

var (
	initrdOnce sync.Once
	initrdPath string
	initrdErr  error
)

// testCgroupParent holds the test VMs' cgroups.
const testCgroupParent = "hull-test"

// TestMain removes the test initrd and the (then empty) parent cgroup.
func TestMain(m *testing.M) {
	code := m.Run()
	if initrdPath != "" {
		_ = os.RemoveAll(filepath.Dir(initrdPath))
	}
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", testCgroupParent))
	dirs = append(dirs, filepath.Join("/sys/fs/cgroup", testCgroupParent))
	for _, d := range dirs {
		_ = os.Remove(d)
	}
	os.Exit(code)
}

// qemuPIDs lists QEMU processes whose command line names the VM id.
func qemuPIDs(id string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 2 && strings.Contains(args[0], "qemu") {
			for i, a := range args[:len(args)-1] {
				if a == "-name" && strings.HasPrefix(args[i+1], id+",") {
					pids = append(pids, pid)
				}
			}
		}
	}
	return pids
}

// assertNoQEMU fails when a QEMU process of the VM remains, and kills it
// by pid.
func assertNoQEMU(t *testing.T, id string) {
	t.Helper()
	for _, pid := range qemuPIDs(id) {
		t.Errorf("qemu pid %d of vm %s still running; killing it", pid, id)
		if p, err := os.FindProcess(pid); err == nil {
			_ = p.Kill()
		}
	}
}
