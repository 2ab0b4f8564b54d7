package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/agentclient"
	"github.com/hull-runtime/hull/internal/config"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
	"github.com/hull-runtime/hull/internal/launch"
)

// The test's link: the host end is a tap in a namespace of the test's own,
// the guest end the VM's virtio-net device.
const (
	netTestHostAddr  = "198.18.7.1"
	netTestGuestAddr = "198.18.7.2"
	netTestHost6     = "fd00:7::1"
	netTestGuest6    = "fd00:7::2"
	netTestGuestMAC  = "02:68:75:6c:6c:02"
)

// TestGuestNetwork boots the agent with one virtio-net NIC on a tap in a
// network namespace of the test, on both machine types (virtio over PCI
// and over MMIO), has it configure the guest's network, checks what it
// reports, and pings the guest from the namespace over IPv4 and IPv6.
//
// It boots the VM with the driver and the agent client rather than
// sandbox.Start because the Sandbox does not hand out its Network client.
func TestGuestNetwork(t *testing.T) {
	ping, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox (busybox-static) is needed for ping: %v", err)
	}
	for _, machine := range []string{"q35", "microvm"} {
		t.Run(machine, func(t *testing.T) { testGuestNetwork(t, machine, ping) })
	}
}

// bootAgentVM boots the VM id of c with the QEMU driver, its agent on the
// serial transport, after edit set its devices (or template) in the
// driver's configuration, and dials its agent, within ctx. stop closes the
// client, stops the VM, runs afterStop (nil: nothing), and removes the
// VM's state directory; the test's end does so when the test did not, a
// failed start included.
func bootAgentVM(ctx context.Context, t testing.TB, c *config.Config, id string, edit func(*hypervisor.Config), afterStop func()) (vm *qemu.VM, client *agentclient.Client, stop func()) {
	t.Helper()
	kernel, initrd, err := launch.Assets(c, false)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(c.Runtime.StateDir, id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	ep := hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial, PortName: agentclient.DefaultSerialPortName}
	hc := hypervisor.Config{
		ID:           id,
		StateDir:     dir,
		Kernel:       kernel,
		Initrd:       initrd,
		KernelParams: append(agentclient.KernelParams(ep, "info"), c.Hypervisor.KernelParams...),
		VCPUs:        c.Hypervisor.VCPUs,
		MemoryMiB:    c.Hypervisor.MemoryMiB,
		Agent:        ep,
	}
	edit(&hc)
	vm, err = qemu.New(hc, launch.QEMUOptions(c))
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		if client != nil {
			_ = client.Close()
		}
		if err := vm.Stop(context.Background()); err != nil {
			t.Errorf("stopping vm %s: %v", id, err)
		}
		if afterStop != nil {
			afterStop()
		}
		// The driver's state directory is the caller's to remove.
		if err := os.RemoveAll(dir); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(stop)
	if err := vm.Start(ctx); err != nil {
		t.Fatalf("starting vm %s: %v", id, err)
	}
	client, err = agentclient.Dial(ctx, vm.Agent(), agentclient.Options{
		DialTimeout: c.Agent.DialTimeout.Duration, CallTimeout: c.Agent.CallTimeout.Duration, Abort: vm.Done(),
	})
	if err != nil {
		t.Fatalf("dialing the agent of %s: %v\n%s", id, err, strings.Join(vm.ConsoleTail(20), "\n"))
	}
	return vm, client, stop
}

