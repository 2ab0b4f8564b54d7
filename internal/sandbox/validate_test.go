package sandbox

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

func TestValidateHotplugNetwork(t *testing.T) {
	base := func() Config {
		return Config{
			ID: "sb", StateRoot: "/run/hull-test", Transport: hypervisor.TransportSerial,
			NewVM:       func(hypervisor.Config) (hypervisor.VM, error) { return nil, errdefs.ErrNotImplemented },
			DialTimeout: time.Second, CallTimeout: time.Second,
		}
	}
	tests := []struct {
		name   string
		modify func(*Config)
		// want is a part of the error, "" for none.
		want string
	}{
		{"boot-time network", func(c *Config) { c.NetNS = "/run/netns/pod" }, ""},
		{"hot-added with slots", func(c *Config) {
			c.NetNS, c.HotplugNetwork, c.VM.HotplugNICs = "/run/netns/pod", true, 1
		}, ""},
		{"hot-added without a network", func(c *Config) { c.HotplugNetwork = true }, ""},
		{"hot-added without slots", func(c *Config) {
			c.NetNS, c.HotplugNetwork = "/run/netns/pod", true
		}, "NIC hotplug slots"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.modify(&c)
			err := validate(c)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("got %v, want no error", err)
			case tc.want != "" && (!errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want an invalid-argument error about %q", err, tc.want)
			}
		})
	}
}
