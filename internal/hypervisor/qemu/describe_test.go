package qemu

import (
	"reflect"
	"slices"
	"testing"
)

// TestDescribeTellsMachinesApart checks that two VMs whose options give
// their guests a different machine (a QEMU that keeps root or drops it, a
// free page reporting balloon or none, another CPU model) describe
// themselves differently: the adoption of a warm VM (sandbox.Adopt)
// compares what the driver describes to decide whether the warm VM is the
// one the pod's configuration would boot.
func TestDescribeTellsMachinesApart(t *testing.T) {
	base := Options{Binary: "/bin/true", Machine: MachineQ35, Accel: AccelTCG, TSCKHz: 1}
	tests := []struct {
		name   string
		modify func(*Options)
	}{
		{"qemu drops root", func(o *Options) { o.RunAsUIDBase, o.RunAsUIDCount = 200000, 100 }},
		{"free page reporting", func(o *Options) { o.FreePageReporting = true }},
		{"cpu model", func(o *Options) { o.CPUModel = "max" }},
		{"firmware", func(o *Options) { o.Firmware = FirmwareSeaBIOS }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			tc.modify(&o)
			warm, err := New(baseConfig(), base)
			if err != nil {
				t.Fatal(err)
			}
			pod, err := New(baseConfig(), o)
			if err != nil {
				t.Fatal(err)
			}
			if w, p := warm.Describe(), pod.Describe(); reflect.DeepEqual(w, p) {
				t.Errorf("options %+v and %+v describe the same vm %+v: an adoption cannot tell them apart", base, o, w)
			}
		})
	}
}

// TestDescribeKnowsEveryOption makes a new option a decision: either
// Describe reports it (a warm VM with another value is not the machine the
// option asks for), or it does not change the guest's machine.
func TestDescribeKnowsEveryOption(t *testing.T) {
	known := []string{
		// Described.
		"Binary", "Machine", "Accel", "CPUModel", "RunAsUIDBase", "RunAsUIDCount", "FreePageReporting", "Firmware",
		// The host's side of a running VM, or the guest's clock
		// calibration hint; the host's translation cache size, which the
		// guest does not see; tests.
		"TSCKHz", "CgroupParent", "StopTimeout", "ConsoleMax", "TCGCacheMiB", "ProbeKVM",
	}
	for f := range reflect.TypeFor[Options]().Fields() {
		if !slices.Contains(known, f.Name) {
			t.Errorf("Options.%s: say whether Describe reports it", f.Name)
		}
	}
}
