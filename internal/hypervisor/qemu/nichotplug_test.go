package qemu

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/hull-runtime/hull/internal/hypervisor"
)

func TestAddNetwork(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close(); _ = w.Close() })
	nic := func(id, mac string, fds ...uintptr) hypervisor.NetworkDevice {
		return hypervisor.NetworkDevice{ID: id, FDs: fds, MAC: mac, MTU: 1450}
	}
	fd := r.Fd()
	tests := []struct {
		name string
		fail []string
		nics []hypervisor.NetworkDevice
		// classes are the errors of the AddNetwork calls, nil for success.
		classes []error
		// log is the QMP commands, one per line.
		log string
	}{
		{
			name:    "two nics in two ports",
			nics:    []hypervisor.NetworkDevice{nic("eth0", "02:AA:00:00:00:01", fd), nic("eth1", "02:aa:00:00:00:02", fd, fd)},
			classes: []error{nil, nil},
			log: `getfd {"fdname":"tapfd1"}
netdev_add {"fd":"tapfd1","id":"net-eth0","type":"tap"}
device_add {"bus":"nicport0","driver":"virtio-net-pci","host_mtu":1450,"id":"nic-eth0","mac":"02:aa:00:00:00:01","netdev":"net-eth0"}
getfd {"fdname":"tapfd2"}
getfd {"fdname":"tapfd3"}
netdev_add {"fds":"tapfd2:tapfd3","id":"net-eth1","type":"tap"}
device_add {"bus":"nicport1","driver":"virtio-net-pci","host_mtu":1450,"id":"nic-eth1","mac":"02:aa:00:00:00:02","mq":true,"netdev":"net-eth1","vectors":6}`,
		},
		{
			name:    "same id twice, then no free port",
			nics:    []hypervisor.NetworkDevice{nic("eth0", "", fd), nic("eth0", "", fd), nic("eth1", "", fd), nic("eth2", "", fd)},
			classes: []error{nil, errdefs.ErrAlreadyExists, nil, errdefs.ErrResourceExhausted},
			log: `getfd {"fdname":"tapfd1"}
netdev_add {"fd":"tapfd1","id":"net-eth0","type":"tap"}
device_add {"bus":"nicport0","driver":"virtio-net-pci","host_mtu":1450,"id":"nic-eth0","netdev":"net-eth0"}
getfd {"fdname":"tapfd2"}
netdev_add {"fd":"tapfd2","id":"net-eth1","type":"tap"}
device_add {"bus":"nicport1","driver":"virtio-net-pci","host_mtu":1450,"id":"nic-eth1","netdev":"net-eth1"}`,
		},
		{
			name:    "device refused: the netdev is deleted and the port stays free",
			fail:    []string{"device_add virtio-net-pci"},
			nics:    []hypervisor.NetworkDevice{nic("eth0", "", fd)},
			classes: []error{errdefs.ErrUnknown},
			log: `getfd {"fdname":"tapfd1"}
netdev_add {"fd":"tapfd1","id":"net-eth0","type":"tap"}
device_add {"bus":"nicport0","driver":"virtio-net-pci","host_mtu":1450,"id":"nic-eth0","netdev":"net-eth0"}
netdev_del {"id":"net-eth0"}
closefd {"fdname":"tapfd1"}`,
		},
		{
			name:    "netdev refused: the passed descriptors are closed",
			fail:    []string{"netdev_add"},
			nics:    []hypervisor.NetworkDevice{nic("eth0", "", fd, fd)},
			classes: []error{errdefs.ErrUnknown},
			log: `getfd {"fdname":"tapfd1"}
getfd {"fdname":"tapfd2"}
netdev_add {"fds":"tapfd1:tapfd2","id":"net-eth0","type":"tap"}
closefd {"fdname":"tapfd2"}
closefd {"fdname":"tapfd1"}`,
		},
		{
			name:    "bad input reaches no qmp",
			nics:    []hypervisor.NetworkDevice{nic("eth0", ""), nic("eth0", "zz", fd), nic("a b", "", fd)},
			classes: []error{errdefs.ErrInvalidArgument, errdefs.ErrInvalidArgument, errdefs.ErrInvalidArgument},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newFakeMachine(2, 2)
			for _, f := range tc.fail {
				m.fail[f] = true
			}
			cfg := baseConfig()
			cfg.HotplugNICs = 2
			v := runningVM(t, cfg, MachineQ35, m)
			a, err := hypervisor.AsNetworkAdder(v)
			if err != nil {
				t.Fatal(err)
			}
			for i, n := range tc.nics {
				err := a.AddNetwork(context.Background(), n)
				if want := tc.classes[i]; want == nil && err != nil || want != nil && !errors.Is(err, want) {
					t.Errorf("AddNetwork(%s) #%d: got %v, want class %v", n.ID, i, err, want)
				}
			}
			m.mu.Lock()
			got := strings.Join(m.log, "\n")
			m.mu.Unlock()
			if got != tc.log {
				t.Errorf("qmp log:\n%s\nwant\n%s", got, tc.log)
			}
		})
	}
}

func TestAddNetworkUnsupported(t *testing.T) {
	tests := []struct {
		name    string
		machine string
		state   state
		class   error
	}{
		{"microvm", MachineMicroVM, stateRunning, errdefs.ErrNotImplemented},
		{"not started", MachineQ35, stateCreated, errdefs.ErrFailedPrecondition},
		{"exited", MachineQ35, stateExited, hypervisor.ErrVMExited},
		{"no port reserved", MachineQ35, stateRunning, errdefs.ErrResourceExhausted},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := vmIn(t, baseConfig(), tc.machine, tc.state)
			err := v.AddNetwork(context.Background(), hypervisor.NetworkDevice{ID: "eth0", FDs: []uintptr{0}})
			if !errors.Is(err, tc.class) {
				t.Errorf("got %v, want class %v", err, tc.class)
			}
		})
	}
}
