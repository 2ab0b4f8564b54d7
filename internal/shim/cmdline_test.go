package shim

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// TestSetCmdline sets this test process's command line, as a claimed warm
// shim sets its own, and reads it back as ps does. It needs
// CAP_SYS_RESOURCE (the tests run as root).
func TestSetCmdline(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"shorter than before", []string{"shim", "-id", "c1"}},
		{"longer than before", []string{os.Args[0], "-namespace", "k8s.io", "-id", strings.Repeat("0123456789abcdef", 4), "-address", "/run/containerd/containerd.sock", strings.Repeat("x", 5000)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := setCmdline(tc.args); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile("/proc/self/cmdline")
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
			if !slices.Equal(got, tc.args) {
				t.Fatalf("/proc/self/cmdline = %q, want %q", got, tc.args)
			}
		})
	}
	t.Run("refused", func(t *testing.T) {
		for _, args := range [][]string{nil, {"a\x00b"}, {strings.Repeat("x", maxCmdline)}} {
			if err := setCmdline(args); err == nil {
				t.Errorf("setCmdline(%.20q) succeeded", args)
			}
		}
	})
}
