package qemu

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
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
