package kvm

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
)

// kvmModules are the modules that may provide /dev/kvm.
var kvmModules = []string{"kvm", "kvm_intel", "kvm_amd", "kvm_pvm"}

// sysModuleDir is where loaded modules show up; /proc/modules is not always
// readable in containers, /sys/module is.
var sysModuleDir = "/sys/module"

// hostFacts collects what the host says about virtualization.
func hostFacts() Result {
	var r Result
	r.CPUVirt = cpuVirtFlag("/proc/cpuinfo")
	for _, m := range kvmModules {
		if _, err := os.Stat(filepath.Join(sysModuleDir, m)); err == nil {
			r.Modules = append(r.Modules, m)
			if m == "kvm_pvm" {
				r.PVM = true
			}
		}
	}
	return r
}

// PVMLoaded reports whether the paravirtual KVM module kvm_pvm is loaded.
func PVMLoaded() bool { return hostFacts().PVM }

// cpuVirtFlag returns "vmx" or "svm" when the first CPU's flags list one.
func cpuVirtFlag(cpuinfo string) string {
	f, err := os.Open(cpuinfo)
	if err != nil {
		return ""
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "flags" {
			continue
		}
		for _, fl := range strings.Fields(v) {
			if fl == "vmx" || fl == "svm" {
				return fl
			}
		}
		return ""
	}
	return ""
}