func testGuestNetwork(t *testing.T, machine, ping string) {
	c := testConfig(t)
	c.Agent.Transport = "serial"
	c.Hypervisor.QEMU.Machine = machine
	ns := newTestNetns(t)
	tap := ns.addTap(t, "tap0", netTestHostAddr+"/24", netTestHost6+"/64")

	ctx := withTimeout(t, 3*time.Minute)
	vm, client, stop := bootAgentVM(ctx, t, c, "net", func(hc *hypervisor.Config) {
		hc.Networks = []hypervisor.NetworkDevice{{ID: "eth0", FDs: []uintptr{tap.Fd()}, MAC: netTestGuestMAC, MTU: 1500}}
	}, func() { _ = tap.Close() })
	pid := vm.Describe().PID
	// virtio_net may still be loading: the agent loads it after it began
	// serving, and ConfigureNetwork waits for the device.
	h, err := client.System().Health(ctx, &agent.HealthRequest{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("agent answered; status %s", h.GetStatus())

	start := time.Now()
	_, err = client.Network().ConfigureNetwork(ctx, &agent.ConfigureNetworkRequest{
		Interfaces: []*agent.Interface{{
			Name: "eth0", Mac: netTestGuestMAC, Mtu: 1500,
			Addresses: []string{netTestGuestAddr + "/24", netTestGuest6 + "/64"},
		}},
		Routes: []*agent.Route{
			{Gateway: netTestHostAddr, Device: "eth0"},
			{Gateway: netTestHost6, Device: "eth0"},
		},
		Dns: &agent.DNS{Servers: []string{netTestHostAddr}, Searches: []string{"hull.test"}},
	})
	if errdefs.IsNotImplemented(err) {
		t.Fatalf("the agent in %s has no Network service: rebuild the image (make image): %v", env.assetsDir, err)
	}
	if err != nil {
		t.Fatalf("configure network: %v", err)
	}
	t.Logf("network configured in %s", time.Since(start))

	ifs, err := client.Network().ListInterfaces(ctx, &agent.ListInterfacesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var eth0, lo *agent.Interface
	for _, in := range ifs.GetInterfaces() {
		switch in.GetName() {
		case "eth0":
			eth0 = in
		case "lo":
			lo = in
		}
	}
	if eth0 == nil || lo == nil {
		t.Fatalf("guest interfaces %v: want lo and eth0", ifs.GetInterfaces())
	}
	if eth0.GetMac() != netTestGuestMAC || eth0.GetMtu() != 1500 || !eth0.GetUp() ||
		!slices.Contains(eth0.GetAddresses(), netTestGuestAddr+"/24") || !slices.Contains(eth0.GetAddresses(), netTestGuest6+"/64") {
		t.Errorf("guest eth0 reported as %v", eth0)
	}
	if !lo.GetUp() || !slices.Contains(lo.GetAddresses(), "127.0.0.1/8") {
		t.Errorf("guest lo reported as %v", lo)
	}

	rs, err := client.Network().ListRoutes(ctx, &agent.ListRoutesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []func(*agent.Route) bool{
		func(r *agent.Route) bool {
			return r.GetDestination() == "" && r.GetGateway() == netTestHostAddr && r.GetDevice() == "eth0" && r.GetFamily() == 4
		},
		func(r *agent.Route) bool {
			return r.GetDestination() == "198.18.7.0/24" && r.GetGateway() == "" && r.GetDevice() == "eth0" && r.GetScope() == 253
		},
		func(r *agent.Route) bool {
			return r.GetDestination() == "" && r.GetGateway() == netTestHost6 && r.GetDevice() == "eth0" && r.GetFamily() == 6
		},
	} {
		if !slices.ContainsFunc(rs.GetRoutes(), want) {
			t.Errorf("guest routes %v lack an expected one", rs.GetRoutes())
		}
	}

	// A MAC that no device has is NotFound, within the call's deadline.
	nctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	_, err = client.Network().ConfigureNetwork(nctx, &agent.ConfigureNetworkRequest{
		Interfaces: []*agent.Interface{{Name: "eth1", Mac: "02:68:75:6c:6c:09"}},
	})
	cancel()
	if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "02:68:75:6c:6c:09") {
		t.Errorf("configuring a missing device: got %v, want NotFound naming its MAC", err)
	}

	// The guest answers from the start: IPv6 without waiting for duplicate
	// address detection.
	for _, dst := range []string{netTestGuestAddr, netTestGuest6} {
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		out, err := exec.CommandContext(pctx, "ip", "netns", "exec", ns.name, ping, "ping", "-c", "3", "-W", "5", dst).CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("ping %s from the test namespace: %v\n%s\nguest console:\n%s", dst, err, out, strings.Join(vm.ConsoleTail(20), "\n"))
		} else {
			t.Logf("ping %s:\n%s", dst, out)
		}
	}

	if _, err := client.System().Shutdown(ctx, &agent.ShutdownRequest{}); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	select {
	case <-vm.Done():
	case <-time.After(10 * time.Second):
		t.Errorf("vm still runs 10s after the agent's shutdown")
	}
	stop()
	if e2e.Alive(pid) {
		t.Errorf("qemu %d still alive after stop", pid)
	}
	// testConfig's cleanup checks that no process mentions the state root.
}

// testNetns is a named network namespace of one test.
type testNetns struct {
	name string
	h    *netlink.Handle
	ns   netns.NsHandle
}

// newTestNetns creates e2e.TestNetnsPrefix + <random> and registers its deletion.
func newTestNetns(t *testing.T) *testNetns {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := e2e.TestNetnsPrefix + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("creating network namespace %s: %v\n%s", name, err, out)
	}
	n := &testNetns{name: name}
	t.Cleanup(func() {
		if n.h != nil {
			n.h.Close()
		}
		_ = n.ns.Close()
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("deleting network namespace %s: %v\n%s", name, err, out)
		}
		if _, err := os.Stat(filepath.Join("/run/netns", name)); err == nil {
			t.Errorf("network namespace %s left behind", name)
		}
	})
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("opening network namespace %s: %v", name, err)
	}
	n.ns = ns
	if n.h, err = netlink.NewHandleAt(ns); err != nil {
		t.Fatalf("netlink in %s: %v", name, err)
	}
	lo, err := n.h.LinkByName("lo")
	if err == nil {
		err = n.h.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("setting lo up in %s: %v", name, err)
	}
	return n
}

