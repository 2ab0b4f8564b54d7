package qemu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

// TestVhostNetFiles: vhost-net is given to a VM with NICs when the device
// opens and answers as vhost-net, and never otherwise. This host's device,
// when it has one, gives one descriptor per NIC queue.
func TestVhostNetFiles(t *testing.T) {
	notVhost := filepath.Join(t.TempDir(), "vhost-net")
	if err := os.WriteFile(notVhost, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		device string
		cfg    hypervisor.Config
		files  int
		err    string
	}{
		{"no NICs", "/nonexistent/vhost-net", baseConfig(), 0, ""},
		{"no device", "/nonexistent/vhost-net", withDevices(baseConfig()), 0, "no such file"},
		{"not vhost-net", notVhost, withDevices(baseConfig()), 0, "is not vhost-net"},
		{"character device that is not vhost-net", "/dev/null", withDevices(baseConfig()), 0, "is not vhost-net"},
	}
	if err := OpenVhostNet(); err == nil {
		tests = append(tests, struct {
			name   string
			device string
			cfg    hypervisor.Config
			files  int
			err    string
		}{"this host's vhost-net", VhostNetDevice, withDevices(baseConfig()), 3, ""})
	} else {
		t.Logf("no vhost-net case on this host: %v", err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			old := vhostNetPath
			vhostNetPath = tc.device
			t.Cleanup(func() { vhostNetPath = old })
			fs, err := vhostNetFiles(&tc.cfg)
			defer closeFiles(fs)
			if len(fs) != tc.files || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("got %d files, error %v; want %d files, error with %q", len(fs), err, tc.files, tc.err)
			}
		})
	}
}

func TestNetQueues(t *testing.T) {
	c := withDevices(baseConfig())
	if got := netQueues(&c); got != 3 {
		t.Errorf("got %d queues, want 3 (two tap descriptors and a tap by name)", got)
	}
}
