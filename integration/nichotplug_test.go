package integration

import (
	"context"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	agent "github.com/hull-runtime/hull/api/agent/v1"
	"github.com/hull-runtime/hull/integration/internal/e2e"
	"github.com/hull-runtime/hull/internal/hypervisor"
	"github.com/hull-runtime/hull/internal/hypervisor/qemu"
	"github.com/hull-runtime/hull/internal/launch"
	"github.com/hull-runtime/hull/internal/netpod"
	"github.com/hull-runtime/hull/internal/sandbox"
)

// TestNICHotplug boots a q35 VM with no NIC and one root port reserved,
// mirrors a pod network namespace set up as CNI would (a veth with the pod
// address and a default route) with netpod, hot-adds the tap's NIC over QMP
// once the agent answers, has the agent configure it from the namespace's
// request as at boot, and pings the pod address from the veth's other end:
// traffic goes peer -> veth -> tc redirect -> tap -> hot-added virtio-net.
// A second NIC finds no free slot, and nothing is left after the stop. It
// runs on Debian's kernel and on the hull kernel.
func TestNICHotplug(t *testing.T) {
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox (busybox-static) is needed for ping: %v", err)
	}
	t.Run("debian", func(t *testing.T) { testNICHotplug(t, busybox, env.assetsDir) })
	t.Run("hull", func(t *testing.T) {
		dir, _ := hullKernelAssets(t)
		testNICHotplug(t, busybox, dir)
	})
}

