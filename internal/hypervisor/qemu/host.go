package qemu

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
)

// Host files read for the TSC frequency; variables for tests.
var (
	tscFreqFile = "/sys/devices/system/cpu/cpu0/tsc_freq_khz"
	cpuinfoFile = "/proc/cpuinfo"
)

// hostTSCKHz returns the host TSC frequency in kHz: from sysfs when the
// kernel exports it, else from /proc/cpuinfo's "cpu MHz" when the CPU has
// a constant TSC (then that figure is the TSC's, as the kernel's "tsc:
// Detected ... MHz" line shows). 0 when neither works.
func hostTSCKHz() uint64 {
	if b, err := os.ReadFile(tscFreqFile); err == nil {
		if khz, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && khz > 0 {
			return khz
		}
	}
	return cpuinfoTSCKHz(cpuinfoFile)
}

func cpuinfoTSCKHz(path string) uint64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer func() { _ = f.Close() }()
	var mhz float64
	constant := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "cpu MHz":
			if mhz == 0 {
				mhz, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
			}
		case "flags":
			for _, fl := range strings.Fields(v) {
				if fl == "constant_tsc" {
					constant = true
				}
			}
		}
		if mhz > 0 && constant {
			return uint64(mhz*1000 + 0.5)
		}
	}
	return 0
}

var versions sync.Map // binary path -> string

// qemuVersion runs `binary --version` once per binary and returns the
// version number ("7.2.22"), or "" when it cannot tell.
func qemuVersion(binary string) string {
	if v, ok := versions.Load(binary); ok {
		return v.(string)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, "--version").Output()
	if err != nil {
		return ""
	}
	v := parseVersion(string(out))
	versions.Store(binary, v)
	return v
}

// parseVersion reads "QEMU emulator version 7.2.22 (Debian ...)".
func parseVersion(out string) string {
	line, _, _ := strings.Cut(out, "\n")
	_, rest, ok := strings.Cut(line, "version ")
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, " ")
	return v
}

// firmwareDirs are where QEMU's firmware images are looked for, after the
// data directory beside the program (<prefix>/share/qemu of a program in
// <prefix>/bin): the directories distributions and source builds install
// into.
var firmwareDirs = []string{"/usr/share/qemu", "/usr/local/share/qemu", "/usr/share/qemu-kvm"}

// firmwarePath returns the absolute path of QEMU's firmware image name for
// the program bin (resolved), so that QEMU never looks for it in its
// working directory; an error that names the package and the setting when
// no data directory has it.
func firmwarePath(bin, name string) (string, error) {
	dirs := append([]string{filepath.Join(filepath.Dir(bin), "..", "share", "qemu")}, firmwareDirs...)
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return filepath.Clean(p), nil
		}
	}
	return "", fmt.Errorf("firmware %s of %s not found in %s (Debian and Ubuntu: package qemu-system-data; or set hypervisor.qemu.firmware = %q): %w",
		name, bin, strings.Join(dirs, ", "), FirmwareSeaBIOS, errdefs.ErrNotFound)
}

// FirmwareFile is the firmware image a q35 VM of firmware runs from QEMU's
// data directories, for the QEMU program bin: its absolute path; "" for
// SeaBIOS (QEMU's default, built in its own search).
func FirmwareFile(bin, firmware string) (string, error) {
	if firmware != FirmwareQboot && firmware != "" {
		return "", nil
	}
	p, err := lookBinary(bin)
	if err != nil {
		return "", err
	}
	return firmwarePath(p, qbootFile)
}

// lookBinary resolves the QEMU program.
func lookBinary(bin string) (string, error) {
	if bin == "" {
		bin = DefaultBinary
	}
	p, err := exec.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("qemu binary %q: %w", bin, err)
	}
	return p, nil
}