// addTap creates a tap in the namespace as QEMU wants it (no packet
// information, virtio-net headers), gives it addrs and sets it up. It
// returns the tap's queue; the tap goes away when that is closed.
func (n *testNetns) addTap(t *testing.T, name string, addrs ...string) *os.File {
	t.Helper()
	tap := func() *os.File {
		// A tap is created in the namespace of the thread that asks.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			t.Fatalf("current network namespace: %v", err)
		}
		defer func() { _ = orig.Close() }()
		if err := netns.Set(n.ns); err != nil {
			runtime.UnlockOSThread()
			t.Fatalf("entering %s: %v", n.name, err)
		}
		fd, openErr := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if openErr == nil {
			var ifr *unix.Ifreq
			if ifr, openErr = unix.NewIfreq(name); openErr == nil {
				ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
				openErr = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
			}
			if openErr != nil {
				_ = unix.Close(fd)
			}
		}
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it ends with this goroutine rather
			// than run other code in the test's namespace.
			t.Fatalf("leaving %s: %v", n.name, err)
		}
		runtime.UnlockOSThread()
		if openErr != nil {
			t.Fatalf("creating tap %s in %s: %v", name, n.name, openErr)
		}
		return os.NewFile(uintptr(fd), "/dev/net/tun")
	}()
	l, err := n.h.LinkByName(name)
	if err != nil {
		_ = tap.Close()
		t.Fatalf("tap %s: %v", name, err)
	}
	for _, a := range addrs {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			t.Fatal(err)
		}
		if addr.IP.To4() == nil {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := n.h.AddrAdd(l, addr); err != nil {
			_ = tap.Close()
			t.Fatalf("adding %s to %s: %v", a, name, err)
		}
	}
	if err := n.h.LinkSetUp(l); err != nil {
		_ = tap.Close()
		t.Fatalf("setting %s up: %v", name, err)
	}
	return tap
}