func testNICHotplug(t *testing.T, busybox, assetsDir string) {
	c := testConfig(t)
	c.Image.AssetsDir = assetsDir
	c.Agent.Transport = "serial"
	c.Hypervisor.QEMU.Machine = qemu.MachineQ35

	pod, peer := newPodNetns(t, "198.18.12")

	ctx := withTimeout(t, 3*time.Minute)
	network, err := netpod.Attach(ctx, filepath.Join("/run/netns", pod.name))
	if err != nil {
		t.Fatalf("mirroring the pod namespace: %v", err)
	}
	t.Cleanup(func() {
		if err := network.Close(context.Background()); err != nil {
			t.Errorf("closing the pod network: %v", err)
		}
	})
	devs := network.Devices()
	if len(devs) != 1 {
		t.Fatalf("netpod mirrored %d interfaces, want 1 (eth0)", len(devs))
	}

	vm, client, stop := bootAgentVM(ctx, t, c, "nichp", func(hc *hypervisor.Config) { hc.HotplugNICs = 1 }, nil)
	pid := vm.Describe().PID

	ifs, err := client.Network().ListInterfaces(ctx, &agent.ListInterfacesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(ifs.GetInterfaces(), func(in *agent.Interface) bool { return in.GetMac() == devs[0].MAC }) {
		t.Fatalf("the guest has a NIC with MAC %s before the hot-add: %v", devs[0].MAC, ifs.GetInterfaces())
	}

	adder, err := hypervisor.AsNetworkAdder(vm)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := adder.AddNetwork(ctx, devs[0]); err != nil {
		t.Fatalf("hot-adding %s: %v\n%s", devs[0].ID, err, strings.Join(vm.ConsoleTail(20), "\n"))
	}
	t.Logf("nic hot-added in %s", time.Since(start))
	if err := adder.AddNetwork(ctx, devs[0]); !errdefs.IsAlreadyExists(err) {
		t.Errorf("adding %s again: got %v, want AlreadyExists", devs[0].ID, err)
	}
	second := devs[0]
	second.ID, second.MAC = "eth1", "02:68:75:6c:6c:0c"
	if err := adder.AddNetwork(ctx, second); !errdefs.IsResourceExhausted(err) {
		t.Errorf("adding a NIC beyond the reserved slots: got %v, want ResourceExhausted", err)
	}

	start = time.Now()
	if _, err := client.Network().ConfigureNetwork(ctx, network.Request()); err != nil {
		t.Fatalf("configuring the hot-added NIC: %v\n%s", err, strings.Join(vm.ConsoleTail(20), "\n"))
	}
	t.Logf("network configured in %s", time.Since(start))
	ifs, err = client.Network().ListInterfaces(ctx, &agent.ListInterfacesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(ifs.GetInterfaces(), func(in *agent.Interface) bool { return in.GetName() == "eth0" })
	if i < 0 {
		t.Fatalf("guest interfaces %v: no eth0", ifs.GetInterfaces())
	}
	if eth0 := ifs.GetInterfaces()[i]; eth0.GetMac() != devs[0].MAC || !eth0.GetUp() || !slices.Contains(eth0.GetAddresses(), "198.18.12.2/24") {
		t.Errorf("guest eth0 reported as %v, want MAC %s, up, 198.18.12.2/24", eth0, devs[0].MAC)
	}

	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	out, err := exec.CommandContext(pctx, "ip", "netns", "exec", peer.name, busybox, "ping", "-c", "3", "-W", "5", "198.18.12.2").CombinedOutput()
	cancel()
	if err != nil {
		t.Errorf("ping of the pod address from the peer: %v\n%s\nguest console:\n%s", err, out, strings.Join(vm.ConsoleTail(20), "\n"))
	} else {
		t.Logf("ping 198.18.12.2:\n%s", out)
	}

	stop()
	if e2e.Alive(pid) {
		t.Errorf("qemu %d still alive after stop", pid)
	}
	// testConfig's cleanup checks that no process mentions the state root;
	// the netns cleanups that the namespaces are gone.
}

// newPodNetns makes a pod network namespace as CNI would: eth0, one end of
// a veth, with <net>.2/24 and a default route through <net>.1, the other
// end's address in a peer namespace. It returns both namespaces.
func newPodNetns(t *testing.T, net string) (pod, peer *testNetns) {
	t.Helper()
	pod, peer = newTestNetns(t), newTestNetns(t)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	podEnd, peerEnd := "hn"+pod.name[len(pod.name)-8:], "hq"+pod.name[len(pod.name)-8:]
	ip("link", "add", podEnd, "type", "veth", "peer", "name", peerEnd)
	ip("link", "set", podEnd, "netns", pod.name)
	ip("link", "set", peerEnd, "netns", peer.name)
	ip("-n", pod.name, "link", "set", podEnd, "name", "eth0")
	ip("-n", pod.name, "addr", "add", net+".2/24", "dev", "eth0")
	ip("-n", pod.name, "link", "set", "eth0", "up")
	ip("-n", pod.name, "route", "add", "default", "via", net+".1")
	ip("-n", peer.name, "addr", "add", net+".1/24", "dev", peerEnd)
	ip("-n", peer.name, "link", "set", peerEnd, "up")
	return pod, peer
}

// noHullLeft checks that the pod namespace holds no tap or filter of
// hull's.
func noHullLeft(t *testing.T, pod *testNetns) {
	t.Helper()
	out, err := exec.Command("ip", "-n", pod.name, "-d", "link").CombinedOutput()
	if err != nil || strings.Contains(string(out), "_hull") {
		t.Errorf("pod namespace after the sandbox: %v\n%s\nwant no hull tap", err, out)
	}
	out, err = exec.Command("ip", "netns", "exec", pod.name, "tc", "qdisc", "show", "dev", "eth0").CombinedOutput()
	if err != nil || strings.Contains(string(out), "ingress") {
		t.Errorf("qdiscs of eth0 after the sandbox: %v\n%s\nwant no ingress qdisc", err, out)
	}
}

// TestSandboxHotplugNetwork starts sandboxes that boot without their pod
// network and get it hot-added once the agent answers (the path of a VM
// that booted before its pod): the guest has the pod's eth0 with its
// address, the pod address answers from the veth's peer, and after Stop
// the pod namespace holds nothing of hull's. A pod with more interfaces
// than the VM has NIC slots fails to start and leaves nothing.
func TestSandboxHotplugNetwork(t *testing.T) {
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox (busybox-static) is needed for ping: %v", err)
	}
	t.Run("one interface", func(t *testing.T) {
		c := testConfig(t)
		c.Agent.Transport = "serial"
		c.Hypervisor.QEMU.Machine = qemu.MachineQ35
		pod, peer := newPodNetns(t, "198.18.13")
		sc, err := launch.SandboxConfig(c, "hpnet")
		if err != nil {
			t.Fatal(err)
		}
		sc.NetNS, sc.HotplugNetwork, sc.VM.HotplugNICs = filepath.Join("/run/netns", pod.name), true, 2
		ctx := withTimeout(t, 3*time.Minute)
		sb, err := sandbox.Start(ctx, sc)
		if err != nil {
			t.Fatalf("starting the sandbox: %v", err)
		}
		stopped := false
		t.Cleanup(func() {
			if !stopped {
				_ = sb.Stop(context.Background())
			}
		})
		ifs, err := sb.Agent().Network().ListInterfaces(ctx, &agent.ListInterfacesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(ifs.GetInterfaces(), func(in *agent.Interface) bool { return in.GetName() == "eth0" })
		if i < 0 || !slices.Contains(ifs.GetInterfaces()[i].GetAddresses(), "198.18.13.2/24") {
			t.Errorf("guest interfaces %v: want eth0 with 198.18.13.2/24", ifs.GetInterfaces())
		}
		out, err := exec.Command("ip", "netns", "exec", peer.name, busybox, "ping", "-c", "3", "-W", "5", "198.18.13.2").CombinedOutput()
		if err != nil {
			t.Errorf("ping of the pod address from the peer: %v\n%s", err, out)
		}
		stopped = true
		if err := sb.Stop(context.Background()); err != nil {
			t.Errorf("stopping the sandbox: %v", err)
		}
		noHullLeft(t, pod)
	})

	t.Run("more interfaces than slots", func(t *testing.T) {
		c := testConfig(t)
		c.Agent.Transport = "serial"
		c.Hypervisor.QEMU.Machine = qemu.MachineQ35
		pod, peer := newPodNetns(t, "198.18.14")
		// A second interface that carries the pod network: another veth,
		// up.
		podEnd, peerEnd := "hm"+pod.name[len(pod.name)-8:], "hr"+pod.name[len(pod.name)-8:]
		for _, args := range [][]string{
			{"link", "add", podEnd, "type", "veth", "peer", "name", peerEnd},
			{"link", "set", peerEnd, "netns", peer.name},
			{"link", "set", podEnd, "netns", pod.name},
			{"-n", pod.name, "link", "set", podEnd, "name", "eth1"},
			{"-n", pod.name, "link", "set", "eth1", "up"},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
		sc, err := launch.SandboxConfig(c, "hpnet2")
		if err != nil {
			t.Fatal(err)
		}
		sc.NetNS, sc.HotplugNetwork, sc.VM.HotplugNICs = filepath.Join("/run/netns", pod.name), true, 1
		_, err = sandbox.Start(withTimeout(t, 3*time.Minute), sc)
		if !errdefs.IsResourceExhausted(err) {
			t.Fatalf("starting a sandbox with 2 interfaces and 1 slot: got %v, want ResourceExhausted", err)
		}
		noHullLeft(t, pod)
		// testConfig's cleanup checks that no process, mount or cgroup of
		// the sandbox is left.
	})
}
